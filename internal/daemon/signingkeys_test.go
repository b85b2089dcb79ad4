package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state/etcdstate"
	"github.com/credbroker/credbroker/internal/keyfile"
	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/test/etcdtest"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// TestReplicaSigningKeys: two replicas on a real etcd, each with its own
// signing key, publish their public keys there: a token minted on replica
// A verifies with replica B's JWKS (served over HTTP); A's key rotates
// without a restart, the new key in B's JWKS before it signs, the old one
// there until the tokens it signed have expired, then gone. No private key
// reaches etcd, a JWKS, or stays on disk after its rotation.
func TestReplicaSigningKeys(t *testing.T) {
	t.Parallel()
	f := newKeyFleet(t)
	etcd, clock, dir := f.etcd, f.clock, f.dir
	const rotation, ahead, maxTTL = 24 * time.Hour, 10 * time.Minute, time.Hour
	a, b := f.replica("replica-a", rotation, ahead, maxTTL), f.replica("replica-b", rotation, ahead, maxTTL)
	maintain := func() {
		t.Helper()
		f.maintain(a, b)
	}
	served, kids, verifies := f.served, f.kids, f.verifies
	mint := func(iss *jwt.Issuer, id string) string {
		t.Helper()
		return f.mint(iss, id, maxTTL)
	}
	privateKeys := map[string]*ecdsa.PrivateKey{}
	readKey := func(replica string) *ecdsa.PrivateKey {
		t.Helper()
		k, err := keyfile.LoadEC(filepath.Join(dir, replica, "jwt.pem"))
		if err != nil {
			t.Fatal(err)
		}
		privateKeys[replica+"/"+base64.RawURLEncoding.EncodeToString(scalar(t, k))] = k
		return k
	}

	// A lists before B has published: each replica's JWKS has every
	// replica's keys from its next round on.
	maintain()
	maintain()
	oldA := readKey("replica-a")
	readKey("replica-b")
	oldKID := a.KeyID()
	if a.KeyID() == b.KeyID() {
		t.Fatal("the replicas sign with one key")
	}
	for _, iss := range []*jwt.Issuer{a, b} {
		if got := kids(iss); len(got) != 2 || !got[a.KeyID()] || !got[b.KeyID()] {
			t.Fatalf("JWKS kids %v, want both replicas' keys", got)
		}
	}
	before := mint(a, "before")
	if err := verifies(served(b), before); err != nil {
		t.Fatalf("a token of replica A with replica B's JWKS: %v", err)
	}
	if err := verifies(served(b), mint(b, "on-b")); err != nil {
		t.Fatalf("a token of replica B with its own JWKS: %v", err)
	}

	// publish_ahead before the period ends: the next key is made and
	// published, but A still signs with the old one.
	clock.Advance(rotation - ahead)
	maintain()
	if a.KeyID() != oldKID {
		t.Fatal("the new key signs before it was published ahead")
	}
	// (Both replicas' keys were made at the same time: both rotate.)
	if got := kids(b); len(got) != 4 || !got[oldKID] {
		t.Fatalf("B's JWKS kids %v, want each replica's current and next keys", got)
	}
	// The last token of the old key, a second before the new one signs.
	clock.Advance(ahead - time.Second)
	maintain()
	lastOld := mint(a, "last-old")
	if a.KeyID() != oldKID {
		t.Fatal("the new key signs before it was published ahead")
	}
	// Published for publish_ahead: the new key signs; no restart.
	clock.Advance(time.Second)
	maintain()
	newKID := a.KeyID()
	if newKID == oldKID {
		t.Fatal("the key did not rotate")
	}
	readKey("replica-a")
	first := mint(a, "first-new")
	for _, tok := range []string{lastOld, first} {
		if err := verifies(served(b), tok); err != nil {
			t.Fatalf("after the rotation, B's JWKS: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "replica-a", "jwt.pem.next")); !os.IsNotExist(err) {
		t.Fatalf("the next-key file stays: %v", err)
	}
	// Until the old key's last token has expired it stays in every JWKS;
	// then it goes.
	clock.Advance(maxTTL - 2*time.Second)
	maintain()
	if err := verifies(served(b), lastOld); err != nil {
		t.Fatalf("a token of the old key, a second before it expires: %v", err)
	}
	clock.Advance(2 * time.Second)
	maintain()
	for _, iss := range []*jwt.Issuer{a, b} {
		if got := kids(iss); got[oldKID] || !got[newKID] || len(got) != 2 {
			t.Fatalf("JWKS kids %v after the old keys' tokens expired, want %s (not %s) and B's new key", got, newKID, oldKID)
		}
	}

	// No private key anywhere it should not be: not in etcd, not in a
	// JWKS, and a rotated one not on disk.
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	var stored bytes.Buffer
	for _, kv := range resp.Kvs {
		stored.Write(kv.Key)
		stored.Write(kv.Value)
	}
	if !strings.Contains(stored.String(), newKID) {
		t.Fatal("etcd holds no published key: the grep below would prove nothing")
	}
	for name, k := range privateKeys {
		raw := scalar(t, k)
		d := base64.RawURLEncoding.EncodeToString(raw)
		pemKey, err := keyfile.EncodeEC(k)
		if err != nil {
			t.Fatal(err)
		}
		for where, doc := range map[string][]byte{"etcd": stored.Bytes(), "A's JWKS": served(a), "B's JWKS": served(b)} {
			if bytes.Contains(doc, []byte(d)) || bytes.Contains(doc, pemKey) || bytes.Contains(doc, raw) {
				t.Fatalf("private key %s found in %s", name, where)
			}
		}
	}
	if now := readKey("replica-a"); now.Equal(oldA) {
		t.Fatal("A's key file still holds the rotated key")
	}
}

// scalar returns k's private scalar, as a JWK's "d" encodes it.
func scalar(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyFleet is replicas' local JWT issuers publishing their keys on one
// real etcd, on one fake clock.
type keyFleet struct {
	t     *testing.T
	etcd  *etcdtest.Cluster
	clock *fakeclock.Clock
	dir   string
}

const fleetIssuerURL = "https://credbroker.fleet.test/oidc"

func newKeyFleet(t *testing.T) *keyFleet {
	return &keyFleet{t: t, etcd: etcdtest.New(t, 1), clock: fakeclock.New(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)), dir: t.TempDir()}
}

// replica starts the issuer of replica, with its own etcd client.
func (f *keyFleet) replica(replica string, rotation, ahead, maxTTL time.Duration) *jwt.Issuer {
	f.t.Helper()
	st, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: f.etcd.Endpoints(), Options: etcdstate.Options{Prefix: "/keys/"}})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = st.Close() })
	iss, err := jwt.New(jwt.Config{IssuerURL: fleetIssuerURL, KeyFile: filepath.Join(f.dir, replica, "jwt.pem"), Clock: f.clock.Now,
		Keys: signingKeyStore{keys: st, issuer: "oidc"}, Replica: replica, RotationPeriod: rotation, PublishAhead: ahead, MaxTTL: maxTTL})
	if err != nil {
		f.t.Fatal(err)
	}
	return iss
}

// maintain runs a key round on each issuer, as the daemon does.
func (f *keyFleet) maintain(isss ...*jwt.Issuer) {
	f.t.Helper()
	for _, iss := range isss {
		if err := iss.Maintain(context.Background()); err != nil {
			f.t.Fatal(err)
		}
	}
}

// served is the JWKS iss serves over HTTP.
func (f *keyFleet) served(iss *jwt.Issuer) []byte {
	f.t.Helper()
	rec := httptest.NewRecorder()
	iss.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/oidc"+jwt.JWKSPath, nil))
	body, _ := io.ReadAll(rec.Body)
	return body
}

// kids are the key ids of iss's JWKS.
func (f *keyFleet) kids(iss *jwt.Issuer) map[string]bool {
	f.t.Helper()
	keys, err := jwt.ParseJWKS(f.served(iss))
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]bool{}
	for kid := range keys {
		out[kid] = true
	}
	return out
}

// mint has iss sign a token living ttl.
func (f *keyFleet) mint(iss *jwt.Issuer, id string, ttl time.Duration) string {
	f.t.Helper()
	c, err := iss.Issue(context.Background(), issuers.Request{IssuanceID: id, Subject: "spiffe://fleet.test/c", Audience: "sts.amazonaws.com", TTL: ttl})
	if err != nil {
		f.t.Fatal(err)
	}
	return c.Token
}

// verifies checks token as a relying party does, with jwks.
func (f *keyFleet) verifies(jwks []byte, token string) error {
	_, err := jwt.Verify(jwks, token, jwtlib.WithTimeFunc(f.clock.Now), jwtlib.WithIssuer(fleetIssuerURL), jwtlib.WithAudience("sts.amazonaws.com"))
	return err
}
