// Package awsiid attests nodes by AWS EC2 instance identity documents (IIDs).
// A node reads its document and a signature from IMDS and names the workload
// cluster it is joining; the broker checks AWS's signature with configured
// AWS public certificates and that the account, region and cluster are
// allowed. The node name is the instance id.
//
// What this does not prove: the IID says nothing about which Cluster API
// cluster created the instance. That needs the EC2 tag
// sigs.k8s.io/cluster-api-provider-aws/cluster/<name> via DescribeInstances,
// which is out of scope, so any instance of an allowed account and region
// may join any cluster its account's Clusters patterns allow. Keep those
// patterns narrow (ideally one account per cluster).
//
// Replay: an IID and its signature never change for the life of the
// instance and are readable by every process on it (IMDS), so whoever once
// saw them can present them again, forever. Config.MaxAge bounds this by the
// instance's pendingTime; without it, prefer join tokens (one-time) or PSATs
// (short-lived) for clusters where that matters.
package awsiid

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/credbroker/credbroker/attest"
)

const (
	// maxDocumentLen and maxSignatureLen bound the evidence we parse; real
	// documents are under 1 KiB and PKCS#7 signatures under 2 KiB.
	maxDocumentLen  = 8 << 10
	maxSignatureLen = 16 << 10
	// futureSkew tolerates clock skew on pendingTime.
	futureSkew = 5 * time.Minute
)

var (
	accountRE  = regexp.MustCompile(`^[0-9]{12}$`)
	instanceRE = regexp.MustCompile(`^i-([0-9a-f]{8}|[0-9a-f]{17})$`)
	regionRE   = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
)

// Config says which instances may join which clusters.
type Config struct {
	// Certificates are AWS's public certificates for instance identity
	// signatures (the per-region "RSA" certificate for the base64 signature,
	// the "RSA-2048" one for the PKCS#7 rsa2048 signature). They are the only
	// trust anchors; certificates embedded in a PKCS#7 message are ignored.
	// Their validity periods are not enforced: AWS keeps signing with
	// certificates past their NotAfter (SPIRE does not check either), and the
	// operator distrusts a certificate by removing it.
	Certificates []*x509.Certificate
	// Accounts are the AWS account ids (12 digits) whose instances may join.
	Accounts map[string]AccountConfig
	// MaxAge, if positive, rejects documents whose pendingTime (when the
	// instance was last launched or started) is older than MaxAge, which
	// limits the window in which a leaked IID can be replayed. Nodes must
	// then join within MaxAge of boot, which CAPI nodes do. Zero disables the
	// check.
	MaxAge time.Duration
}

// AccountConfig is what instances of one account may do.
type AccountConfig struct {
	// Regions are the regions the account's instances may run in. Required.
	Regions []string
	// Clusters are path.Match patterns of "namespace/name" workload clusters
	// the account's instances may join, e.g. "team-a/*". Required.
	Clusters []string
}

// Verifier verifies instance identity documents. It is safe for concurrent
// use.
type Verifier struct {
	certs    []*x509.Certificate
	accounts map[string]AccountConfig
	maxAge   time.Duration
	now      func() time.Time
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithClock sets the clock MaxAge is measured with.
func WithClock(now func() time.Time) Option {
	return func(v *Verifier) { v.now = now }
}

// New returns a Verifier for cfg.
func New(cfg Config, opts ...Option) (*Verifier, error) {
	v := &Verifier{maxAge: cfg.MaxAge, now: time.Now, accounts: make(map[string]AccountConfig, len(cfg.Accounts))}
	for _, o := range opts {
		o(v)
	}
	if cfg.MaxAge < 0 {
		return nil, errors.New("awsiid: MaxAge must not be negative")
	}
	for i, c := range cfg.Certificates {
		if c == nil {
			return nil, fmt.Errorf("awsiid: certificate %d is nil", i)
		}
		if _, ok := c.PublicKey.(*rsa.PublicKey); !ok {
			return nil, fmt.Errorf("awsiid: certificate %d (%s) does not hold an RSA key", i, c.Subject)
		}
		v.certs = append(v.certs, c)
	}
	if len(v.certs) == 0 {
		return nil, errors.New("awsiid: no AWS certificates configured")
	}
	if len(cfg.Accounts) == 0 {
		return nil, errors.New("awsiid: no accounts configured")
	}
	for id, acct := range cfg.Accounts {
		if err := checkAccount(id, acct); err != nil {
			return nil, fmt.Errorf("awsiid: account %q: %w", id, err)
		}
		v.accounts[id] = AccountConfig{Regions: slices.Clone(acct.Regions), Clusters: slices.Clone(acct.Clusters)}
	}
	return v, nil
}

func checkAccount(id string, acct AccountConfig) error {
	if !accountRE.MatchString(id) {
		return errors.New("not a 12-digit account id")
	}
	if len(acct.Regions) == 0 {
		return errors.New("at least one region is required")
	}
	for _, r := range acct.Regions {
		if !regionRE.MatchString(r) {
			return fmt.Errorf("region %q is not a region name", r)
		}
	}
	if len(acct.Clusters) == 0 {
		return errors.New("at least one cluster pattern is required")
	}
	for _, p := range acct.Clusters {
		if _, err := path.Match(p, "ns/name"); err != nil {
			return fmt.Errorf("cluster pattern %q: %w", p, err)
		}
	}
	return nil
}

// document is the part of an instance identity document we read.
type document struct {
	AccountID   string `json:"accountId"`
	Region      string `json:"region"`
	InstanceID  string `json:"instanceId"`
	PendingTime string `json:"pendingTime"`
}

// Verify checks an instance identity document and its signature, as read
// from IMDS, and that the instance may join cluster ("namespace/name").
// signature is either the base64 RSA signature
// (/latest/dynamic/instance-identity/signature: PKCS#1 v1.5 over SHA-256 of
// the exact document bytes) or the base64 PKCS#7 signed data
// (/latest/dynamic/instance-identity/rsa2048), whose content must equal
// document; with PKCS#7, document may be nil and is then taken from the
// signed content. ctx is unused: verification is offline.
//
// Rejections wrap attest.ErrNodeRejected and do not echo the evidence.
func (v *Verifier) Verify(_ context.Context, cluster string, document, signature []byte) (attest.NodeClaims, error) {
	if !attest.ValidCluster(cluster) {
		return attest.NodeClaims{}, reject("cluster is not a namespace/name")
	}
	if len(document) > maxDocumentLen || len(signature) > maxSignatureLen {
		return attest.NodeClaims{}, reject("document or signature is too long")
	}
	signed, err := v.verifySignature(document, signature)
	if err != nil {
		return attest.NodeClaims{}, err
	}
	doc, err := v.parse(signed)
	if err != nil {
		return attest.NodeClaims{}, err
	}
	acct, ok := v.accounts[doc.AccountID]
	if !ok {
		return attest.NodeClaims{}, reject(fmt.Sprintf("account %s is not allowed", doc.AccountID))
	}
	if !slices.Contains(acct.Regions, doc.Region) {
		return attest.NodeClaims{}, reject(fmt.Sprintf("region %s is not allowed for account %s", doc.Region, doc.AccountID))
	}
	if !slices.ContainsFunc(acct.Clusters, func(p string) bool { m, _ := path.Match(p, cluster); return m }) {
		return attest.NodeClaims{}, reject(fmt.Sprintf("instances of account %s may not join cluster %s", doc.AccountID, cluster))
	}
	return attest.NodeClaims{
		Cluster: cluster,
		Node:    doc.InstanceID,
		Method:  attest.MethodAWSIID,
		Detail:  fmt.Sprintf("instance %s in account %s, region %s", doc.InstanceID, doc.AccountID, doc.Region),
	}, nil
}

// parse decodes a signed document and checks its fields' form and age.
func (v *Verifier) parse(signed []byte) (document, error) {
	var doc document
	if err := json.Unmarshal(signed, &doc); err != nil {
		return document{}, reject("document is not valid JSON")
	}
	switch {
	case !accountRE.MatchString(doc.AccountID):
		return document{}, reject("document has no valid accountId")
	case !regionRE.MatchString(doc.Region):
		return document{}, reject("document has no valid region")
	case !instanceRE.MatchString(doc.InstanceID) || !attest.ValidNodeName(doc.InstanceID):
		return document{}, reject("document has no valid instanceId")
	}
	if v.maxAge > 0 {
		pending, err := time.Parse(time.RFC3339, doc.PendingTime)
		if err != nil {
			return document{}, reject("document has no valid pendingTime")
		}
		now := v.now()
		if now.Sub(pending) > v.maxAge {
			return document{}, reject(fmt.Sprintf("instance was launched more than %v ago (pendingTime); join within MaxAge of boot", v.maxAge))
		}
		if pending.Sub(now) > futureSkew {
			return document{}, reject("document pendingTime is in the future")
		}
	}
	return doc, nil
}

// verifySignature returns the document bytes that one of the configured
// certificates signed.
func (v *Verifier) verifySignature(document, signature []byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(string(stripSpace(signature)))
	if err != nil || len(raw) == 0 {
		return nil, reject("signature is not base64")
	}
	if p7, err := pkcs7.Parse(raw); err == nil {
		return v.verifyPKCS7(p7, document)
	}
	if len(document) == 0 {
		return nil, reject("document is empty")
	}
	digest := sha256.Sum256(document)
	for _, c := range v.certs {
		if rsa.VerifyPKCS1v15(c.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], raw) == nil {
			return document, nil
		}
	}
	return nil, reject("signature does not verify with any configured AWS certificate")
}

// Digest algorithms accepted in PKCS#7 signer infos (SHA-2). SHA-1 and MD5
// are refused even though the pkcs7 package and x509.CheckSignature would
// accept them.
var pkcs7Digests = []asn1.ObjectIdentifier{
	pkcs7.OIDDigestAlgorithmSHA256,
	pkcs7.OIDDigestAlgorithmSHA384,
	pkcs7.OIDDigestAlgorithmSHA512,
}

func (v *Verifier) verifyPKCS7(p7 *pkcs7.PKCS7, document []byte) ([]byte, error) {
	if len(p7.Content) == 0 {
		return nil, reject("PKCS#7 signature has no content (detached signatures are not supported)")
	}
	if document != nil && !bytes.Equal(document, p7.Content) {
		return nil, reject("document differs from the PKCS#7 signed content")
	}
	if len(p7.Signers) != 1 {
		return nil, reject("PKCS#7 signature must have exactly one signer")
	}
	alg := p7.Signers[0].DigestAlgorithm.Algorithm
	if !slices.ContainsFunc(pkcs7Digests, alg.Equal) {
		return nil, reject("PKCS#7 digest algorithm is not SHA-2")
	}
	for _, c := range v.certs {
		// Verify with our certificate only, never the embedded ones. The
		// copy has its validity widened because pkcs7 checks a signing-time
		// attribute against it, and we do not enforce validity (see
		// Config.Certificates).
		anchor := *c
		anchor.NotBefore, anchor.NotAfter = time.Time{}, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
		p7.Certificates = []*x509.Certificate{&anchor}
		if p7.Verify() == nil {
			return p7.Content, nil
		}
	}
	return nil, reject("PKCS#7 signature does not verify with any configured AWS certificate")
}

func stripSpace(b []byte) []byte {
	return bytes.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, b)
}

func reject(reason string) error {
	return fmt.Errorf("awsiid: %s: %w", reason, attest.ErrNodeRejected)
}
