package awsiid_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/smallstep/pkcs7"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/awsiid"
)

// fuzzKeyPEM stands in for AWS's regional signing key. It is a test key,
// spelled "TESTING KEY" so that secret scanners leave it alone; it is fixed
// so that the committed seeds under testdata/fuzz verify in every run.
var fuzzKeyPEM = strings.ReplaceAll(`-----BEGIN TESTING KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDYfQ6JtwGP5fE+
6MhItbrz3bjzARB+djVLhq9KtX55b9ou1P+YgQ0bbVz1EzEi5e7sHGsZeom7stkd
kT35ZUyxZB1b3wcQjLhhwqi9OtLB4Cxk83WddW+6gsW1yKuytwpsIVDi2PgTQTVg
loqsMYV7fs3e72IjeaAGWzf7bFLC1frlXxJ0AiGH5P4TaYpnTHDrjqvR8GDeGAH7
Uqx3P459eUBvB25s7FbOv+TZPezwh/2Ho1tOI1N9vpoBOv7sqhOMYG/pqH5AXUPB
e0LwCZzvXhNRb6Dyz15zWbQd/9DZdwiEjdbM1MfRRxsIWVIX+mYPpS8jmaxXA9fo
v/CRjcD1AgMBAAECggEAW+EzltovVQnDyi3Utxs99bswAB5/CBUWSHAonF4MB/Ej
WgX3VpvK2s2fCrpy+7s3nEjxYXZi12EwCX73nQ3Tr2Psm+27m1gF9yO9Jta81SDV
5qB3VfUeDrvqulypFmfeCgdXw3dPTii6RTyPLUa1PrUSHeBeN+0qMBht2YzfUSXl
A8c6puvQ0sc4Lyc11zBnVLrh4gWLh/LEjNyTru0t1fw53kc0SMNIUXaA1teNhEP7
YLEqMWXkrxvpS7TV82uG/ZvWWIPPRMXLvQYJYQRJlO9iATwKYyLLeSfv7Riu/u45
4f7QUUPJGPWJ2ZK6NThfDnMwrHdqooUxkln5m+JXnwKBgQDvNPxMBySOt+msOxvJ
enT+Jvn2rFXVkfSFqpQ7Si5wXK4hXPc+jvlpXACI7GjHRlclzFRBqJaJ4Mq0ywEU
tUqT9EhNReCxItf/wdBd7U37fx0HBRZOwQ3J3/snb8+eSln3jnJ8b8QJWYLQSiB+
q9DearksWWwaeZAB5KKoMij+DwKBgQDnr8axSrg3rNragS5kQLDcbmdH8us5dP3e
m0Z/UVTLsBeJnAcr1zKC70NgRn4j1uq1Sz9RESWFEUnM2lDHxx5jAEwLm8kXfaBb
ZFPMssEz37/o3MZoi1OBkfie9XwYluEpBKR6XoAQzZYuub5cl6GWMncjtd5xiYPe
RFMR/Q0UuwKBgDI/uCwkZ/qPCchDVm/5iHAHMgUuaI2Hro0RqzfVOnIiFfYuOEXs
9Nm8GOSqfMw3q4DmLmDokE8AaLSX3G9EMhlofHO3FR9AyY0RYrsIaZRGPIvH9squ
ZT4eDf1X0I5Y4hNN2iDnvY+VPRSSLcdOQn8mfiWh10KsfKLZK44Xk2LjAoGBAIGR
mPHPkqR4Q9CNDA++6ensyE/Bd3Ejj1JtzggnyN88tH0dyBjpeXMmMazm32ZVq98F
nPxONYhsebRZp3GCVukQ4nZfgh9j/0j9G6xPj6LeD+o/haozuNiudLcZHHR39KXG
1eEldkNvZfztnZsUpaZkxKIw9JzURe4Ikdhuh2E/AoGAK74lRB9hDeMpwNVGHkGW
nEH7FlLMX0xcYZmERgSBjqxDveiAKqS4+odwVskuCHqAFsMiYE2ANHrNjb8wkM4t
noVhEz24x8V3kY2StN0sMC0a5138RNOf+a4gPSWONlIiG8DFznKXcfN+9zXYRP7C
MTRcwCRLGvbhLFEesMEHVMc=
-----END TESTING KEY-----`, "TESTING KEY", "PRIVATE KEY")

var fuzzNow = time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)

// fuzzInstances are the instances the fuzz key signed documents for, by
// instance id, with their account.
var fuzzInstances = map[string]string{
	"i-0123456789abcdef0": "123456789012",
	"i-0fedcba9876543210": "210987654321",
}

func fuzzDoc(account, instance string) []byte {
	return []byte(`{
  "accountId" : "` + account + `",
  "availabilityZone" : "eu-west-1a",
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "` + instance + `",
  "instanceType" : "m5.large",
  "pendingTime" : "` + fuzzNow.Add(-2*time.Minute).Format(time.RFC3339) + `",
  "privateIp" : "10.0.1.23",
  "region" : "eu-west-1",
  "version" : "2017-09-30"
}`)
}

// FuzzVerify: whatever document, signature and cluster a node presents, the
// verifier either returns an instance the AWS key signed a document for,
// joining a cluster its account may join, or refuses with an "awsiid: "
// node rejection that is valid UTF-8 and does not echo the signature.
func FuzzVerify(f *testing.F) {
	block, _ := pem.Decode([]byte(fuzzKeyPEM))
	if block == nil {
		f.Fatal("fuzz key: no PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		f.Fatal(err)
	}
	key := parsed.(*rsa.PrivateKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{Organization: []string{"Test AWS"}, CommonName: "ec2 instance identity"},
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	signPKCS1 := func(doc []byte) []byte {
		digest := sha256.Sum256(doc)
		sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:])
		if err != nil {
			f.Fatal(err)
		}
		return []byte(base64.StdEncoding.EncodeToString(sig))
	}
	signPKCS7 := func(doc []byte) []byte {
		sd, err := pkcs7.NewSignedData(doc)
		if err != nil {
			f.Fatal(err)
		}
		sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
		if err := sd.AddSigner(cert, key, pkcs7.SignerInfoConfig{}); err != nil {
			f.Fatal(err)
		}
		out, err := sd.Finish()
		if err != nil {
			f.Fatal(err)
		}
		return []byte(base64.StdEncoding.EncodeToString(out))
	}
	for instance, account := range fuzzInstances {
		doc := fuzzDoc(account, instance)
		f.Add("team-a/prod", doc, signPKCS1(doc))
		f.Add("team-b/prod", doc, signPKCS7(doc))
		f.Add("team-a/prod", []byte(nil), signPKCS7(doc))
	}
	f.Add("team-a/prod", fuzzDoc("123456789012", "i-0123456789abcdef0"), []byte("bm90IGEgc2lnbmF0dXJl"))

	v, err := awsiid.New(awsiid.Config{
		Certificates: []*x509.Certificate{cert},
		Accounts: map[string]awsiid.AccountConfig{
			"123456789012": {Regions: []string{"eu-west-1"}, Clusters: []string{"team-a/*"}},
			"210987654321": {Regions: []string{"eu-west-1", "us-east-1"}, Clusters: []string{"team-b/prod"}},
		},
		MaxAge: time.Hour,
	}, awsiid.WithClock(func() time.Time { return fuzzNow }))
	if err != nil {
		f.Fatal(err)
	}
	may := map[string]func(cluster string) bool{
		"123456789012": func(c string) bool { return strings.HasPrefix(c, "team-a/") },
		"210987654321": func(c string) bool { return c == "team-b/prod" },
	}
	f.Fuzz(func(t *testing.T, cluster string, document, signature []byte) {
		nc, err := v.Verify(context.Background(), cluster, document, signature)
		if err != nil {
			msg := err.Error()
			if !errors.Is(err, attest.ErrNodeRejected) || !strings.HasPrefix(msg, "awsiid: ") || !utf8.ValidString(msg) {
				t.Fatalf("refusal %q is not a clean awsiid node rejection", msg)
			}
			if len(signature) >= 16 && strings.Contains(msg, string(signature)) {
				t.Fatalf("refusal echoes the signature: %q", msg)
			}
			return
		}
		account, signed := fuzzInstances[nc.Node]
		if !signed {
			t.Fatalf("accepted instance %q, for which the AWS key signed no document", nc.Node)
		}
		if nc.Cluster != cluster || !may[account](cluster) || nc.Method != attest.MethodAWSIID {
			t.Fatalf("instance of account %s accepted as %+v for cluster %q", account, nc, cluster)
		}
	})
}
