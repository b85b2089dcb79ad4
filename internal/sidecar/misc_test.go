package sidecar

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCheckListen(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:9911": true, "127.0.0.2:0": true, "[::1]:0": true, "127.255.255.254:80": true,
		"0.0.0.0:9911": false, "10.0.0.1:9911": false, "localhost:9911": false, ":9911": false,
		"[::]:0": false, "[::ffff:127.0.0.1]:0": false, "[fe80::1%lo]:0": false, "127.0.0.1": false, "": false,
	} {
		if err := CheckListen(addr); (err == nil) != ok {
			t.Errorf("CheckListen(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]Spec{
		"default=capa":                         {Name: "default", Profile: "capa"},
		"prod=capa-controller@clusters/prod-1": {Name: "prod", Profile: "capa-controller", Cluster: "clusters/prod-1"},
		"p.1=capa@ns/c,ttl=30m":                {Name: "p.1", Profile: "capa", Cluster: "ns/c", TTL: 30 * time.Minute},
		"x=capa,ttl=1h":                        {Name: "x", Profile: "capa", TTL: time.Hour},
	} {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"capa", "=capa", "a b=capa", "x=", "x=@ns/c", "x=capa@", "x=capa@ns", "x=capa@ns/c/d",
		"x=capa,ttl=0", "x=capa,ttl=soon", "x=capa,region=eu", "x/y=capa"} {
		if _, err := ParseSpec(in); err == nil {
			t.Errorf("ParseSpec(%q) succeeded", in)
		}
	}
}

func TestTokenFileCreatedThenReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "token")
	tok, created, err := LoadOrCreateToken(path, 0o600, bytes.NewReader(bytes.Repeat([]byte{7}, TokenBytes)))
	if err != nil || !created {
		t.Fatalf("create: %q %v %v", tok, created, err)
	}
	if len(tok) != 43 || strings.ContainsAny(tok, "+/=") {
		t.Errorf("token %q is not 32 bytes of unpadded base64url", tok)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", fi.Mode(), err)
	}
	again, created, err := LoadOrCreateToken(path, 0o600, bytes.NewReader(nil)) // no randomness needed
	if err != nil || created || again != tok {
		t.Errorf("reuse: %q created=%v %v; want %q", again, created, err, tok)
	}

	shared := filepath.Join(t.TempDir(), "token")
	if _, _, err := LoadOrCreateToken(shared, 0o640, bytes.NewReader(make([]byte, TokenBytes))); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o640 {
		t.Errorf("--token-file-mode 0640 gave %v", fi.Mode().Perm())
	}
	if _, _, err := LoadOrCreateToken(filepath.Join(t.TempDir(), "t"), 0o644, bytes.NewReader(make([]byte, TokenBytes))); err == nil {
		t.Error("world-readable mode accepted")
	}
}

func TestTokenFileRefusesBadContents(t *testing.T) {
	for name, tc := range map[string]struct {
		data string
		mode os.FileMode
	}{
		"empty": {"", 0o600}, "blank": {"  \n", 0o600}, "newline": {"abc\n", 0o600},
		"control": {"a\x01b", 0o600}, "space": {"a b", 0o600}, "world-readable": {"abc", 0o644},
	} {
		path := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(path, []byte(tc.data), tc.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, tc.mode)
		if tok, _, err := LoadOrCreateToken(path, 0o600, bytes.NewReader(make([]byte, TokenBytes))); err == nil {
			t.Errorf("%s: accepted %q", name, tok)
		}
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials")
	f := NewCredentialsFile(path)
	if err := f.Update("b", Credential{AccessKeyID: "AK-B", SecretAccessKey: "SK-B", SessionToken: "ST-B", Expiration: t0}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	if err := f.Update("a", Credential{AccessKeyID: "AK-A", SecretAccessKey: "SK-A", SessionToken: "ST-A\n[evil]", Expiration: t0}); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil || after.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", after.Mode(), err)
	}
	if os.SameFile(before, after) {
		t.Error("file rewritten in place, not replaced atomically")
	}
	got, _ := os.ReadFile(path)
	want := "[a]\n# expires 2030-01-02T03:04:05Z\naws_access_key_id = AK-A\naws_secret_access_key = SK-A\naws_session_token = ST-A[evil]\n\n" +
		"[b]\n# expires 2030-01-02T03:04:05Z\naws_access_key_id = AK-B\naws_secret_access_key = SK-B\naws_session_token = ST-B\n"
	if !strings.HasSuffix(string(got), want) || !strings.HasPrefix(string(got), "#") {
		t.Errorf("content:\n%s\nwant to end with:\n%s", got, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestRunServesAndStops(t *testing.T) {
	b, client := startBroker(t)
	b.give("AKRUN", time.Now().Add(time.Hour))
	credFile := filepath.Join(t.TempDir(), "credentials")
	ctx, cancel := context.WithCancel(t.Context())
	addrs := make(chan net.Addr, 1)
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			Upstream: client, Credentials: []Spec{{Name: "default", Profile: "capa"}},
			Listen: "127.0.0.1:0", Token: testToken, CredentialsFile: credFile,
			Logger: logTo(&logs), Listening: func(a net.Addr) { addrs <- a },
		})
	}()
	var addr net.Addr
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("Run returned %v", err)
	case <-time.After(watchdog):
		t.Fatal("not serving")
	}
	code, _, body := get(t, "http://"+addr.String()+CredentialsPath+"default", testToken)
	if code != http.StatusOK || !strings.Contains(body, "AKRUN") {
		t.Errorf("GET = %d %s", code, body)
	}
	if data, err := os.ReadFile(credFile); err != nil || !strings.Contains(string(data), "[default]") {
		t.Errorf("credentials file: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v", err)
	}
	if !strings.Contains(logs.String(), "msg=serving addr="+addr.String()) {
		t.Errorf("no serving line in logs:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "secret-AKRUN") || strings.Contains(logs.String(), "token-AKRUN") {
		t.Errorf("logs leak a secret:\n%s", logs.String())
	}
}

func TestRunStartup(t *testing.T) {
	b, client := startBroker(t)
	opts := Options{Upstream: client, Credentials: []Spec{{Name: "default", Profile: "capa"}}, Listen: "127.0.0.1:0", Token: testToken, Logger: logTo(new(bytes.Buffer))}

	b.fail(status.Error(codes.PermissionDenied, "no policy rule matches"))
	if err := Run(t.Context(), opts); err == nil || !strings.Contains(err.Error(), "permission denied: no policy rule matches") {
		t.Errorf("refused at start: Run = %v", err)
	}

	// Merely unavailable: serve (503 meanwhile) and keep trying.
	b.fail(status.Error(codes.Unavailable, "down"))
	ctx, cancel := context.WithCancel(t.Context())
	addrs := make(chan net.Addr, 1)
	opts.Listening = func(a net.Addr) { addrs <- a }
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	select {
	case a := <-addrs:
		if code, _, _ := get(t, "http://"+a.String()+"/healthz"); code != http.StatusServiceUnavailable {
			t.Errorf("healthz = %d, want 503", code)
		}
	case err := <-done:
		t.Fatalf("Run gave up on an unavailable broker: %v", err)
	}
	cancel()
	<-done

	// Revoked: serve the refusal (403 naming the revocation) and keep asking.
	b.fail(revokedStatus("r1"))
	ctx, cancel = context.WithCancel(t.Context())
	go func() { done <- Run(ctx, opts) }()
	select {
	case a := <-addrs:
		req, _ := http.NewRequest(http.MethodGet, "http://"+a.String()+CredentialsPath+"default", nil)
		req.Header.Set("Authorization", testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "CredentialRevoked") || !strings.Contains(string(body), "r1") {
			t.Errorf("revoked at start: HTTP %d %s", resp.StatusCode, body)
		}
	case err := <-done:
		t.Fatalf("Run gave up on a revoked identity: %v", err)
	}
	cancel()
	<-done

	opts.Listen = "0.0.0.0:0"
	if err := Run(t.Context(), opts); err == nil {
		t.Error("Run listened on a non-loopback address")
	}
}

func TestCheckMetricsListen(t *testing.T) {
	const listen = "127.0.0.1:9911"
	for addr, ok := range map[string]bool{
		":9912": true, "0.0.0.0:9912": true, "[::]:9912": true, "10.0.0.1:9912": true, "127.0.0.1:9912": true,
		"127.0.0.2:9911": true, "[::1]:9911": true, "127.0.0.1:0": true,
		// the credentials listener's own port
		"127.0.0.1:9911": false, ":9911": false, "0.0.0.0:9911": false, "[::]:9911": false, "[::ffff:127.0.0.1]:9911": false, "127.0.0.1:09911": false,
		// not an IP literal and a port number
		"localhost:9912": false, "[fe80::1%eth0]:9912": false, ":metrics": false, ":65536": false, "9912": false, "": false,
	} {
		if err := CheckMetricsListen(addr, listen); (err == nil) != ok {
			t.Errorf("CheckMetricsListen(%q, %q) = %v, want ok=%v", addr, listen, err, ok)
		}
	}
	if err := CheckMetricsListen("127.0.0.1:0", "127.0.0.1:0"); err != nil {
		t.Errorf("two picked ports refused: %v", err)
	}
	if err := CheckMetricsListen(":9911", listen); err == nil || !strings.Contains(err.Error(), "a port of its own") {
		t.Errorf("same port: %v, want the reason", err)
	}
}

// TestRunMetricsListener: with MetricsListen, a second server answers GET
// /metrics (the expiry gauge the CredbrokerSidecarCredentialNearExpiry alert
// reads) and GET /healthz, from before the first fetch on, and nothing else:
// the credentials endpoint is not there even with the right token, and its
// /healthz names a missing credential without the broker's reason.
func TestRunMetricsListener(t *testing.T) {
	b, client := startBroker(t)
	clk := newFakeClock(t0)
	b.give("AKMET", t0.Add(time.Hour))
	gate := make(chan struct{})
	b.mu.Lock()
	b.gate = gate
	b.mu.Unlock()
	metricsAddrs, addrs := make(chan net.Addr, 1), make(chan net.Addr, 1)
	opts := Options{
		Upstream: client, Credentials: []Spec{{Name: "default", Profile: "capa"}}, NoWatch: true, Clock: clk,
		Listen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", Token: testToken, Logger: logTo(new(bytes.Buffer)),
		Listening: func(a net.Addr) { addrs <- a }, MetricsListening: func(a net.Addr) { metricsAddrs <- a },
	}
	start := func() (done chan error, stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done = make(chan error, 1)
		go func() { done <- Run(ctx, opts) }()
		return done, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run after cancel = %v", err)
			}
		}
	}
	wait := func(ch chan net.Addr, done chan error) string {
		t.Helper()
		select {
		case a := <-ch:
			return "http://" + a.String()
		case err := <-done:
			t.Fatalf("Run returned %v", err)
		case <-time.After(watchdog):
			t.Fatal("not serving")
		}
		return ""
	}
	const gauge = `credbroker_sidecar_credential_expiry_seconds{credential="default"} `

	done, stop := start()
	mon := wait(metricsAddrs, done)
	// The first fetch waits at the broker: metrics and health answer already.
	b.waitCall(t)
	if code, _, body := get(t, mon+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "default") {
		t.Errorf("healthz before the first credential = %d %q, want 503 naming it", code, body)
	}
	if code, _, body := get(t, mon+"/metrics"); code != http.StatusOK || !strings.Contains(body, gauge+"0\n") {
		t.Errorf("metrics before the first credential = %d, want %s0 in:\n%s", code, gauge, body)
	}
	close(gate)
	api := wait(addrs, done)
	if code, _, body := get(t, mon+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("healthz = %d %q, want 200", code, body)
	}
	if code, _, body := get(t, mon+"/metrics"); code != http.StatusOK || !strings.Contains(body, gauge+"3600\n") ||
		!strings.Contains(body, `credbroker_sidecar_refreshes_total{credential="default",result="success"} 1`) {
		t.Errorf("metrics = %d, want %s3600 and one success in:\n%s", code, gauge, body)
	}
	for _, path := range []string{CredentialsPath + "default", CredentialsPath, "/", "/metricsx", "/healthz/"} {
		if code, _, body := get(t, mon+path, testToken); code != http.StatusNotFound || strings.Contains(body, "AKMET") {
			t.Errorf("GET %s with the token on the metrics listener = %d %q, want 404", path, code, body)
		}
	}
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(method, mon+"/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s /metrics = %d, want 404", method, resp.StatusCode)
		}
	}
	// Headers are bounded (16 KiB, plus the 4 KiB net/http allows over it).
	if code, _, _ := get(t, mon+"/metrics", strings.Repeat("x", 32<<10)); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("32 KiB of headers: HTTP %d, want 431", code)
	}
	if code, _, body := get(t, api+CredentialsPath+"default", testToken); code != http.StatusOK || !strings.Contains(body, "AKMET") {
		t.Errorf("the loopback endpoint = %d %q, want the credential", code, body)
	}
	stop()

	// The broker refuses for now: both say 503; only loopback says why.
	b.fail(status.Error(codes.Unavailable, "broker down for maintenance"))
	done, stop = start()
	mon = wait(metricsAddrs, done)
	api = wait(addrs, done)
	if code, _, body := get(t, api+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "maintenance") {
		t.Errorf("loopback healthz = %d %q, want 503 with the reason", code, body)
	}
	if code, _, body := get(t, mon+"/healthz"); code != http.StatusServiceUnavailable || body != "no valid credential for default\n" {
		t.Errorf("metrics healthz = %d %q, want 503 naming the credential only", code, body)
	}
	if _, _, body := get(t, mon+"/metrics"); !strings.Contains(body, gauge+"0\n") ||
		!strings.Contains(body, `credbroker_sidecar_refreshes_total{credential="default",result="unavailable"} 1`) {
		t.Errorf("metrics with the broker down, want %s0 and one unavailable in:\n%s", gauge, body)
	}
	stop()

	opts.Listen = "127.0.0.1:9911"
	opts.MetricsListen = ":9911"
	if err := Run(t.Context(), opts); err == nil || !strings.Contains(err.Error(), "a port of its own") {
		t.Errorf("Run with the metrics on the credentials port = %v, want a refusal", err)
	}
}
