// Package webhook delivers JSON events to HTTP receivers, signed with
// HMAC-SHA256, without ever holding up the code that emits them.
//
// # Caller never waits
//
// Send only marshals the payload and offers it to a bounded queue; it never
// blocks. When the queue is full the new delivery is dropped (the ones
// already queued are older and keep their place: the first events of an
// incident are the ones a receiver most needs) and counted in
// credbroker_webhook_dropped_total{reason="queue_full"}. A fixed number of
// workers take deliveries from the queue; each attempt has its own timeout,
// so a receiver that hangs costs a worker at most Timeout per attempt and
// never the sender's caller.
//
// # Retries
//
// A network error, a timeout, HTTP 408, 429 or 5xx is retried after a
// jittered, doubling wait (internal/backoff), up to Attempts attempts in all;
// then the delivery is dropped (reason "retries_exhausted"). Any other status
// outside 2xx, redirects included, is the receiver refusing: the delivery is
// dropped at once (reason "rejected"). Redirects are never followed, so a
// receiver cannot send a signed body to another host.
//
// # Signature
//
// See SignatureHeader for the scheme and Verify for the receiver's side.
// Secrets and URLs are never logged (a URL may itself carry a token, as
// chat webhooks' do); logs name the webhook.
//
// # Shutdown
//
// Close stops new deliveries, lets the workers drain the queue until its
// context ends, then cancels what is in flight and counts what is left as
// dropped (reason "closed"). Every Sender must be closed: its workers run
// until then.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/internal/backoff"
)

// Errors Send returns; callers may match them with errors.Is.
var (
	// ErrQueueFull: the queue was full and the delivery was dropped.
	ErrQueueFull = errors.New("webhook: queue full, delivery dropped")
	// ErrClosed: the Sender is closed.
	ErrClosed = errors.New("webhook: sender closed")
	// ErrTooLarge: the encoded payload exceeds Options.MaxBody.
	ErrTooLarge = errors.New("webhook: payload too large")
)

// Target is one receiver.
type Target struct {
	// Name labels metrics and logs; it must not be secret (the URL may be).
	Name string
	// URL is an http or https URL (see CheckURL).
	URL string
	// Secret is the HMAC key deliveries are signed with.
	Secret Secret
	// Timeout bounds each attempt to this receiver; 0 means
	// Options.Timeout.
	Timeout time.Duration
}

// LogValue shows only the name: the URL may carry a token.
func (t Target) LogValue() slog.Value { return slog.StringValue(t.Name) }

// Options configure a Sender. Zero values take the defaults documented on
// each field.
type Options struct {
	// QueueSize bounds deliveries waiting for a worker; default 1000.
	QueueSize int
	// Workers is how many deliveries are attempted at once; default 2.
	Workers int
	// Attempts is the most attempts per delivery, the first included;
	// default 5.
	Attempts int
	// Timeout bounds each attempt (connect, send, response headers and
	// reading up to 4 KiB of the response); default 5s.
	Timeout time.Duration
	// Backoff is the wait between attempts; default Min 1s, Max 1m.
	Backoff backoff.Policy
	// MaxBody bounds an encoded payload; default 64 KiB.
	MaxBody int
	// Now is the clock signatures are stamped with; default time.Now.
	Now func() time.Time
	// Wait waits d or until ctx ends (returning ctx.Err()); default a
	// timer. Tests replace it to run retries without waiting.
	Wait func(ctx context.Context, d time.Duration) error
	// Transport sends the requests; default a clone of
	// http.DefaultTransport. Redirects are never followed whatever it is.
	Transport http.RoundTripper
	// Registerer receives the metrics; nil means none are exported (they
	// are still counted). Several Senders may share one Registerer: the
	// metrics are registered once and shared, labelled by Target.Name.
	Registerer prometheus.Registerer
	// Log receives one line per dropped delivery; nil discards.
	Log *slog.Logger
}

// Metric names; stable, dashboards depend on them.
const (
	MetricDelivered = "credbroker_webhook_delivered_total"
	MetricFailed    = "credbroker_webhook_attempts_failed_total"
	MetricDropped   = "credbroker_webhook_dropped_total"
)

// Reasons a delivery is dropped, the values of MetricDropped's reason label.
const (
	DropQueueFull        = "queue_full"
	DropRetriesExhausted = "retries_exhausted"
	DropRejected         = "rejected"
	DropClosed           = "closed"
)

type metrics struct {
	delivered *prometheus.CounterVec
	failed    *prometheus.CounterVec
	dropped   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDelivered,
			Help: "Webhook deliveries a receiver accepted (2xx), by webhook.",
		}, []string{"webhook"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricFailed,
			Help: "Webhook attempts that failed (network error, timeout, non-2xx), by webhook.",
		}, []string{"webhook"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDropped,
			Help: "Webhook deliveries given up, by webhook and reason (queue_full, retries_exhausted, rejected, closed).",
		}, []string{"webhook", "reason"}),
	}
	if reg != nil {
		m.delivered = register(reg, m.delivered)
		m.failed = register(reg, m.failed)
		m.dropped = register(reg, m.dropped)
	}
	return m
}

// register registers c, or returns the collector already registered under
// its name so that several Senders share one set of counters.
func register(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

type delivery struct {
	target *Target
	id     string
	body   []byte
}

// Sender delivers payloads to Targets. It is safe for concurrent use.
type Sender struct {
	opts    Options
	client  *http.Client
	metrics *metrics
	log     *slog.Logger

	queue chan delivery
	// cancel ends the workers' context: in-flight attempts and waits, when
	// Close gives up draining.
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.RWMutex
	closed bool
}

// New starts a Sender's workers. Close it to stop them.
func New(opts Options) *Sender {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1000
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Backoff.Min <= 0 {
		opts.Backoff = backoff.Policy{Min: time.Second, Max: time.Minute, Rand: opts.Backoff.Rand}
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = 64 << 10
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Wait == nil {
		opts.Wait = wait
	}
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{
		opts: opts,
		client: &http.Client{
			Transport: tr,
			// Never follow: a redirect would carry a signed body to wherever
			// the receiver (or whoever controls its DNS) points.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		metrics: newMetrics(opts.Registerer),
		log:     log,
		queue:   make(chan delivery, opts.QueueSize),
		cancel:  cancel,
	}
	s.wg.Add(opts.Workers)
	for range opts.Workers {
		go s.work(ctx)
	}
	return s
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Send queues payload, encoded as JSON, for delivery to t. It never blocks:
// it returns ErrQueueFull when the queue is full (the delivery is dropped
// and counted), ErrClosed after Close, ErrTooLarge or an encoding error for
// a payload that cannot be sent. t must stay unchanged while deliveries to
// it are queued.
func (s *Sender) Send(t *Target, payload any) error {
	body, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("webhook: encode payload: %w", err)
	}
	if len(body) > s.opts.MaxBody {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), s.opts.MaxBody)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("webhook: delivery id: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.queue <- delivery{target: t, id: id.String(), body: body}:
		return nil
	default:
		s.drop(t, DropQueueFull, nil)
		return ErrQueueFull
	}
}

func (s *Sender) drop(t *Target, reason string, err error) {
	s.metrics.dropped.WithLabelValues(t.Name, reason).Inc()
	attrs := []slog.Attr{slog.String("webhook", t.Name), slog.String("reason", reason)}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn, "webhook delivery dropped", attrs...)
}

func (s *Sender) work(ctx context.Context) {
	defer s.wg.Done()
	for d := range s.queue {
		if ctx.Err() != nil {
			s.drop(d.target, DropClosed, nil)
			continue
		}
		s.deliver(ctx, d)
	}
}

// errRejected marks a response that retrying will not change.
var errRejected = errors.New("rejected")

func (s *Sender) deliver(ctx context.Context, d delivery) {
	var err error
	for attempt := 1; ; attempt++ {
		err = s.attempt(ctx, d)
		if err == nil {
			s.metrics.delivered.WithLabelValues(d.target.Name).Inc()
			return
		}
		s.metrics.failed.WithLabelValues(d.target.Name).Inc()
		switch {
		case errors.Is(err, errRejected):
			s.drop(d.target, DropRejected, err)
			return
		case ctx.Err() != nil:
			s.drop(d.target, DropClosed, nil)
			return
		case attempt >= s.opts.Attempts:
			s.drop(d.target, DropRetriesExhausted, err)
			return
		}
		if s.opts.Wait(ctx, s.opts.Backoff.Delay(attempt)) != nil {
			s.drop(d.target, DropClosed, nil)
			return
		}
	}
}

// attempt makes one signed POST. Its errors never contain the URL (which
// may hold a token) or the secret.
func (s *Sender) attempt(base context.Context, d delivery) error {
	timeout := s.opts.Timeout
	if d.target.Timeout > 0 {
		timeout = d.target.Timeout
	}
	ctx, cancel := context.WithTimeout(base, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.target.URL, bytes.NewReader(d.body))
	if err != nil {
		return fmt.Errorf("%w: bad url", errRejected)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "credbroker-webhook/1")
	req.Header.Set(DeliveryHeader, d.id)
	req.Header.Set(SignatureHeader, Sign(d.target.Secret.Bytes(), s.opts.Now(), d.body))
	resp, err := s.client.Do(req)
	if err != nil {
		if ctx.Err() != nil && base.Err() == nil {
			return errors.New("timed out")
		}
		return errors.New("request failed") // the *url.Error would name the URL
	}
	// Read a little so the connection can be reused; never more.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		return fmt.Errorf("status %d", c)
	default:
		return fmt.Errorf("%w: status %d", errRejected, c)
	}
}

// Close stops accepting deliveries and waits for the queue to drain until
// ctx ends; then it cancels what is in flight, counts every delivery not
// made as dropped (reason "closed"), waits for the workers to stop and
// returns ctx's error. Calling Close again returns at once.
func (s *Sender) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}
