// Package e2e drives the real binaries the way an operator does: it builds
// them, starts `credbroker serve --dev` on loopback, requests a credential
// with credbroker-credential-process, verifies it against the served JWKS,
// and inspects and verifies the audit trail with credbrokerctl.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/test/testproc"
)

var binDir string

func TestMain(m *testing.M) {
	testproc.MainWithBinaries(m, &binDir, "github.com/credbroker/credbroker/cmd/...")
}

// lockedBuffer collects a process's output while it runs; waitFor blocks
// until a line appears, woken by each write (no polling).
type lockedBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits up to timeout for the output to contain s.
func (l *lockedBuffer) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		if strings.Contains(l.b.String(), s) {
			l.mu.Unlock()
			return
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%q did not appear within %v in:\n%s", s, timeout, l.String())
		}
	}
}

// broker is a running `credbroker serve --dev`.
type broker struct {
	cmd            *exec.Cmd
	dataDir        string
	grpcAddr, http string
	stdout, stderr *lockedBuffer
	done           chan error
}

var servingRE = regexp.MustCompile(`msg=serving grpc=(\S+) http=(\S+)`)

func startBroker(t *testing.T, dataDir string) *broker {
	t.Helper()
	return startBrokerWith(t, dataDir, nil)
}

// startBrokerWith starts `credbroker serve --dev` with extra arguments and,
// when env is not nil, exactly that environment.
func startBrokerWith(t *testing.T, dataDir string, env []string, extra ...string) *broker {
	t.Helper()
	b := &broker{dataDir: dataDir, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	b.cmd = exec.Command(filepath.Join(binDir, "credbroker"), append([]string{"serve", "--dev", "--data-dir", dataDir,
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, extra...)...)
	b.cmd.Env = env
	b.cmd.Stdout = b.stdout
	pr, pw := io.Pipe()
	b.cmd.Stderr = io.MultiWriter(b.stderr, pw)
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- b.cmd.Wait(); pw.Close() }()
	t.Cleanup(func() { b.stop(t) })

	// Block on the broker's own "serving" line: no sleeping, no polling.
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
			b.grpcAddr, b.http = m[1], m[2]
			go io.Copy(io.Discard, pr)
			return b
		}
	}
	t.Fatalf("broker exited before serving:\n%s", b.stderr.String())
	return nil
}

// stop sends SIGTERM and waits for a clean exit.
func (b *broker) stop(t *testing.T) {
	t.Helper()
	if b.cmd.ProcessState != nil {
		return
	}
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return
	}
	select {
	case err := <-b.done:
		if err != nil {
			t.Errorf("broker did not exit cleanly on SIGTERM: %v\n%s", err, b.stderr.String())
		}
	case <-time.After(30 * time.Second):
		b.cmd.Process.Kill()
		t.Errorf("broker did not stop within 30s of SIGTERM")
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func runTool(t *testing.T, name string, args ...string) result {
	t.Helper()
	return runToolEnv(t, nil, name, args...)
}

// runToolEnv runs a binary with exactly env (nil: this process's).
func runToolEnv(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

type jsonCredential struct {
	IssuanceID string `json:"issuance_id"`
	Profile    string `json:"profile"`
	Token      string `json:"token"`
	Expiration string `json:"expiration"`
}

func (b *broker) requestToken(t *testing.T, svid string) jsonCredential {
	t.Helper()
	r := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", svid), "--profile", "dev-token", "--format", "json")
	if r.code != 0 {
		t.Fatalf("credential-process exit %d: %s", r.code, r.stderr)
	}
	var c jsonCredential
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatalf("credential-process output %q: %v", r.stdout, err)
	}
	return c
}

func (b *broker) ctl(t *testing.T, args ...string) result {
	t.Helper()
	return runTool(t, "credbrokerctl", append([]string{"--socket", filepath.Join(b.dataDir, "admin.sock")}, args...)...)
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// verifyWithServedJWKS verifies token the way a relying party does: discovery
// document, then its jwks_uri, then the signature and claims.
func verifyWithServedJWKS(t *testing.T, b *broker, token string) jwtlib.MapClaims {
	t.Helper()
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON(t, "http://"+b.http+"/.well-known/openid-configuration", &disc)
	resp, err := http.Get(disc.JWKSURI)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	claims, err := jwt.Verify(raw, token, jwtlib.WithIssuer(disc.Issuer), jwtlib.WithAudience("dev-token"))
	if err != nil {
		t.Fatalf("token does not verify against the served JWKS: %v", err)
	}
	return claims
}

func TestDevModeEndToEnd(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	b := startBroker(t, dataDir)

	cred := b.requestToken(t, "controller")
	claims := verifyWithServedJWKS(t, b, cred.Token)
	if claims["sub"] != "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller" || claims["jti"] != cred.IssuanceID {
		t.Errorf("claims = %v", claims)
	}
	exp, err := time.Parse(time.RFC3339, cred.Expiration)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(exp); d <= 0 || d > 5*time.Minute+time.Minute {
		t.Errorf("expiration %s is not within the profile's 5m default", cred.Expiration)
	}

	// The admin lists it, in JSON and as a table.
	r := b.ctl(t, "-o", "json", "issuances", "list")
	if r.code != 0 || !strings.Contains(r.stdout, cred.IssuanceID) {
		t.Fatalf("issuances list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("issuances list -o json = %q (%v)", r.stdout, err)
	}
	// The local issuer has no upstream side effect: one issued record, no intent.
	if r := b.ctl(t, "issuances", "show", cred.IssuanceID); r.code != 0 || strings.Contains(r.stdout, "intent") || !strings.Contains(r.stdout, "issued") {
		t.Fatalf("issuances show: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A workload the dev policy does not grant is refused, with a clear message and exit code.
	r = runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(dataDir, "dev", "admin"), "--profile", "dev-token")
	if r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("admin as workload: exit %d, stderr %q", r.code, r.stderr)
	}
	// The refusal names its request, and the operator finds it in the audit trail.
	m := regexp.MustCompile(`\(request ([0-9a-f-]{36})\)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("refusal does not name its request: %q", r.stderr)
	}
	if r := b.ctl(t, "issuances", "show", m[1]); r.code != 0 || !strings.Contains(r.stdout, "No credential was issued") || !strings.Contains(r.stdout, "denied") {
		t.Fatalf("issuances show %s: exit %d\n%s%s", m[1], r.code, r.stdout, r.stderr)
	}
	if r := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr); r.code != 2 || !strings.Contains(r.stderr, "an identity is required") {
		t.Fatalf("usage error: exit %d, stderr %q", r.code, r.stderr)
	}

	r = b.ctl(t, "audit", "verify")
	// The issued token (one record: the local issuer needs no intent) and the refusal.
	if r.code != 0 || !strings.Contains(r.stdout, "audit chain OK: 2 records") {
		t.Fatalf("audit verify: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	verifyExportIndependently(t, b.ctl(t, "audit", "export"), 2)

	// The same admin API over mTLS: the demo admin SVID is admitted, a workload SVID is not.
	r = runTool(t, "credbrokerctl", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(dataDir, "dev", "admin"), "audit", "verify")
	if r.code != 0 || !strings.Contains(r.stdout, "audit chain OK: 2 records") {
		t.Fatalf("audit verify over mTLS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runTool(t, "credbrokerctl", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(dataDir, "dev", "controller"), "issuances", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "is not an admin identity") {
		t.Fatalf("workload SVID on the admin API: exit %d, stderr %q", r.code, r.stderr)
	}

	// Graceful stop, then no issued token anywhere on disk or in the logs.
	b.stop(t)
	if !strings.Contains(b.stdout.String(), "credbroker-credential-process --broker "+b.grpcAddr) {
		t.Errorf("dev banner has no copy-paste request line:\n%s", b.stdout.String())
	}
	if !strings.Contains(b.stderr.String(), "msg=stopped") {
		t.Errorf("no clean stop in the log:\n%s", b.stderr.String())
	}
	assertNotOnDiskOrInLogs(t, dataDir, cred.Token, b.stdout.String()+b.stderr.String())

	// With the broker gone, both clients fail with a message that says what to
	// check; credential-process exits 3: a temporary failure, worth retrying.
	r = runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(dataDir, "dev", "controller"), "--profile", "dev-token")
	if r.code != 3 || !strings.Contains(r.stderr, "is the broker running") {
		t.Errorf("broker down: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := b.ctl(t, "audit", "verify"); r.code != 1 || !strings.Contains(r.stderr, "cannot reach broker admin socket") {
		t.Errorf("credbrokerctl with the broker down: exit %d, stderr %q", r.code, r.stderr)
	}
}

func assertNotOnDiskOrInLogs(t *testing.T, dataDir, token, logs string) {
	t.Helper()
	sig := token[strings.LastIndexByte(token, '.')+1:]
	if strings.Contains(logs, sig) {
		t.Fatal("an issued token reached the logs")
	}
	filepath.WalkDir(dataDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&os.ModeSocket != 0 {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(data, []byte(sig)) {
			t.Errorf("an issued token is stored in %s", path)
		}
		return nil
	})
}

func TestAuditTailFollowsNewDecisions(t *testing.T) {
	t.Parallel()
	b := startBroker(t, t.TempDir())
	first := b.requestToken(t, "controller")

	r := b.ctl(t, "audit", "tail", "-n", "1")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 || !strings.Contains(r.stdout, "issued") || !strings.Contains(r.stdout, first.IssuanceID) {
		t.Fatalf("audit tail -n 1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A SIEM-style follower: canonical JSON lines, as they are committed.
	tail := exec.Command(filepath.Join(binDir, "credbrokerctl"), "--socket", filepath.Join(b.dataDir, "admin.sock"), "-o", "json", "audit", "tail", "-n", "1", "-f")
	out, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	tail.Stderr = &stderr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	// The last existing record arrives first: from then on the follower is
	// attached, and everything committed later must reach it.
	if !lines.Scan() || !strings.Contains(lines.Text(), first.IssuanceID) {
		t.Fatalf("follower's first line = %q (%v) %s", lines.Text(), lines.Err(), stderr.String())
	}
	second := b.requestToken(t, "controller")
	for _, want := range []string{`"decision":"issued"`} {
		if !lines.Scan() {
			t.Fatalf("follower ended early: %v %s", lines.Err(), stderr.String())
		}
		if l := lines.Text(); !strings.Contains(l, want) || !strings.Contains(l, second.IssuanceID) {
			t.Fatalf("followed line %s, want %s of issuance %s", l, want, second.IssuanceID)
		}
	}
	tail.Process.Signal(syscall.SIGINT)
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail -f did not exit cleanly on SIGINT: %v %s", err, stderr.String())
	}
}

func TestTamperedAuditRecordIsNamed(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	b := startBroker(t, dataDir)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, b.requestToken(t, "controller").IssuanceID)
	}
	b.stop(t)

	// Rewrite the second issuance's "issued" record (seq 2: the local issuer
	// writes one record per issuance) as an attacker
	// with write access to the file would: change the caller, keep the hash.
	db, err := bbolt.Open(filepath.Join(dataDir, "credbroker.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var tamperedID string
	err = db.Update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte("audit.records"))
		key := binary.BigEndian.AppendUint64(nil, 2)
		var rec map[string]any
		if err := json.Unmarshal(bk.Get(key), &rec); err != nil {
			return err
		}
		if rec["issuance_id"] != ids[1] || rec["decision"] != "issued" {
			return fmt.Errorf("unexpected record at seq 2: %v", rec)
		}
		tamperedID = rec["id"].(string)
		rec["caller"] = "spiffe://dev.credbroker.test/someone-else"
		out, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return bk.Put(key, out)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	b = startBroker(t, dataDir)
	r := b.ctl(t, "audit", "verify")
	if r.code == 0 {
		t.Fatalf("audit verify passed a tampered chain:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "seq 2") || !strings.Contains(r.stdout, tamperedID) {
		t.Fatalf("audit verify does not name the first bad record (seq 2, id %s):\n%s%s", tamperedID, r.stdout, r.stderr)
	}
	r = b.ctl(t, "-o", "json", "audit", "verify")
	var v map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v["ok"] == true || v["first_break"].(map[string]any)["record_id"] != tamperedID {
		t.Fatalf("audit verify -o json = %s (%v)", r.stdout, err)
	}
}

func TestServeRefusesBadStarts(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("trust_domain: example.org\nlisten_adress: 1.2.3.4:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withTLS := filepath.Join(t.TempDir(), "tls.yaml")
	if err := os.WriteFile(withTLS, []byte("trust_domain: example.org\ntls: {svid_file: /x/svid.pem, svid_key_file: /x/key.pem}\n"+
		"issuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: oidc, max_ttl: 1h}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"unknown config key":  {[]string{"serve", "--config", cfg}, "listen_adress"},
		"no config":           {[]string{"serve"}, "--config FILE"},
		"dev with tls config": {[]string{"serve", "--dev", "--config", withTLS}, "--dev provides the broker's identity"},
		"missing config file": {[]string{"serve", "--config", "/nonexistent/x.yaml"}, "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			r := runTool(t, "credbroker", tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q, want it to mention %q", r.code, r.stderr, tc.want)
			}
		})
	}
}

func TestCheckConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("trust_domain: example.org\nissuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: oidc, max_ttl: 1h}}\n"), 0o600)
	if r := runTool(t, "credbroker", "check-config", good); r.code != 0 || !strings.Contains(r.stdout, "configuration OK") {
		t.Fatalf("good config: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("trust_domain: example.org\nissuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: nope, max_ttl: 1h}}\npolicy: [{id: \"spiffe://example.org/x\", profiles: [q]}]\n"), 0o600)
	r := runTool(t, "credbroker", "check-config", bad)
	if r.code == 0 || !strings.Contains(r.stderr, `issuer "nope"`) || !strings.Contains(r.stderr, `unknown profile "q"`) {
		t.Fatalf("bad config: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestSecondBrokerOnSameDataDirFailsClearly(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	startBroker(t, dataDir)
	r := runTool(t, "credbroker", "serve", "--dev", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, "in use") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// verifyExportIndependently re-checks an `audit export` the way an outside
// tool would, from the documented formula alone:
// hash = hex(SHA-256(prev_hash || line with its hash member emptied)).
func verifyExportIndependently(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("audit export: exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != want {
		t.Fatalf("audit export: %d lines, want %d", len(lines), want)
	}
	prev := ""
	for i, line := range lines {
		var rec struct {
			PrevHash string `json:"prev_hash"`
			Hash     string `json:"hash"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		suffix := `"hash":"` + rec.Hash + `"}`
		if !strings.HasSuffix(line, suffix) {
			t.Fatalf("line %d does not end with its hash member: %s", i, line)
		}
		sum := sha256.Sum256([]byte(rec.PrevHash + strings.TrimSuffix(line, suffix) + `"hash":""}`))
		if hex.EncodeToString(sum[:]) != rec.Hash || rec.PrevHash != prev {
			t.Fatalf("line %d does not verify against the documented formula: %s", i, line)
		}
		prev = rec.Hash
	}
}
