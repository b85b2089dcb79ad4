package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
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

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/sidecar"
	"github.com/credbroker/credbroker/internal/svidfile"
	"github.com/credbroker/credbroker/internal/svidsource"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	sidecarServingRE        = regexp.MustCompile(`msg=serving addr=(\S+)`)
	sidecarServingMetricsRE = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)
)

// sidecarProc is a running credbroker-sidecar binary.
type sidecarProc struct {
	cmd              *exec.Cmd
	addr             string
	metricsAddr      string // with --metrics-listen
	token, tokenFile string
	stderr           *lockedBuffer
}

// startSidecar runs credbroker-sidecar with the controller's SVID directory
// for profile capa and cluster A, and waits for its serving line.
func startSidecar(t *testing.T, b *awsBroker, svidDir string, extra ...string) *sidecarProc {
	t.Helper()
	dir := t.TempDir()
	s := &sidecarProc{stderr: &lockedBuffer{}}
	tokenFile := filepath.Join(dir, "token")
	args := append([]string{"--broker", b.grpcAddr, "--svid-dir", svidDir, "--listen", "127.0.0.1:0",
		"--token-file", tokenFile, "--profile", "capa", "--cluster", clusterA}, extra...)
	s.cmd = exec.Command(filepath.Join(binDir, "credbroker-sidecar"), args...)
	s.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	pr, pw := io.Pipe()
	s.cmd.Stderr = io.MultiWriter(s.stderr, pw)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.cmd.Wait(); pw.Close(); close(done) }()
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			t.Errorf("sidecar did not stop on SIGTERM")
		}
	})
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if m := sidecarServingMetricsRE.FindStringSubmatch(sc.Text()); m != nil {
			s.metricsAddr = m[1]
		}
		if m := sidecarServingRE.FindStringSubmatch(sc.Text()); m != nil {
			s.addr = m[1]
			go io.Copy(io.Discard, pr)
			tok, err := os.ReadFile(tokenFile)
			if err != nil {
				t.Fatal(err)
			}
			s.token, s.tokenFile = string(tok), tokenFile
			return s
		}
	}
	t.Fatalf("sidecar exited before serving:\n%s", s.stderr.String())
	return nil
}

func (s *sidecarProc) url() string { return "http://" + s.addr + "/v1/credentials/default" }

type containerCred struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      string
}

// fetch GETs the credentials endpoint with the given Authorization header.
func fetch(t *testing.T, url, auth string) (int, containerCred) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c containerCred
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, c
}

// TestSidecarServesTheSDKAndTheCLI: an unmodified AWS SDK program and the
// AWS CLI get broker credentials through the container-credentials endpoint,
// with nothing but the standard environment variables. The metrics listener
// serves the metrics and health, and no credential even with the token.
func TestSidecarServesTheSDKAndTheCLI(t *testing.T) {
	awsCLIPath(t)
	b := startAWSBroker(t)
	credsFile := filepath.Join(t.TempDir(), "credentials")
	s := startSidecar(t, b, filepath.Join(b.dataDir, "dev", "controller"), "--credentials-file", credsFile, "--metrics-listen", "127.0.0.1:0")

	// The AWS SDK for Go v2, configured only by environment.
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", s.url())
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", s.tokenFile)
	cfg, err := awsconfig.LoadDefaultConfig(context.Background(),
		awsconfig.WithSharedConfigFiles([]string{filepath.Join(t.TempDir(), "none")}),
		awsconfig.WithSharedCredentialsFiles([]string{filepath.Join(t.TempDir(), "none")}),
		awsconfig.WithRegion(b.minio.Region))
	if err != nil {
		t.Fatal(err)
	}
	got, err := cfg.Credentials.Retrieve(context.Background())
	if err != nil {
		t.Fatalf("the SDK's chain through the sidecar: %v", err)
	}
	if code := b.put(t, cfg.Credentials, prefixA); code != "" {
		t.Errorf("SDK on cluster A's prefix: %s", code)
	}
	if code := b.put(t, cfg.Credentials, prefixB); code != "AccessDenied" {
		t.Errorf("SDK on cluster B's prefix: %q, want AccessDenied", code)
	}

	// The AWS CLI (this version reads the token from AWS_CONTAINER_AUTHORIZATION_TOKEN).
	home := t.TempDir()
	cli := &awsCLI{path: awsCLIPath(t), endpoint: b.minio.Endpoint, env: []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home, "AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_DEFAULT_REGION=" + b.minio.Region,
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + s.url(), "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + s.token,
	}}
	local := filepath.Join(home, "bootstrap")
	os.WriteFile(local, []byte("data\n"), 0o600)
	if r := cli.run(t, "s3", "cp", local, "s3://capi/"+prefixA+"from-cli"); r.code != 0 {
		t.Fatalf("aws s3 cp through the sidecar: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := cli.run(t, "s3", "ls", "s3://capi/"+prefixA); r.code != 0 || !strings.Contains(r.stdout, "from-cli") {
		t.Fatalf("aws s3 ls through the sidecar: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := cli.run(t, "s3", "cp", local, "s3://capi/"+prefixB+"from-cli"); r.code == 0 || !strings.Contains(r.stderr, "AccessDenied") {
		t.Fatalf("aws s3 cp to cluster B through the sidecar: exit %d\n%s", r.code, r.stderr)
	}

	// The metrics listener: metrics and health, never a credential.
	if s.metricsAddr == "" {
		t.Fatalf("no msg=\"serving metrics\" line:\n%s", s.stderr.String())
	}
	mon := "http://" + s.metricsAddr
	if code, body := getText(t, mon+"/metrics"); code != http.StatusOK || !strings.Contains(body, `credbroker_sidecar_credential_expiry_seconds{credential="default"}`) {
		t.Errorf("metrics listener /metrics: HTTP %d\n%s", code, body)
	}
	if code, body := getText(t, mon+"/healthz"); code != http.StatusOK {
		t.Errorf("metrics listener /healthz: HTTP %d %s", code, body)
	}
	if code, c := fetch(t, mon+sidecar.CredentialsPath+"default", s.token); code != http.StatusNotFound || c.AccessKeyID != "" {
		t.Errorf("a credential from the metrics listener with the token: HTTP %d, want 404", code)
	}

	// Without the token, or with a wrong one, nothing is served.
	if code, _ := fetch(t, s.url(), ""); code != http.StatusUnauthorized {
		t.Errorf("no token: HTTP %d, want 401", code)
	}
	if code, _ := fetch(t, s.url(), "wrong"); code != http.StatusForbidden {
		t.Errorf("wrong token: HTTP %d, want 403", code)
	}
	// The shared-credentials file for tools that only read files: owner-only, current.
	fi, err := os.Stat(credsFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, %v", fi, err)
	}
	if data, _ := os.ReadFile(credsFile); !strings.Contains(string(data), "[default]") || !strings.Contains(string(data), got.AccessKeyID) {
		t.Errorf("credentials file does not hold the served credential:\n%s", data)
	}
	if strings.Contains(s.stderr.String(), got.SecretAccessKey) || strings.Contains(s.stderr.String(), got.SessionToken) {
		t.Error("the sidecar logged a secret")
	}
}

func TestSidecarRefusesANonLoopbackListener(t *testing.T) {
	t.Parallel()
	r := runTool(t, "credbroker-sidecar", "--broker", "127.0.0.1:1", "--svid-dir", t.TempDir(), "--listen", "0.0.0.0:9911",
		"--token-file", filepath.Join(t.TempDir(), "t"), "--profile", "capa")
	if r.code != 2 || !strings.Contains(r.stderr, "loopback") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// stepClock is the sidecar's clock in the test: the background loop's waits
// fire only when the test moves time to them, and every new wait is
// signalled, so the test knows when the loop has finished an attempt.
type stepClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []stepWaiter
	waiting chan struct{}
}

type stepWaiter struct {
	at time.Time
	ch chan time.Time
}

func newStepClock() *stepClock {
	return &stepClock{now: time.Now(), waiting: make(chan struct{}, 64)}
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, stepWaiter{c.now.Add(d), ch})
	c.mu.Unlock()
	c.waiting <- struct{}{}
	return ch
}

// fireNext moves time to the earliest pending wait and fires it.
func (c *stepClock) fireNext(t *testing.T) time.Time {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) == 0 {
		t.Fatal("the sidecar is not waiting on the clock")
	}
	first := 0
	for i, w := range c.waiters {
		if w.at.Before(c.waiters[first].at) {
			first = i
		}
	}
	w := c.waiters[first]
	c.waiters = append(c.waiters[:first], c.waiters[first+1:]...)
	if w.at.After(c.now) {
		c.now = w.at
	}
	w.ch <- c.now
	return c.now
}

func (c *stepClock) awaitWait(t *testing.T) {
	t.Helper()
	select {
	case <-c.waiting:
	case <-time.After(30 * time.Second):
		t.Fatal("the sidecar's refresh loop never went back to waiting")
	}
}

// TestSidecarRidesOutABrokerOutage runs the sidecar with a clock the test
// moves, against the real broker binary: the broker stops, the refresh due
// at ~80 % fails and the still-valid credential keeps being served; the
// broker comes back and the next attempt serves a fresh one, no restart.
func TestSidecarRidesOutABrokerOutage(t *testing.T) {
	t.Parallel()
	b := startAWSBroker(t)
	src, err := svidsource.FromDir(filepath.Join(b.dataDir, "dev", "controller"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	clock := newStepClock()
	listening := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sidecar.Run(ctx, sidecar.Options{
			Broker: b.grpcAddr, SVIDs: src, Bundles: src, Token: "tok",
			Credentials: []sidecar.Spec{{Name: "default", Profile: "capa", Cluster: clusterA}},
			Listen:      "127.0.0.1:0", Clock: clock, Listening: func(a net.Addr) { listening <- a },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sidecar.Run: %v", err)
		}
	}()
	url := "http://" + (<-listening).String() + "/v1/credentials/default"
	clock.awaitWait(t) // first credential held, refresh scheduled
	code, first := fetch(t, url, "tok")
	if code != http.StatusOK {
		t.Fatalf("HTTP %d", code)
	}

	grpcAddr := b.grpcAddr
	b.stop(t)
	due := clock.fireNext(t) // the refresh at ~80 % of the lifetime
	clock.awaitWait(t)       // ...failed, and a retry is scheduled
	if exp, _ := time.Parse(time.RFC3339, first.Expiration); !due.Before(exp) || due.Before(exp.Add(-5*time.Minute)) {
		t.Errorf("refresh at %v for a credential expiring %v: want within its last fifth", due, exp)
	}
	code, during := fetch(t, url, "tok")
	if code != http.StatusOK || during.AccessKeyID != first.AccessKeyID {
		t.Fatalf("during the outage: HTTP %d, key %s; want the still-valid %s", code, during.AccessKeyID, first.AccessKeyID)
	}

	// The broker comes back on the same address; the retry gets a fresh credential.
	b.broker = startBrokerWith(t, b.dataDir, b.cmd.Env, "--config", b.cmd.Args[len(b.cmd.Args)-1], "--listen", grpcAddr)
	clock.fireNext(t)
	clock.awaitWait(t)
	code, after := fetch(t, url, "tok")
	if code != http.StatusOK || after.AccessKeyID == first.AccessKeyID {
		t.Fatalf("after the broker is back: HTTP %d, key %s (first %s)", code, after.AccessKeyID, first.AccessKeyID)
	}
}

// TestSidecarFollowsSVIDRotationOnDisk: new SVID files in the directory are
// used for the next broker call without a restart.
func TestSidecarFollowsSVIDRotationOnDisk(t *testing.T) {
	t.Parallel()
	b := startAWSBroker(t)
	svidDir := filepath.Join(t.TempDir(), "svid")
	authority, err := ca.Load(filepath.Join(b.dataDir, "dev", "ca"))
	if err != nil {
		t.Fatal(err)
	}
	mint := func(path string) {
		id := spiffeid.RequireFromString("spiffe://dev.credbroker.test" + path)
		svid, err := authority.MintX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := svidfile.Write(svidDir, svid, authority.X509Bundle()); err != nil {
			t.Fatal(err)
		}
	}
	mint("/ns/capi-system/sa/demo-controller")
	s := startSidecar(t, b, svidDir, "--refresh-at", "0.0001")

	// Follow the audit trail as it is written; the sidecar refreshes about
	// every second (--refresh-at), and the broker records each call's caller.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tail := exec.CommandContext(ctx, filepath.Join(binDir, "credbrokerctl"), "--socket", filepath.Join(b.dataDir, "admin.sock"), "audit", "tail", "-f", "-n", "0")
	out, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); tail.Wait() }()
	lines := bufio.NewScanner(out)
	await := func(caller string) {
		t.Helper()
		for lines.Scan() {
			if strings.Contains(lines.Text(), "caller="+caller) {
				return
			}
		}
		t.Fatalf("no broker call from %s before the deadline\nsidecar:\n%s", caller, s.stderr.String())
	}
	await("spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller")

	// Rotate the files to another identity: the next call presents it (and,
	// since no policy grants it, is refused and recorded as such).
	mint("/ns/capi-system/sa/rotated")
	await("spiffe://dev.credbroker.test/ns/capi-system/sa/rotated")
}
