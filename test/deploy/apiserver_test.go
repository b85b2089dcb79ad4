package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/svidfile"
	"github.com/credbroker/credbroker/test/etcdtest"
	"github.com/credbroker/credbroker/test/testproc"
)

// envKubeAPIServer names the kube-apiserver binary; `make test` sets it to
// the one `make kube-apiserver` builds.
const envKubeAPIServer = "CREDBROKER_KUBE_APISERVER"

// apiServer is a kube-apiserver started by the test, on an embedded etcd.
type apiServer struct {
	URL    string // https://127.0.0.1:PORT, also the service-account issuer
	CAFile string // the serving certificate's CA (PEM)
	token  string // a static token of a system:masters user
	client *http.Client

	mu        sync.Mutex
	resources map[string][]apiResource // by group/version
}

type apiResource struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	Namespaced bool   `json:"namespaced"`
}

// startAPIServer runs kube-apiserver for the rest of the test. A missing
// binary fails the test (testproc never skips).
func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	h := testproc.Harness{
		Package: "deploy", Server: "Kubernetes API", Command: "kube-apiserver", EnvBinary: envKubeAPIServer,
		PortTaken: "address already in use",
		// A cold start installs the bootstrap RBAC policy and priority
		// levels; on a loaded 2-core machine that takes a while.
		ReadyTimeout: 3 * time.Minute,
		StopGrace:    15 * time.Second,
	}
	bin := h.Binary(t)
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test/deploy kube-apiserver CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, blocks ...*pem.Block) string {
		var b bytes.Buffer
		for _, blk := range blocks {
			pem.Encode(&b, blk)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	srvKeyDER, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	saKeyDER, _ := x509.MarshalPKCS8PrivateKey(saKey)
	saPubDER, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	s := &apiServer{CAFile: write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caDER}), resources: map[string][]apiResource{}}
	certFile := write("apiserver.pem", &pem.Block{Type: "CERTIFICATE", Bytes: srvDER})
	keyFile := write("apiserver-key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: srvKeyDER})
	saKeyFile := write("sa.key", &pem.Block{Type: "PRIVATE KEY", Bytes: saKeyDER})
	saPubFile := write("sa.pub", &pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER})
	tok := make([]byte, 24)
	rand.Read(tok)
	s.token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(dir, "tokens.csv")
	os.WriteFile(tokenFile, []byte(s.token+`,test-admin,test-admin,"system:masters"`+"\n"), 0o600)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	h.Start(t, bin, func() (testproc.Attempt, error) {
		ports, err := testproc.FreePorts(1)
		if err != nil {
			return testproc.Attempt{}, err
		}
		_, port, _ := net.SplitHostPort(ports[0])
		s.URL = "https://127.0.0.1:" + port
		cmd := exec.Command(bin,
			"--etcd-servers="+etcd.Endpoint(0),
			"--etcd-prefix=/registry-"+hex.EncodeToString(tok[:4]),
			"--bind-address=127.0.0.1", "--secure-port="+port, "--advertise-address=127.0.0.1",
			"--tls-cert-file="+certFile, "--tls-private-key-file="+keyFile,
			"--cert-dir="+filepath.Join(dir, "certs"),
			"--token-auth-file="+tokenFile,
			"--authorization-mode=RBAC",
			"--service-account-issuer="+s.URL,
			"--service-account-jwks-uri="+s.URL+"/openid/v1/jwks",
			"--service-account-key-file="+saPubFile,
			"--service-account-signing-key-file="+saKeyFile,
			"--service-cluster-ip-range=10.96.0.0/16",
			"--endpoint-reconciler-type=none",
			"--profiling=false",
			"--v=0",
		)
		cmd.Env = testproc.Environ([]string{"KUBECONFIG="})
		return testproc.Attempt{Cmd: cmd, Ready: s.ready}, nil
	})
	return s
}

// ready returns nil once /readyz answers 200 (etcd reachable, bootstrap
// policy and CRD informers in place).
func (s *apiServer) ready(ctx context.Context) error {
	code, body, err := s.do(ctx, http.MethodGet, "/readyz", "", nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("readyz: %d %s", code, body)
	}
	return nil
}

func (s *apiServer) do(ctx context.Context, method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// call does one request and decodes a 2xx answer into out; another status
// fails the test.
func (s *apiServer) call(t *testing.T, method, path string, in, out any) {
	t.Helper()
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	code, resp, err := s.do(t.Context(), method, path, "application/json", body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if code/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, code, resp)
	}
	if out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// resource finds the REST resource of an object's kind through discovery.
func (s *apiServer) resource(t *testing.T, o object) apiResource {
	t.Helper()
	gv, _ := o["apiVersion"].(string)
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ok := s.resources[gv]
	if !ok {
		path := "/apis/" + gv
		if gv == "v1" {
			path = "/api/v1"
		}
		var list struct{ Resources []apiResource }
		s.call(t, http.MethodGet, path, nil, &list)
		rs = list.Resources
		s.resources[gv] = rs
	}
	for _, r := range rs {
		if r.Kind == o.kind() && !strings.Contains(r.Name, "/") {
			return r
		}
	}
	t.Fatalf("the API server serves no %s in %s", o.kind(), gv)
	return apiResource{}
}

// objectPath is the URL path of o.
func (s *apiServer) objectPath(t *testing.T, o object) string {
	t.Helper()
	r := s.resource(t, o)
	gv, _ := o["apiVersion"].(string)
	p := "/apis/" + gv
	if gv == "v1" {
		p = "/api/v1"
	}
	if r.Namespaced {
		ns := o.namespace()
		if ns == "" {
			t.Fatalf("%s: a namespaced kind without a namespace", o)
		}
		p += "/namespaces/" + ns
	} else if o.namespace() != "" {
		t.Fatalf("%s: a cluster-scoped kind with a namespace", o)
	}
	return p + "/" + r.Name + "/" + o.name()
}

// apply sends o as a server-side apply with strict field validation, for
// real or as a dry run; it returns the status code and the answer.
func (s *apiServer) apply(t *testing.T, o object, dryRun bool) (int, []byte) {
	t.Helper()
	body, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	q := url.Values{"fieldManager": {"credbroker-deploy-test"}, "fieldValidation": {"Strict"}, "force": {"true"}}
	if dryRun {
		q.Set("dryRun", "All")
	}
	code, resp, err := s.do(t.Context(), http.MethodPatch, s.objectPath(t, o)+"?"+q.Encode(), "application/apply-patch+yaml", body)
	if err != nil {
		t.Fatalf("apply %s: %v", o, err)
	}
	return code, resp
}

// installCRDs applies the CRDs in testdata/crds and waits until each is
// Established, by watching it.
func (s *apiServer) installCRDs(t *testing.T) {
	t.Helper()
	files, _ := filepath.Glob("testdata/crds/*.yaml")
	if len(files) != 4 {
		t.Fatalf("%d CRD files in testdata/crds, want 4", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		o := decodeYAML(t, b)
		if code, resp := s.apply(t, o, false); code/100 != 2 {
			t.Fatalf("install %s: %d %s", f, code, resp)
		}
		s.waitEstablished(t, o.name())
	}
}

// waitEstablished watches the CRD until its Established condition is True.
func (s *apiServer) waitEstablished(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
		s.URL+"/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true&fieldSelector=metadata.name%3D"+name, nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev struct {
			Object struct {
				Status struct {
					Conditions []struct{ Type, Status string }
				}
			}
		}
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("CRD %s did not become Established: %v", name, err)
		}
		for _, c := range ev.Object.Status.Conditions {
			if c.Type == "Established" && c.Status == "True" {
				// Discovery of the new group may lag its establishment.
				s.mu.Lock()
				clear(s.resources)
				s.mu.Unlock()
				return
			}
		}
	}
}

func decodeYAML(t *testing.T, b []byte) object {
	t.Helper()
	objs := decodeAll(t, b)
	if len(objs) != 1 {
		t.Fatalf("%d YAML documents, want 1", len(objs))
	}
	return objs[0]
}

// TestOnKubernetesAPIServer starts a real kube-apiserver and proves the
// manifests and node attestation on it.
func TestOnKubernetesAPIServer(t *testing.T) {
	s := startAPIServer(t)
	t.Run("every rendered object passes server-side dry run", func(t *testing.T) { testDryRun(t, s) })
	t.Run("PSAT node attestation", func(t *testing.T) { testPSAT(t, s) })
}

// testDryRun installs the CRDs the overlays use, creates the namespaces they
// install into, and applies every other rendered object with dryRun=All and
// strict field validation: the API server's own validation (and its
// admission, Pod Security "restricted" in credbroker-system included)
// decides. A misspelt field is refused, so the check has teeth.
func testDryRun(t *testing.T, s *apiServer) {
	s.installCRDs(t)
	all := rendered(t)
	for _, name := range names(all) {
		for _, o := range all[name] {
			if o.kind() == "Namespace" {
				if code, resp := s.apply(t, o, false); code/100 != 2 {
					t.Fatalf("%s: create %s: %d %s", name, o, code, resp)
				}
			}
		}
	}
	for _, name := range names(all) {
		for _, o := range all[name] {
			if o.kind() == "Namespace" {
				continue
			}
			if code, resp := s.apply(t, o, true); code/100 != 2 {
				t.Errorf("%s: %s refused: %d %s", name, o, code, resp)
			}
		}
	}
	// Teeth: a misspelt field of the StatefulSet, and a broker running as
	// root in the restricted namespace, are refused.
	sts := find(all["single"], "StatefulSet")[0]
	typo := deepCopy(t, sts)
	get(typo, "spec", "template", "spec").(map[string]any)["securityContxt"] = map[string]any{}
	if code, resp := s.apply(t, typo, true); code/100 == 2 || !strings.Contains(string(resp), "securityContxt") {
		t.Errorf("a misspelt field: %d %s, want a refusal naming it", code, resp)
	}
	root := deepCopy(t, sts)
	c := list(get(root, "spec", "template", "spec", "containers"))[0].(map[string]any)
	c["securityContext"].(map[string]any)["runAsUser"] = 0
	c["securityContext"].(map[string]any)["runAsNonRoot"] = false
	// A StatefulSet's pods are checked by Pod Security when created; a Pod
	// with the same spec is refused at once (its ServiceAccount must exist
	// for admission to get that far).
	for _, sa := range find(all["single"], "ServiceAccount") {
		if code, resp := s.apply(t, sa, false); code/100 != 2 {
			t.Fatalf("create %s: %d %s", sa, code, resp)
		}
	}
	pod := object{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "root-broker", "namespace": "credbroker-system"},
		"spec": get(root, "spec", "template", "spec")}
	delete(pod["spec"].(map[string]any), "volumes")
	delete(c, "volumeMounts")
	if code, resp := s.apply(t, pod, true); code != http.StatusForbidden || !strings.Contains(string(resp), "restricted") {
		t.Errorf("a root pod in credbroker-system: %d %s, want Pod Security's refusal", code, resp)
	}
}

func deepCopy(t *testing.T, o object) object {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var out object
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// testPSAT: a node agent's token minted by the API server's TokenRequest API
// for a Pod bound to a Node, verified by the broker against that API
// server's issuer discovery document and JWKS (fetched over https, trusted
// through SSL_CERT_FILE), is answered with the node's SVID; a token for
// another audience is refused.
func testPSAT(t *testing.T, s *apiServer) {
	const ns, sa, nodeName = "credbroker-system", "credbroker-node-agent", "ip-10-0-1-23.ec2.internal"
	// What an operator does so that relying parties can read the issuer's
	// keys without credentials.
	s.call(t, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
		"metadata": map[string]any{"name": "service-account-issuer-discovery-unauthenticated"},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:service-account-issuer-discovery"},
		"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}},
	}, nil)
	s.waitAnonymousDiscovery(t)
	// The namespace exists when the dry run ran first (created from the overlay).
	nsBody, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}})
	if code, resp, err := s.do(t.Context(), http.MethodPost, "/api/v1/namespaces", "application/json", nsBody); err != nil || (code/100 != 2 && code != http.StatusConflict) {
		t.Fatalf("create namespace %s: %d %s %v", ns, code, resp, err)
	}
	s.call(t, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{
		"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": sa}}, nil)
	s.call(t, http.MethodPost, "/api/v1/nodes", map[string]any{
		"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": nodeName}}, nil)
	var pod struct{ Metadata struct{ UID string } }
	s.call(t, http.MethodPost, "/api/v1/namespaces/"+ns+"/pods", map[string]any{
		"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "node-agent-x7k2p"},
		"spec": map[string]any{
			"nodeName": nodeName, "serviceAccountName": sa, "automountServiceAccountToken": false,
			"securityContext": map[string]any{"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": map[string]any{"type": "RuntimeDefault"}},
			"containers": []any{map[string]any{
				"name": "node-agent", "image": "ghcr.io/credbroker/credbroker:v0.1.0",
				"securityContext": map[string]any{"allowPrivilegeEscalation": false, "capabilities": map[string]any{"drop": []any{"ALL"}}},
			}},
		},
	}, &pod)
	tokenFor := func(audience string) string {
		var tr struct{ Status struct{ Token string } }
		s.call(t, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa+"/token", map[string]any{
			"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
			"spec": map[string]any{"audiences": []string{audience}, "expirationSeconds": 600,
				"boundObjectRef": map[string]any{"apiVersion": "v1", "kind": "Pod", "name": "node-agent-x7k2p", "uid": pod.Metadata.UID}},
		}, &tr)
		if tr.Status.Token == "" {
			t.Fatal("TokenRequest returned no token")
		}
		f := filepath.Join(t.TempDir(), "token")
		os.WriteFile(f, []byte(tr.Status.Token), 0o600)
		return f
	}

	dir := t.TempDir()
	cfg := filepath.Join(dir, "credbroker.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`trust_domain: dev.credbroker.test
admin:
  spiffe_ids: [spiffe://dev.credbroker.test/credbroker/admin]
issuers:
  local: {type: jwt}
profiles:
  node-token: {issuer: local, max_ttl: 15m, cluster: required}
node_attestation:
  svid_ttl: 30m
  k8s_psat:
    clusters:
      capi-team-a/alpha:
        issuer: %s
        service_accounts: ["%s:%s"]
policy:
  - id: spiffe://dev.credbroker.test/capi/cluster/*/*/node/*
    profiles: [node-token]
    clusters: ["*"]
`, s.URL, ns, sa)), 0o600)
	// The broker trusts the API server's CA for discovery as it would a
	// workload cluster's issuer with a private CA.
	b := startBroker(t, filepath.Join(dir, "data"), []string{"SSL_CERT_FILE=" + s.CAFile}, "--config", cfg)
	bundle := filepath.Join(dir, "data", "dev", "controller", "bundle.pem")
	node := func(token string) (*exec.Cmd, string, []byte, error) {
		svidDir := filepath.Join(t.TempDir(), "svid")
		cmd := exec.Command(filepath.Join(binDir, "credbroker-sidecar"), "node", "--once", "--broker", b.grpc,
			"--trust-domain", "dev.credbroker.test", "--bundle", bundle, "--svid-dir", svidDir,
			"--psat-token-file", token, "--cluster", "capi-team-a/alpha")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
		out, err := cmd.CombinedOutput()
		return cmd, svidDir, out, err
	}
	if _, _, out, err := node(tokenFor("kubernetes")); err == nil {
		t.Errorf("a token for another audience attested:\n%s", out)
	}
	_, svidDir, out, err := node(tokenFor("credbroker"))
	if err != nil {
		t.Fatalf("node --once with the API server's token: %v\n%s\nbroker:\n%s", err, out, b.stderr())
	}
	svid, _, err := svidfile.Load(svidDir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://dev.credbroker.test/capi/cluster/capi-team-a/alpha/node/" + nodeName; svid.ID.String() != want {
		t.Fatalf("node SVID %s, want %s", svid.ID, want)
	}
}

// waitAnonymousDiscovery waits until the API server's authorizer (RBAC, fed
// by an informer) lets anonymous callers read the issuer's JWKS, asking it
// with SubjectAccessReviews: the broker's first key fetch must not race the
// binding, or its failure would hold the keys back for a minute.
func (s *apiServer) waitAnonymousDiscovery(t *testing.T) {
	t.Helper()
	review := map[string]any{
		"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
		"spec": map[string]any{"user": "system:anonymous", "groups": []string{"system:unauthenticated"},
			"nonResourceAttributes": map[string]any{"path": "/openid/v1/jwks", "verb": "get"}},
	}
	wait := 10 * time.Millisecond
	deadline := time.Now().Add(time.Minute)
	for {
		var r struct{ Status struct{ Allowed bool } }
		s.call(t, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", review, &r)
		if r.Status.Allowed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("anonymous callers still may not read the JWKS a minute after the binding")
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// broker is a running `credbroker serve --dev --config ...`.
type broker struct {
	grpc string
	out  *bytes.Buffer
	mu   *sync.Mutex
}

func (b broker) stderr() string { b.mu.Lock(); defer b.mu.Unlock(); return b.out.String() }

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var servingRE = regexp.MustCompile(`msg=serving grpc=(\S+)`)

// startBroker starts the broker in dev mode (its dev CA and trust bundle)
// with the file's issuers, profiles, policy and node attestation, and waits
// for its "serving" line. It is stopped with SIGTERM when the test ends.
func startBroker(t *testing.T, dataDir string, env []string, args ...string) broker {
	t.Helper()
	b := broker{out: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd := exec.Command(filepath.Join(binDir, "credbroker"), append([]string{"serve", "--dev", "--data-dir", dataDir,
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dataDir}, env...)
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(lockedWriter{b.mu, b.out}, pw)
	cmd.Stdout = lockedWriter{b.mu, b.out}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); pw.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Error("broker did not stop within 30s")
		}
	})
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
			b.grpc = m[1]
			go io.Copy(io.Discard, pr)
			return b
		}
	}
	t.Fatalf("broker exited before serving:\n%s", b.stderr())
	return b
}
