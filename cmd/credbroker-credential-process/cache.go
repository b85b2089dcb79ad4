package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/internal/keyfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// defaultCacheMinRemaining is the least lifetime a cached credential must
// have left to be handed out again. The AWS CLI (botocore) must refresh
// credentials with under 10 minutes left and fails the command when that
// refresh fails, so anything handed out has more than that; the Go SDK v2
// refreshes process credentials only at expiry. A 15-minute STS credential
// is thus reused for about its first 5 minutes.
const defaultCacheMinRemaining = 10 * time.Minute

// cacheVersion changes whenever cacheEntry changes meaning; an entry of
// another version is ignored and replaced.
const cacheVersion = 1

// cacheKey is what a cached credential was requested with. A cache written
// for another request is never used for this one.
type cacheKey struct {
	Broker   string `json:"broker"`
	BrokerID string `json:"broker_id,omitempty"`
	SVIDDir  string `json:"svid_dir"`
	// WorkloadAPI and SPIFFEID name a Workload API identity instead of
	// SVIDDir (absent in files written before they existed: SVIDDir then).
	WorkloadAPI string `json:"workload_api,omitempty"`
	SPIFFEID    string `json:"spiffe_id,omitempty"`
	Profile     string `json:"profile"`
	Cluster     string `json:"cluster,omitempty"`
	Audience    string `json:"audience,omitempty"`
	TTL         string `json:"ttl,omitempty"`
}

func keyOf(o options) cacheKey {
	dir, err := filepath.Abs(o.svidDir)
	if err != nil {
		dir = o.svidDir
	}
	if o.svidDir == "" {
		dir = ""
	}
	k := cacheKey{Broker: o.broker, BrokerID: o.brokerID, SVIDDir: dir, WorkloadAPI: o.socket, SPIFFEID: o.spiffeID,
		Profile: o.profile, Cluster: o.cluster, Audience: o.audience}
	if o.ttl > 0 {
		k.TTL = o.ttl.String()
	}
	return k
}

// cacheEntry is the cache file: one AWS credential and the request it
// answered. It holds secrets, so it lives only in an owner-only file.
type cacheEntry struct {
	Version         int       `json:"version"`
	Key             cacheKey  `json:"key"`
	IssuanceID      string    `json:"issuance_id"`
	Issuer          string    `json:"issuer"`
	Profile         string    `json:"profile"`
	Cluster         string    `json:"cluster,omitempty"`
	AccessKeyID     string    `json:"access_key_id"`
	SecretAccessKey string    `json:"secret_access_key"`
	SessionToken    string    `json:"session_token"`
	Expiration      time.Time `json:"expiration"`
}

func (e cacheEntry) credential() *credbrokerv1.Credential {
	return &credbrokerv1.Credential{
		IssuanceId: e.IssuanceID, Issuer: e.Issuer, Profile: e.Profile, Cluster: e.Cluster,
		ExpiresAt: timestamppb.New(e.Expiration),
		Kind: &credbrokerv1.Credential_Aws{Aws: &credbrokerv1.AWSCredentials{
			AccessKeyId: e.AccessKeyID, SecretAccessKey: e.SecretAccessKey, SessionToken: e.SessionToken,
		}},
	}
}

// credCache is the --cache-file of one invocation.
type credCache struct {
	path         string
	key          cacheKey
	minRemaining time.Duration
	now          func() time.Time
}

// load returns the cached credential when the file holds one for this
// request with more than minRemaining left, and nil otherwise. A missing
// file, another request's credential or one too close to expiry is a plain
// miss. note is not empty when the file was there but could not be used
// (unreadable, readable by others, corrupted): the caller tells the user
// and the next store replaces the file.
func (c credCache) load() (cred *credbrokerv1.Credential, note string) {
	b, err := keyfile.Read(c.path) // refuses a file group or others may access
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ""
	}
	if err != nil {
		return nil, fmt.Sprintf("not using cache file: %v", err)
	}
	var e cacheEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Sprintf("ignoring corrupted cache file %s: %v", c.path, describeJSONError(err))
	}
	if e.Version != cacheVersion || e.Key != c.key {
		return nil, ""
	}
	if e.AccessKeyID == "" || e.SecretAccessKey == "" || e.SessionToken == "" || e.Expiration.IsZero() {
		return nil, fmt.Sprintf("ignoring corrupted cache file %s: incomplete credential", c.path)
	}
	if e.Expiration.Sub(c.now()) <= c.minRemaining {
		return nil, ""
	}
	return e.credential(), ""
}

// store replaces the cache file with cred when it is an AWS credential; other
// kinds are never cached. The file is written with mode 0600 through a
// temporary file and a rename in the same directory, which is created 0700
// if missing.
func (c credCache) store(cred *credbrokerv1.Credential) error {
	aws := cred.GetAws()
	if aws == nil {
		return nil
	}
	b, err := json.Marshal(cacheEntry{
		Version: cacheVersion, Key: c.key,
		IssuanceID: cred.GetIssuanceId(), Issuer: cred.GetIssuer(), Profile: cred.GetProfile(), Cluster: cred.GetCluster(),
		AccessKeyID: aws.GetAccessKeyId(), SecretAccessKey: aws.GetSecretAccessKey(), SessionToken: aws.GetSessionToken(),
		Expiration: cred.GetExpiresAt().AsTime().UTC(),
	})
	if err != nil {
		return err
	}
	return keyfile.Write(c.path, append(b, '\n'), 0o600)
}

// remove deletes the cache file (a missing one is not an error).
func (c credCache) remove() error {
	if err := os.Remove(c.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// describeJSONError keeps JSON syntax errors to their position: the text of
// a corrupted cache file may be a secret and never reaches the terminal.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	}
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		return fmt.Sprintf("field %q has the wrong type", typ.Field)
	}
	return "invalid JSON"
}
