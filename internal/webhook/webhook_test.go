package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testKey = "0123456789abcdef-test-secret"

// got is one request a receiver saw.
type got struct {
	sig, id string
	body    []byte
}

// receiver is a real HTTP server on loopback answering every request with
// status (or running hold first, when set).
type receiver struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []got
	seen chan got
}

func newReceiver(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{seen: make(chan got, 100)}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		g := got{sig: r.Header.Get(webhook.SignatureHeader), id: r.Header.Get(webhook.DeliveryHeader), body: b}
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, g)
		rc.mu.Unlock()
		rc.seen <- g
		handle(w, r)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []got {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]got(nil), rc.reqs...)
}

func status(code int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func target(url string) *webhook.Target {
	return &webhook.Target{Name: "ops", URL: url, Secret: webhook.NewSecret([]byte(testKey))}
}

func dropped(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	return counter(t, reg, webhook.MetricDropped, map[string]string{"webhook": "ops", "reason": reason})
}

// counter reads a counter from the registry by its exported name, so the
// test fails if a metric is renamed.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func closeSender(t *testing.T, s *webhook.Sender) {
	t.Helper()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestDeliveryIsSignedAndVerifies(t *testing.T) {
	rc := newReceiver(t, status(http.StatusNoContent))
	reg := prometheus.NewRegistry()
	now := time.Unix(1_800_000_000, 0)
	s := webhook.New(webhook.Options{Registerer: reg, Now: func() time.Time { return now }})
	if err := s.Send(target(rc.URL), map[string]string{"rule": "mass_issuance"}); err != nil {
		t.Fatal(err)
	}
	closeSender(t, s)

	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("receiver saw %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if string(r.body) != `{"rule":"mass_issuance"}` {
		t.Errorf("body %s", r.body)
	}
	if r.id == "" {
		t.Error("no delivery id")
	}
	if !strings.HasPrefix(r.sig, "t=1800000000,v1=") {
		t.Errorf("signature header %q", r.sig)
	}
	if err := webhook.Verify([]byte(testKey), r.sig, r.body, now.Add(time.Minute), 0); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	for name, c := range map[string]struct {
		key, sig, body string
		now            time.Time
		want           error
	}{
		"wrong key":     {"another-secret-0123456789", r.sig, string(r.body), now, webhook.ErrBadSignature},
		"edited body":   {testKey, r.sig, `{"rule":"other"}`, now, webhook.ErrBadSignature},
		"replayed late": {testKey, r.sig, string(r.body), now.Add(6 * time.Minute), webhook.ErrStale},
		"from future":   {testKey, r.sig, string(r.body), now.Add(-6 * time.Minute), webhook.ErrStale},
		"no header":     {testKey, "", string(r.body), now, webhook.ErrNoSignature},
		"no v1":         {testKey, "t=1800000000", string(r.body), now, webhook.ErrNoSignature},
		"retimed":       {testKey, strings.Replace(r.sig, "t=1800000000", "t=1800000100", 1), string(r.body), now, webhook.ErrBadSignature},
	} {
		if err := webhook.Verify([]byte(c.key), c.sig, []byte(c.body), c.now, 0); !errors.Is(err, c.want) {
			t.Errorf("%s: Verify = %v, want %v", name, err, c.want)
		}
	}
	// A second signature (secret rotation) is accepted alongside a stale one.
	rotated := r.sig + ",v1=" + strings.Repeat("00", 32)
	if err := webhook.Verify([]byte(testKey), rotated, r.body, now, 0); err != nil {
		t.Errorf("two v1 values: %v", err)
	}
	if got := counter(t, reg, webhook.MetricDelivered, map[string]string{"webhook": "ops"}); got != 1 {
		t.Errorf("%s = %v, want 1", webhook.MetricDelivered, got)
	}
}

// A receiver that hangs holds up neither Send nor its caller: every Send
// returns at once, the queue fills and the excess is dropped and counted.
func TestHangingReceiverNeverBlocksSend(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(http.ResponseWriter, *http.Request) { <-release })
	defer close(release)
	reg := prometheus.NewRegistry()
	s := webhook.New(webhook.Options{Registerer: reg, Workers: 1, QueueSize: 2, Attempts: 1, Timeout: time.Hour})
	tg := target(rc.URL)

	if err := s.Send(tg, 0); err != nil {
		t.Fatal(err)
	}
	<-rc.seen // the one worker is now stuck in the receiver
	const n = 50
	var full int
	for i := 1; i <= n; i++ {
		switch err := s.Send(tg, i); {
		case errors.Is(err, webhook.ErrQueueFull):
			full++
		case err != nil:
			t.Fatal(err)
		}
	}
	if full != n-2 {
		t.Errorf("%d of %d sends found the queue full, want %d (queue of 2)", full, n, n-2)
	}
	if got := dropped(t, reg, webhook.DropQueueFull); got != n-2 {
		t.Errorf("dropped{queue_full} = %v, want %d", got, n-2)
	}

	// Close gives up at its deadline: the stuck attempt is cancelled and the
	// queued and in-flight deliveries are counted as dropped.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Close = %v, want context.Canceled", err)
	}
	if got := dropped(t, reg, webhook.DropClosed); got != 3 {
		t.Errorf("dropped{closed} = %v, want 3 (one in flight, two queued)", got)
	}
	if err := s.Send(tg, 1); !errors.Is(err, webhook.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
}

// A failing receiver is retried after jittered, doubling waits and the
// delivery is dropped after the last attempt.
func TestFailingReceiverRetriedWithBackoffThenDropped(t *testing.T) {
	rc := newReceiver(t, status(http.StatusServiceUnavailable))
	reg := prometheus.NewRegistry()
	var waits []time.Duration
	s := webhook.New(webhook.Options{
		Registerer: reg, Workers: 1, Attempts: 4,
		Backoff: backoff.Policy{Min: time.Second, Max: 3 * time.Second, Rand: func() float64 { return 0.5 }},
		Wait: func(ctx context.Context, d time.Duration) error {
			waits = append(waits, d) // one worker: no race
			return ctx.Err()
		},
	})
	if err := s.Send(target(rc.URL), "x"); err != nil {
		t.Fatal(err)
	}
	closeSender(t, s) // drains: all attempts run

	reqs := rc.requests()
	if len(reqs) != 4 {
		t.Fatalf("receiver saw %d attempts, want 4", len(reqs))
	}
	for _, r := range reqs[1:] {
		if r.id != reqs[0].id {
			t.Errorf("retry carries delivery id %q, first %q", r.id, reqs[0].id)
		}
	}
	want := []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 2250 * time.Millisecond}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Errorf("wait %d = %s, want %s", i+1, waits[i], want[i])
		}
	}
	if got := dropped(t, reg, webhook.DropRetriesExhausted); got != 1 {
		t.Errorf("dropped{retries_exhausted} = %v, want 1", got)
	}
	if got := counter(t, reg, webhook.MetricFailed, map[string]string{"webhook": "ops"}); got != 4 {
		t.Errorf("%s = %v, want 4", webhook.MetricFailed, got)
	}
}

// A refusal (4xx) or a redirect is not retried, and a redirect is never
// followed to carry the signed body elsewhere.
func TestRefusalAndRedirectNotRetriedNorFollowed(t *testing.T) {
	elsewhere := newReceiver(t, status(http.StatusOK))
	for name, handle := range map[string]func(http.ResponseWriter, *http.Request){
		"400": status(http.StatusBadRequest),
		"redirect": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL, http.StatusTemporaryRedirect)
		},
	} {
		t.Run(name, func(t *testing.T) {
			rc := newReceiver(t, handle)
			reg := prometheus.NewRegistry()
			s := webhook.New(webhook.Options{Registerer: reg, Wait: func(context.Context, time.Duration) error {
				t.Error("a refused delivery was retried")
				return nil
			}})
			if err := s.Send(target(rc.URL), "x"); err != nil {
				t.Fatal(err)
			}
			closeSender(t, s)
			if n := len(rc.requests()); n != 1 {
				t.Errorf("%d attempts, want 1", n)
			}
			if got := dropped(t, reg, webhook.DropRejected); got != 1 {
				t.Errorf("dropped{rejected} = %v, want 1", got)
			}
		})
	}
	if n := len(elsewhere.requests()); n != 0 {
		t.Errorf("redirect target received %d requests", n)
	}
}

// Neither the secret nor the URL (which may carry a token) reaches the log,
// whatever happens to a delivery.
func TestSecretAndURLNeverLogged(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rc := newReceiver(t, status(http.StatusInternalServerError))
	tg := target(rc.URL + "/hooks/T0KEN-in-path")
	dead := target("http://127.0.0.1:1/hooks/T0KEN-in-path")
	s := webhook.New(webhook.Options{Log: log, Attempts: 2, Wait: func(context.Context, time.Duration) error { return nil }})
	_ = s.Send(tg, "x")
	_ = s.Send(dead, "x")
	closeSender(t, s)
	log.Info("target", "target", tg, "secret", tg.Secret)
	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, leak := range []string{testKey, "T0KEN", "127.0.0.1"} {
		if strings.Contains(logs.String(), leak) {
			t.Errorf("log contains %q:\n%s", leak, logs.String())
		}
	}
	if b, _ := json.Marshal(tg); strings.Contains(string(b), testKey) {
		t.Errorf("JSON of a target carries the secret: %s", b)
	}
}

func TestSendRefusesOversizeAndUnencodable(t *testing.T) {
	s := webhook.New(webhook.Options{MaxBody: 16})
	defer closeSender(t, s)
	tg := target("http://127.0.0.1:1/")
	if err := s.Send(tg, strings.Repeat("a", 100)); !errors.Is(err, webhook.ErrTooLarge) {
		t.Errorf("oversize: %v", err)
	}
	if err := s.Send(tg, func() {}); err == nil {
		t.Error("a func payload was accepted")
	}
}

func TestSendersShareMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := webhook.New(webhook.Options{Registerer: reg})
	b := webhook.New(webhook.Options{Registerer: reg})
	closeSender(t, a)
	closeSender(t, b)
	if _, err := reg.Gather(); err != nil {
		t.Errorf("gather: %v", err)
	}
}

func TestCheckURL(t *testing.T) {
	for _, ok := range []string{"https://hooks.example.com/x", "http://127.0.0.1:8080/alerts"} {
		if _, err := webhook.CheckURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"ftp://x/y", "file:///etc/passwd", "https://", "/relative", "https://user:pw@example.com/", "http://[::1"} {
		if _, err := webhook.CheckURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: error repeats the URL: %v", bad, err)
		}
	}
}

func TestLoadSecret(t *testing.T) {
	t.Setenv("HOOK_KEY", testKey)
	s, err := webhook.LoadSecret("HOOK_KEY", "")
	if err != nil || string(s.Bytes()) != testKey {
		t.Fatalf("env: %q, %v", s.Bytes(), err)
	}
	f := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(f, []byte(testKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err = webhook.LoadSecret("", f); err != nil || string(s.Bytes()) != testKey {
		t.Fatalf("file: %q, %v", s.Bytes(), err)
	}
	t.Setenv("SHORT_KEY", "short")
	for name, c := range map[string][2]string{
		"both": {"HOOK_KEY", f}, "neither": {"", ""}, "unset": {"NO_SUCH_VAR_X", ""},
		"missing file": {"", f + ".none"}, "short": {"SHORT_KEY", ""},
	} {
		if _, err := webhook.LoadSecret(c[0], c[1]); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "short\"") || strings.Contains(err.Error(), testKey) {
			t.Errorf("%s: error carries the value: %v", name, err)
		}
	}
	if got := s.String() + " " + s.GoString(); strings.Contains(got, testKey) {
		t.Errorf("formatting shows the key: %s", got)
	}
}

// A target's own timeout bounds its attempts, whatever the sender's default.
func TestTargetTimeout(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	reg := prometheus.NewRegistry()
	s := webhook.New(webhook.Options{Registerer: reg, Attempts: 1, Timeout: time.Hour})
	tg := target(rc.URL)
	tg.Timeout = time.Millisecond
	if err := s.Send(tg, "x"); err != nil {
		t.Fatal(err)
	}
	closeSender(t, s) // returns only once the attempt ended: by the target's timeout
	if got := dropped(t, reg, webhook.DropRetriesExhausted); got != 1 {
		t.Errorf("dropped{retries_exhausted} = %v, want 1", got)
	}
}
