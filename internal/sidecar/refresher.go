package sidecar

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Defaults of a Refresher.
const (
	// DefaultRefreshAt is the fraction of a credential's lifetime after which
	// it is refreshed (before jitter).
	DefaultRefreshAt = 0.8
	// RefreshJitter is how much earlier than RefreshAt a refresh may happen,
	// as a fraction of the refresh point: with 0.8 and 0.1 a refresh happens
	// between 72 % and 80 % of the lifetime, spreading sidecars out.
	RefreshJitter = 0.1
	// DefaultExpirySkew: a credential that expires within this long counts
	// as expired and is never served. It covers a request signed just before
	// expiry still being in flight, and modest clock drift.
	DefaultExpirySkew = 10 * time.Second
	// DefaultCallTimeout bounds one upstream call.
	DefaultCallTimeout = 15 * time.Second
	// MinBackoff and MaxBackoff bound the (jittered, doubling) wait between
	// failed attempts. A broker's RetryInfo may ask for longer, up to
	// MaxRetryInfo.
	MinBackoff   = time.Second
	MaxBackoff   = 30 * time.Second
	MaxRetryInfo = 5 * time.Minute
)

// ErrNoCredential is wrapped by Get's error when no valid credential can be
// served.
var ErrNoCredential = errors.New("sidecar: no valid credential")

// ErrRevoked is wrapped by Get's error when the credential was dropped
// because a broker admin revoked it (or the identity or cluster it was
// issued for), and the broker has not issued another since.
var ErrRevoked = errors.New("credential revoked by credbroker")

// Notice says which revocation took a credential back, in words for the
// program that asked for it.
type Notice struct {
	// RevocationID names the revocation (quote it when asking for a lift).
	RevocationID string
	// Admin is who revoked.
	Admin string
	// Message says what is revoked, why, and whom to ask.
	Message string
}

// String is the notice in one line: revocation, admin and message.
func (n Notice) String() string {
	return fmt.Sprintf("revocation %s by %s: %s", n.RevocationID, n.Admin, n.Message)
}

// revocationNotice returns the notice of a broker refusal with reason
// REVOKED, and false for any other error.
func revocationNotice(err error) (Notice, bool) {
	if brokerclient.Reason(err) != credbrokerv1.ErrorReason_REVOKED {
		return Notice{}, false
	}
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	return Notice{RevocationID: brokerclient.Metadata(err, "revocation_id"), Admin: brokerclient.Metadata(err, "revoked_by"), Message: msg}, true
}

// Upstream is the broker call a Refresher makes; the generated
// credbrokerv1.BrokerServiceClient and Redialer satisfy it.
type Upstream interface {
	IssueCredential(ctx context.Context, in *credbrokerv1.IssueCredentialRequest, opts ...grpc.CallOption) (*credbrokerv1.IssueCredentialResponse, error)
}

// Spec is one credential the sidecar serves: the name in the URL path
// /v1/credentials/NAME and the broker request behind it.
type Spec struct {
	Name    string
	Profile string
	// Cluster is "namespace/name" for cluster-scoped profiles, or empty.
	Cluster string
	// TTL is the requested lifetime; zero means the profile's default.
	TTL time.Duration
}

// Observer is told the outcome of every upstream attempt: the new
// credential, or the error (the credential is then zero).
type Observer func(spec Spec, c Credential, err error)

// Refresher keeps one credential fresh. Its methods are safe for concurrent
// use. Upstream calls are coalesced: however many Get, Refresh and Run
// callers want a new credential at once, one call is made.
type Refresher struct {
	spec        Spec
	up          Upstream
	clock       Clock
	rand        func() float64
	refreshAt   float64
	skew        time.Duration
	callTimeout time.Duration
	observe     Observer
	dropped     func(Spec, Notice)
	wake        chan struct{} // a resumed Refresher's loop tries at once

	flight singleflight.Group

	mu       sync.Mutex
	cur      Credential
	have     bool
	next     time.Time // when the next upstream attempt is due; zero: now
	failures int       // consecutive failed attempts
	lastErr  error
	revoked  *Notice // why the credential was dropped; nil when it was not
}

// Option configures a Refresher.
type Option func(*Refresher)

// WithClock sets the clock (default RealClock()).
func WithClock(c Clock) Option { return func(r *Refresher) { r.clock = c } }

// WithRand sets the jitter source, returning values in [0, 1) (default
// math/rand/v2.Float64).
func WithRand(f func() float64) Option { return func(r *Refresher) { r.rand = f } }

// WithRefreshAt sets the lifetime fraction at which to refresh, in (0, 1)
// (default DefaultRefreshAt).
func WithRefreshAt(f float64) Option { return func(r *Refresher) { r.refreshAt = f } }

// WithExpirySkew sets how close to expiry a credential stops being served
// (default DefaultExpirySkew).
func WithExpirySkew(d time.Duration) Option { return func(r *Refresher) { r.skew = d } }

// WithCallTimeout bounds each upstream call (default DefaultCallTimeout).
func WithCallTimeout(d time.Duration) Option { return func(r *Refresher) { r.callTimeout = d } }

// WithObserver sets a function told about every upstream attempt (for
// metrics, logs and the credentials file). It runs on the refreshing
// goroutine, after the new state is visible to Get.
func WithObserver(o Observer) Option { return func(r *Refresher) { r.observe = o } }

// WithDropped sets a function told when a revocation makes the Refresher
// drop its credential (to log it and take it out of the credentials file).
// It runs on the goroutine that learnt of the revocation.
func WithDropped(f func(Spec, Notice)) Option { return func(r *Refresher) { r.dropped = f } }

// NewRefresher returns a Refresher for spec that asks up. It holds no
// credential until the first Get, Refresh or Run.
func NewRefresher(spec Spec, up Upstream, opts ...Option) (*Refresher, error) {
	r := &Refresher{
		spec: spec, up: up, clock: RealClock(), rand: rand.Float64,
		refreshAt: DefaultRefreshAt, skew: DefaultExpirySkew, callTimeout: DefaultCallTimeout,
		wake: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(r)
	}
	switch {
	case spec.Name == "" || spec.Profile == "":
		return nil, errors.New("sidecar: a credential needs a name and a profile")
	case up == nil:
		return nil, errors.New("sidecar: upstream is required")
	case !(r.refreshAt > 0 && r.refreshAt < 1):
		return nil, fmt.Errorf("sidecar: refresh-at %v: want a fraction between 0 and 1", r.refreshAt)
	case r.skew < 0 || r.callTimeout <= 0 || spec.TTL < 0:
		return nil, errors.New("sidecar: skew, call timeout and TTL must not be negative")
	}
	return r, nil
}

// Spec returns what the Refresher serves.
func (r *Refresher) Spec() Spec { return r.spec }

// Get returns the current credential when it is valid (expires later than
// the skew from now). Otherwise, unless a failed attempt's backoff is still
// running, it asks the broker (joining a call already in flight) and waits
// for the answer or ctx. Errors wrap ErrNoCredential.
func (r *Refresher) Get(ctx context.Context) (Credential, error) {
	now := r.clock.Now()
	r.mu.Lock()
	cur, have, next, lastErr, revoked := r.cur, r.have, r.next, r.lastErr, r.revoked
	r.mu.Unlock()
	if have && r.valid(cur, now) {
		return cur, nil
	}
	if now.Before(next) {
		if revoked != nil {
			return Credential{}, fmt.Errorf("%w: %s", ErrRevoked, revoked)
		}
		return Credential{}, fmt.Errorf("%w for %q: %s (next attempt in %s)", ErrNoCredential, r.spec.Name, describe(lastErr), next.Sub(now).Round(time.Second))
	}
	// The call outlives this caller if it goes away: others may have joined.
	c, err := r.refresh(ctx, context.WithoutCancel(ctx))
	if err != nil {
		if n, ok := revocationNotice(err); ok {
			return Credential{}, fmt.Errorf("%w: %s", ErrRevoked, n)
		}
		return Credential{}, fmt.Errorf("%w for %q: %s", ErrNoCredential, r.spec.Name, describe(err))
	}
	return c, nil
}

// Drop forgets the credential because of revocation n, at once: it is
// never served again. The next attempt to get a new one is made after the
// backoff when the revocation covers the identity or cluster (the broker
// would refuse it until the revocation is lifted; Resume ends the wait),
// and at once when only this issuance was revoked (the broker issues a
// fresh credential).
func (r *Refresher) Drop(n Notice, retryNow bool) {
	now := r.clock.Now()
	r.mu.Lock()
	had := r.have
	r.cur, r.have, r.revoked = Credential{}, false, &n
	if retryNow {
		r.next = now
	} else {
		r.failures++
		r.next = now.Add(r.backoff(nil))
	}
	r.mu.Unlock()
	if had && r.dropped != nil {
		r.dropped(r.spec, n)
	}
	if retryNow {
		r.poke()
	}
}

// Resume ends the wait after a revocation that was lifted: the next attempt
// is made at once.
func (r *Refresher) Resume() {
	r.mu.Lock()
	r.next = r.clock.Now()
	r.mu.Unlock()
	r.poke()
}

// Revoked returns the notice of the revocation that dropped the credential,
// until a new one is received.
func (r *Refresher) Revoked() (Notice, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.revoked == nil {
		return Notice{}, false
	}
	return *r.revoked, true
}

func (r *Refresher) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Refresh asks the broker for a new credential now, whatever the schedule
// (joining a call already in flight), and returns it or the broker's error.
// The previous credential stays in use when it fails.
func (r *Refresher) Refresh(ctx context.Context) (Credential, error) {
	return r.refresh(ctx, ctx)
}

// refresh waits for ctx while the call runs with callCtx.
func (r *Refresher) refresh(ctx, callCtx context.Context) (Credential, error) {
	ch := r.flight.DoChan("", func() (any, error) { return r.fetch(callCtx) })
	select {
	case res := <-ch:
		if res.Err != nil {
			return Credential{}, res.Err
		}
		return res.Val.(Credential), nil
	case <-ctx.Done():
		return Credential{}, ctx.Err()
	}
}

// Current returns the credential if it is valid now, without calling the
// broker.
func (r *Refresher) Current() (Credential, bool) {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur, r.have && r.valid(r.cur, now)
}

// Latest returns the last credential received, valid or not.
func (r *Refresher) Latest() (Credential, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur, r.have
}

// LastError returns the error of the last attempt, nil if it succeeded.
func (r *Refresher) LastError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// NextAttempt returns when the background loop will next call the broker.
func (r *Refresher) NextAttempt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// Run is the background loop: it waits (on the Clock) until the next
// attempt is due, refreshes, and repeats until ctx ends. After a Get has
// refreshed in the meantime it simply waits for the new due time.
func (r *Refresher) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if d := r.NextAttempt().Sub(r.clock.Now()); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-r.clock.After(d):
			case <-r.wake:
			}
			continue
		}
		r.Refresh(ctx) // outcome recorded in the state and told to the observer
	}
}

func (r *Refresher) valid(c Credential, now time.Time) bool {
	return now.Add(r.skew).Before(c.Expiration)
}

// fetch makes one upstream call and records its outcome.
func (r *Refresher) fetch(ctx context.Context) (Credential, error) {
	req := &credbrokerv1.IssueCredentialRequest{Profile: r.spec.Profile, Cluster: r.spec.Cluster}
	if r.spec.TTL > 0 {
		req.Ttl = durationpb.New(r.spec.TTL)
	}
	callCtx, cancel := context.WithTimeout(ctx, r.callTimeout)
	resp, err := r.up.IssueCredential(callCtx, req)
	cancel()
	if ctx.Err() != nil {
		// Shutting down: not the broker's fault, nothing to record.
		return Credential{}, ctx.Err()
	}
	now := r.clock.Now()
	var c Credential
	if err == nil {
		c, err = r.convert(resp.GetCredential(), now)
	}

	notice, revoked := revocationNotice(err)
	r.mu.Lock()
	had := r.have
	if err == nil {
		r.cur, r.have, r.failures, r.lastErr, r.revoked = c, true, 0, nil, nil
		r.next = now.Add(r.refreshDelay(now, c.Expiration))
	} else {
		r.failures++
		r.lastErr = err
		r.next = now.Add(r.backoff(err))
		if revoked {
			// The broker says the identity or cluster is revoked: what
			// was issued before is not served either, even if the watch
			// has not said so.
			r.cur, r.have, r.revoked = Credential{}, false, &notice
		}
	}
	r.mu.Unlock()

	if revoked && had && r.dropped != nil {
		r.dropped(r.spec, notice)
	}
	if r.observe != nil {
		r.observe(r.spec, c, err)
	}
	return c, err
}

// convert checks the broker's answer: AWS credentials that are valid now.
func (r *Refresher) convert(pc *credbrokerv1.Credential, now time.Time) (Credential, error) {
	aws := pc.GetAws()
	if aws == nil {
		return Credential{}, fmt.Errorf("sidecar: profile %q does not issue AWS credentials", r.spec.Profile)
	}
	c := Credential{
		AccessKeyID: aws.GetAccessKeyId(), SecretAccessKey: aws.GetSecretAccessKey(), SessionToken: aws.GetSessionToken(),
		Expiration: pc.GetExpiresAt().AsTime(), IssuanceID: pc.GetIssuanceId(),
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" || pc.GetExpiresAt() == nil {
		return Credential{}, errors.New("sidecar: broker returned an incomplete AWS credential")
	}
	if !r.valid(c, now) {
		return Credential{}, fmt.Errorf("sidecar: broker returned a credential expiring at %s, within %s of now (check the clocks)", c.Expiration.UTC().Format(time.RFC3339), r.skew)
	}
	return c, nil
}

// refreshDelay is how long after now to refresh a credential expiring at
// exp: refreshAt of the remaining lifetime, up to RefreshJitter of that
// earlier, never later than the skew allows and never sooner than MinBackoff.
func (r *Refresher) refreshDelay(now, exp time.Time) time.Duration {
	life := exp.Sub(now)
	d := time.Duration(float64(life) * r.refreshAt * (1 - RefreshJitter*r.rand()))
	d = min(d, life-r.skew)
	return max(d, MinBackoff)
}

// backoff is the wait after the r.failures-th consecutive failure: doubling
// from MinBackoff up to MaxBackoff, with equal jitter (half fixed, half
// random; see package backoff), or longer when the broker's RetryInfo asks
// for it.
func (r *Refresher) backoff(err error) time.Duration {
	d := backoff.Policy{Min: MinBackoff, Max: MaxBackoff, Rand: r.rand}.Delay(r.failures)
	if st, ok := status.FromError(err); ok && err != nil {
		for _, det := range st.Details() {
			if ri, ok := det.(*errdetails.RetryInfo); ok {
				d = max(d, min(ri.GetRetryDelay().AsDuration(), MaxRetryInfo))
			}
		}
	}
	return d
}

// describe renders an upstream error as one caller-safe line.
func describe(err error) string {
	if err == nil {
		return "no attempt yet"
	}
	return brokerclient.Describe(err)
}
