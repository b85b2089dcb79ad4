package e2e

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/internal/svidfile"
)

// evidenceBroker is the dev broker with a configuration accepting projected
// service account tokens of the workload cluster team-a/alpha (keys in a JWKS
// file) and EC2 instance identity documents of one account (signed by a
// certificate the test made, standing in for AWS's).
type evidenceBroker struct {
	*broker
	saKey   *rsa.PrivateKey
	iidKey  *rsa.PrivateKey
	dir     string
	bundle  string
	k8sIss  string
	account string
}

func startEvidenceBroker(t *testing.T) *evidenceBroker {
	t.Helper()
	e := &evidenceBroker{dir: t.TempDir(), k8sIss: "https://oidc.team-a.example/alpha", account: "123456789012"}
	var err error
	if e.saKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if e.iidKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": "sa-1", "use": "sig", "alg": "RS256",
		"n": b64(e.saKey.N.Bytes()), "e": b64(big.NewInt(int64(e.saKey.E)).Bytes()),
	}}})
	jwksFile := filepath.Join(e.dir, "team-a-jwks.json")
	os.WriteFile(jwksFile, jwks, 0o600)

	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test stand-in for the AWS IID certificate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &e.iidKey.PublicKey, e.iidKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(e.dir, "aws-iid.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)

	cfg := filepath.Join(e.dir, "nodes.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`trust_domain: dev.credbroker.test
admin:
  spiffe_ids: [spiffe://dev.credbroker.test/credbroker/admin]
issuers:
  local: {type: jwt}
profiles:
  dev-token: {issuer: local, max_ttl: 15m, cluster: optional}
node_attestation:
  svid_ttl: 30m
  k8s_psat:
    clusters:
      team-a/alpha:
        issuer: %s
        jwks_file: %s
        service_accounts: ["credbroker-system:node-agent"]
  aws_iid:
    certificates: [%s]
    accounts:
      "%s": {regions: [us-east-1], clusters: ["team-a/*"]}
policy:
  - id: spiffe://dev.credbroker.test/capi/cluster/*/*/node/*
    profiles: [dev-token]
    clusters: ["*"]
`, e.k8sIss, jwksFile, certFile, e.account)), 0o600)
	e.broker = startBrokerWith(t, filepath.Join(e.dir, "data"), []string{"PATH=" + os.Getenv("PATH"), "HOME=" + e.dir}, "--config", cfg)
	e.bundle = filepath.Join(e.broker.dataDir, "dev", "controller", "bundle.pem")
	return e
}

// psat mints a projected token as kube-apiserver would for the node agent's pod.
func (e *evidenceBroker) psat(t *testing.T, iss, sa, node string) string {
	t.Helper()
	now := time.Now()
	tok := jwtlib.NewWithClaims(jwtlib.SigningMethodRS256, jwtlib.MapClaims{
		"iss": iss, "aud": []string{"credbroker"}, "sub": "system:serviceaccount:credbroker-system:" + sa,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "credbroker-system",
			"serviceaccount": map[string]any{"name": sa, "uid": "sa-uid"},
			"pod":            map[string]any{"name": "node-agent-x7k2p", "uid": "pod-uid"},
			"node":           map[string]any{"name": node, "uid": "node-uid"},
		},
	})
	tok.Header["kid"] = "sa-1"
	s, err := tok.SignedString(e.saKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// node runs `credbroker-sidecar node --once` with the given evidence flags
// and extra environment.
func (e *evidenceBroker) node(t *testing.T, env []string, evidence ...string) (result, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "svid")
	args := append([]string{"node", "--once", "--broker", e.grpcAddr, "--trust-domain", "dev.credbroker.test",
		"--bundle", e.bundle, "--svid-dir", dir}, evidence...)
	return runToolEnv(t, append([]string{"PATH=" + os.Getenv("PATH")}, env...), "credbroker-sidecar", args...), dir
}

func TestNodeAttestsWithAProjectedServiceAccountToken(t *testing.T) {
	t.Parallel()
	e := startEvidenceBroker(t)
	write := func(tok string) string {
		f := filepath.Join(t.TempDir(), "token")
		os.WriteFile(f, []byte(tok), 0o600)
		return f
	}
	r, dir := e.node(t, nil, "--psat-token-file", write(e.psat(t, e.k8sIss, "node-agent", "ip-10-0-1-23.ec2.internal")), "--cluster", "team-a/alpha")
	if r.code != 0 {
		t.Fatalf("node --once: exit %d\n%s", r.code, r.stderr)
	}
	svid, _, err := svidfile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://dev.credbroker.test/capi/cluster/team-a/alpha/node/ip-10-0-1-23.ec2.internal"; svid.ID.String() != want {
		t.Fatalf("node SVID %s, want %s", svid.ID, want)
	}
	if fi, _ := os.Stat(filepath.Join(dir, svidfile.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", fi.Mode().Perm())
	}

	// Refused: a service account that may not attest nodes, a foreign issuer, the wrong cluster's issuer.
	for name, tc := range map[string]struct{ tok, cluster, want string }{
		"service account":  {e.psat(t, e.k8sIss, "default", "n1"), "team-a/alpha", "service account"},
		"foreign issuer":   {e.psat(t, "https://evil.example", "node-agent", "n1"), "team-a/alpha", "unauthenticated"},
		"unknown cluster":  {e.psat(t, e.k8sIss, "node-agent", "n1"), "team-b/beta", "unauthenticated"},
		"not even a token": {"garbage", "team-a/alpha", "unauthenticated"},
	} {
		t.Run(name, func(t *testing.T) {
			r, _ := e.node(t, nil, "--psat-token-file", write(tc.tok), "--cluster", tc.cluster)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want it to mention %q", r.code, r.stderr, tc.want)
			}
		})
	}
	if r := e.ctl(t, "-o", "json", "nodes", "list"); !strings.Contains(r.stdout, `"attestation": "ATTESTATION_METHOD_K8S_PSAT"`) {
		t.Errorf("nodes list: %s", r.stdout)
	}
}

func TestNodeAttestsWithAnInstanceIdentityDocument(t *testing.T) {
	t.Parallel()
	e := startEvidenceBroker(t)
	doc := []byte(`{"accountId":"` + e.account + `","architecture":"x86_64","availabilityZone":"us-east-1a","imageId":"ami-0abcdef1234567890",` +
		`"instanceId":"i-0123456789abcdef0","instanceType":"m5.large","pendingTime":"` + time.Now().UTC().Format(time.RFC3339) + `",` +
		`"privateIp":"10.0.1.23","region":"us-east-1","version":"2017-09-30"}`)
	sum := sha256.Sum256(doc)
	sig, err := rsa.SignPKCS1v15(rand.Reader, e.iidKey, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	// The instance metadata service (IMDSv2), as the SDK's client talks to it.
	imds := func(document []byte) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
				w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
				io.WriteString(w, "imds-session-token")
			case r.Header.Get("X-Aws-Ec2-Metadata-Token") != "imds-session-token":
				http.Error(w, "unauthorized", http.StatusUnauthorized)
			case r.URL.Path == "/latest/dynamic/instance-identity/document":
				w.Write(document)
			case r.URL.Path == "/latest/dynamic/instance-identity/signature":
				io.WriteString(w, base64.StdEncoding.EncodeToString(sig))
			default:
				http.NotFound(w, r)
			}
		}))
		t.Cleanup(srv.Close)
		return "AWS_EC2_METADATA_SERVICE_ENDPOINT=" + srv.URL
	}
	r, dir := e.node(t, []string{imds(doc)}, "--aws-iid", "--cluster", "team-a/alpha")
	if r.code != 0 {
		t.Fatalf("node --once: exit %d\n%s", r.code, r.stderr)
	}
	svid, _, err := svidfile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://dev.credbroker.test/capi/cluster/team-a/alpha/node/i-0123456789abcdef0"; svid.ID.String() != want {
		t.Fatalf("node SVID %s, want %s", svid.ID, want)
	}
	// A tampered document, or a cluster the account may not join, is refused.
	tampered := []byte(strings.Replace(string(doc), "m5.large", "m5.xlarge", 1))
	if r, _ := e.node(t, []string{imds(tampered)}, "--aws-iid", "--cluster", "team-a/alpha"); r.code != 1 || !strings.Contains(r.stderr, "unauthenticated") {
		t.Errorf("tampered document: exit %d, %q", r.code, r.stderr)
	}
	if r, _ := e.node(t, []string{imds(doc)}, "--aws-iid", "--cluster", "team-b/beta"); r.code != 1 || !strings.Contains(r.stderr, "unauthenticated") {
		t.Errorf("cluster not allowed: exit %d, %q", r.code, r.stderr)
	}
}
