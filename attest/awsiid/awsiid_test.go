package awsiid

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/credbroker/credbroker/attest"
)

const (
	account    = "123456789012"
	instanceID = "i-0123456789abcdef0"
	cluster    = "team-a/prod"
)

var now = time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)

// awsKey stands in for AWS's per-region signing key and certificate.
type awsKey struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
}

// newAWSKey returns a key and certificate issued by a throwaway CA, valid
// until notAfter.
func newAWSKey(t *testing.T, serial int64, notAfter time.Time) awsKey {
	t.Helper()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"Test AWS"}, CommonName: "test region CA"},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{Organization: []string{"Test AWS"}, CommonName: "ec2 instance identity"},
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return awsKey{key: key, cert: cert}
}

// sign returns the base64 signature IMDS serves at .../signature, wrapped
// at 64 columns like IMDS does.
func (k awsKey) sign(t *testing.T, doc []byte) []byte {
	t.Helper()
	digest := sha256.Sum256(doc)
	sig, err := rsa.SignPKCS1v15(rand.Reader, k.key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return wrap(base64.StdEncoding.EncodeToString(sig))
}

// signPKCS7 returns the base64 PKCS#7 signed data IMDS serves at
// .../rsa2048, with cert embedded.
func (k awsKey) signPKCS7(t *testing.T, doc []byte, digest asn1.ObjectIdentifier, cert *x509.Certificate) []byte {
	t.Helper()
	sd, err := pkcs7.NewSignedData(doc)
	if err != nil {
		t.Fatal(err)
	}
	sd.SetDigestAlgorithm(digest)
	if err := sd.AddSigner(cert, k.key, pkcs7.SignerInfoConfig{}); err != nil {
		t.Fatal(err)
	}
	der, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return wrap(base64.StdEncoding.EncodeToString(der))
}

func wrap(s string) []byte {
	var b strings.Builder
	for len(s) > 64 {
		b.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	b.WriteString(s)
	return []byte(b.String())
}

// iid returns an instance identity document as IMDS formats it.
func iid(accountID, region, instance string, pending time.Time) []byte {
	return []byte(`{
  "accountId" : "` + accountID + `",
  "architecture" : "x86_64",
  "availabilityZone" : "` + region + `a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "` + instance + `",
  "instanceType" : "m5.large",
  "kernelId" : null,
  "pendingTime" : "` + pending.Format(time.RFC3339) + `",
  "privateIp" : "10.0.1.23",
  "ramdiskId" : null,
  "region" : "` + region + `",
  "version" : "2017-09-30"
}`)
}

func validDoc() []byte { return iid(account, "eu-west-1", instanceID, now.Add(-2*time.Minute)) }

func newVerifier(t *testing.T, maxAge time.Duration, certs ...*x509.Certificate) *Verifier {
	t.Helper()
	v, err := New(Config{
		Certificates: certs,
		Accounts: map[string]AccountConfig{
			account:        {Regions: []string{"eu-west-1", "us-east-1"}, Clusters: []string{"team-a/*"}},
			"210987654321": {Regions: []string{"us-east-1"}, Clusters: []string{"team-b/prod"}},
		},
		MaxAge: maxAge,
	}, WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var wantClaims = attest.NodeClaims{
	Cluster: cluster,
	Node:    instanceID,
	Method:  attest.MethodAWSIID,
	Detail:  "instance i-0123456789abcdef0 in account 123456789012, region eu-west-1",
}

func TestVerifyValid(t *testing.T) {
	aws := newAWSKey(t, 42, now.Add(365*24*time.Hour))
	// pkcs7 signs with the wall clock as signing time, which the pkcs7
	// package checks against the certificate's validity.
	expired := newAWSKey(t, 43, time.Now().Add(-24*time.Hour))
	other := newAWSKey(t, 44, now.Add(365*24*time.Hour))
	v := newVerifier(t, 0, other.cert, aws.cert, expired.cert)
	doc := validDoc()
	for _, tc := range []struct {
		name string
		doc  []byte
		sig  []byte
	}{
		{"base64 signature", doc, aws.sign(t, doc)},
		{"base64 signature, expired certificate", doc, expired.sign(t, doc)},
		{"PKCS#7", doc, aws.signPKCS7(t, doc, pkcs7.OIDDigestAlgorithmSHA256, aws.cert)},
		{"PKCS#7 without document", nil, aws.signPKCS7(t, doc, pkcs7.OIDDigestAlgorithmSHA256, aws.cert)},
		{"PKCS#7, expired certificate", doc, expired.signPKCS7(t, doc, pkcs7.OIDDigestAlgorithmSHA256, expired.cert)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(context.Background(), cluster, tc.doc, tc.sig)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got != wantClaims {
				t.Errorf("got %+v\nwant %+v", got, wantClaims)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	aws := newAWSKey(t, 42, now.Add(365*24*time.Hour))
	attacker := newAWSKey(t, 42, now.Add(365*24*time.Hour))
	v := newVerifier(t, 10*time.Minute, aws.cert)
	doc := validDoc()
	tampered := append([]byte(nil), doc...)
	tampered[strings.Index(string(doc), "eu-west-1")+1] = 's' // eu-west-1 -> es-west-1... one byte
	signed := func(d []byte) ([]byte, []byte) { return d, aws.sign(t, d) }
	// attacker's certificate claims AWS's issuer and serial, to be picked by
	// issuer-and-serial lookup if embedded certificates were trusted.
	impostor := *attacker.cert
	impostor.RawIssuer, impostor.SerialNumber = aws.cert.RawIssuer, aws.cert.SerialNumber

	for _, tc := range []struct {
		name, cluster, reason string
		doc, sig              []byte
	}{
		{name: "tampered document", doc: tampered, sig: aws.sign(t, doc), reason: "does not verify"},
		{name: "signed by another key", doc: doc, sig: attacker.sign(t, doc), reason: "does not verify"},
		{name: "signature not base64", doc: doc, sig: []byte("%%%"), reason: "not base64"},
		{name: "empty signature", doc: doc, sig: nil, reason: "not base64"},
		{name: "empty document", doc: nil, sig: aws.sign(t, nil), reason: "document is empty"},
		{name: "wrong account", reason: "account 999999999999 is not allowed",
			doc: iid("999999999999", "eu-west-1", instanceID, now)},
		{name: "region not allowed", reason: "region ap-south-1 is not allowed",
			doc: iid(account, "ap-south-1", instanceID, now)},
		{name: "region allowed for another account only", reason: "region eu-west-1 is not allowed",
			doc: iid("210987654321", "eu-west-1", instanceID, now)},
		{name: "cluster not allowed", cluster: "team-b/prod", reason: "may not join cluster team-b/prod", doc: doc},
		{name: "cluster invalid", cluster: "team-a", reason: "namespace/name", doc: doc},
		{name: "malformed JSON", reason: "not valid JSON", doc: []byte(`{"accountId": "123456789012",`)},
		{name: "bad instance id", reason: "instanceId", doc: iid(account, "eu-west-1", "i-0123456789ABCDEF0", now)},
		{name: "no instance id", reason: "instanceId", doc: iid(account, "eu-west-1", "", now)},
		{name: "too old (MaxAge)", reason: "launched more than 10m0s ago",
			doc: iid(account, "eu-west-1", instanceID, now.Add(-11*time.Minute))},
		{name: "pendingTime in the future", reason: "in the future",
			doc: iid(account, "eu-west-1", instanceID, now.Add(time.Hour))},
		{name: "no pendingTime", reason: "pendingTime",
			doc: []byte(`{"accountId":"123456789012","region":"eu-west-1","instanceId":"i-0123456789abcdef0"}`)},
		{name: "PKCS#7 signed by another key, embedding an impostor certificate", doc: doc, reason: "PKCS#7 signature does not verify",
			sig: attacker.signPKCS7(t, doc, pkcs7.OIDDigestAlgorithmSHA256, &impostor)},
		{name: "PKCS#7 content differs from document", doc: tampered,
			sig: aws.signPKCS7(t, doc, pkcs7.OIDDigestAlgorithmSHA256, aws.cert), reason: "differs"},
		{name: "PKCS#7 with SHA-1", doc: doc,
			sig: aws.signPKCS7(t, doc, pkcs7.OIDDigestAlgorithmSHA1, aws.cert), reason: "not SHA-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, sig := tc.doc, tc.sig
			if sig == nil && tc.name != "empty signature" {
				d, sig = signed(d)
			}
			c := tc.cluster
			if c == "" {
				c = cluster
			}
			_, err := v.Verify(context.Background(), c, d, sig)
			if !errors.Is(err, attest.ErrNodeRejected) {
				t.Fatalf("err = %v, want one wrapping attest.ErrNodeRejected", err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "awsiid: ") || !strings.Contains(msg, tc.reason) {
				t.Errorf("err = %q, want awsiid: prefix and %q", msg, tc.reason)
			}
		})
	}
}

func TestMaxAgeOffAcceptsOldInstances(t *testing.T) {
	aws := newAWSKey(t, 42, now.Add(365*24*time.Hour))
	v := newVerifier(t, 0, aws.cert)
	doc := iid(account, "eu-west-1", instanceID, now.Add(-400*24*time.Hour))
	if _, err := v.Verify(context.Background(), cluster, doc, aws.sign(t, doc)); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	aws := newAWSKey(t, 42, now.Add(365*24*time.Hour))
	ok := AccountConfig{Regions: []string{"eu-west-1"}, Clusters: []string{"team-a/*"}}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no certificates", Config{Accounts: map[string]AccountConfig{account: ok}}},
		{"nil certificate", Config{Certificates: []*x509.Certificate{nil}, Accounts: map[string]AccountConfig{account: ok}}},
		{"no accounts", Config{Certificates: []*x509.Certificate{aws.cert}}},
		{"bad account id", Config{Certificates: []*x509.Certificate{aws.cert}, Accounts: map[string]AccountConfig{"12345": ok}}},
		{"no regions", Config{Certificates: []*x509.Certificate{aws.cert}, Accounts: map[string]AccountConfig{account: {Clusters: []string{"a/b"}}}}},
		{"no clusters", Config{Certificates: []*x509.Certificate{aws.cert}, Accounts: map[string]AccountConfig{account: {Regions: []string{"eu-west-1"}}}}},
		{"bad pattern", Config{Certificates: []*x509.Certificate{aws.cert}, Accounts: map[string]AccountConfig{account: {Regions: []string{"eu-west-1"}, Clusters: []string{"team-a/["}}}}},
		{"negative MaxAge", Config{Certificates: []*x509.Certificate{aws.cert}, Accounts: map[string]AccountConfig{account: ok}, MaxAge: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.HasPrefix(err.Error(), "awsiid: ") {
				t.Fatalf("New: err = %v, want an awsiid: error", err)
			}
		})
	}
}
