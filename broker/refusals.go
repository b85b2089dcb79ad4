package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A refusal costs the broker an fsynced audit record, and a caller decides how
// many refusals it provokes. So refusals are recorded at a bounded rate per
// key — the caller's identity, or for callers without one (unauthenticated
// attempts, rejected attestation evidence) its source address — and in total
// per class. What is left out is still refused, counted in
// credbroker_refusals_unrecorded_total, and summarised in the next record
// for that key: "(N earlier refusals for this identity were not recorded)".
// Flush writes the summaries of keys that went quiet, so every refusal is
// either a record or counted in one.

// refusalClass says what a refusal's key is.
type refusalClass int

const (
	// byIdentity keys refusals by the caller's SPIFFE ID.
	byIdentity refusalClass = iota
	// byAddress keys refusals by source address: the caller has no identity.
	byAddress
)

func (c refusalClass) String() string {
	if c == byAddress {
		return "address"
	}
	return "identity"
}

// summary is the text appended to a record that stands for n refusals left
// out before it.
func (c refusalClass) summary(key string, n int) string {
	switch {
	case key == limits.Overflow && c == byAddress:
		return fmt.Sprintf(" (%d earlier refusals from addresses beyond the table of tracked ones were not recorded)", n)
	case key == limits.Overflow:
		return fmt.Sprintf(" (%d earlier refusals for identities beyond the table of tracked ones were not recorded)", n)
	case c == byAddress:
		return fmt.Sprintf(" (%d earlier refusals from this address were not recorded)", n)
	default:
		return fmt.Sprintf(" (%d earlier refusals for this identity were not recorded)", n)
	}
}

// RecordingLimits bounds how many refusals are written to the audit log, for
// one class of key: each key's own bucket, and a total across all keys.
type RecordingLimits struct {
	PerKey, Total limits.Spec
}

// RefusalLimits bounds the recording of refusals of identified callers
// (ByIdentity) and of callers known only by address (ByAddress).
type RefusalLimits struct {
	ByIdentity, ByAddress RecordingLimits
}

// DefaultRefusalLimits are the recording bounds used when none are
// configured (the defaults of limits.refusal_records).
func DefaultRefusalLimits() RefusalLimits {
	var r config.RefusalRecords
	r.ApplyDefaults()
	return RefusalLimitsFrom(r)
}

// RefusalLimitsFrom converts the configuration's limits.refusal_records
// (with its defaults applied).
func RefusalLimitsFrom(r config.RefusalRecords) RefusalLimits {
	return RefusalLimits{
		ByIdentity: RecordingLimits{PerKey: r.Identity.PerKey(), Total: r.Identity.Total()},
		ByAddress:  RecordingLimits{PerKey: r.Address.PerKey(), Total: r.Address.Total()},
	}
}

// Refusals writes refusal records at a bounded rate. One Refusals is shared
// by everything that records refusals (Gate, Service, NodeAuthority), so that
// the totals bound the broker as a whole. Safe for concurrent use.
type Refusals struct {
	audit   AuditLog
	metrics *Metrics
	now     func() time.Time
	classes [2]*refusalTable
	alerts  DecisionAlerts
}

// RefusalOption configures Refusals.
type RefusalOption func(*Refusals)

// WithRefusalAlerts tells a every refusal, recorded or only counted, for the
// burst alert rules: a burst is exactly what the recording bounds thin out.
func WithRefusalAlerts(a DecisionAlerts) RefusalOption {
	return func(r *Refusals) { r.alerts = a }
}

// refusalTable is the recording state of one class.
type refusalTable struct {
	mu      sync.Mutex
	spec    limits.Spec
	total   *rate.Limiter
	maxKeys int
	keys    map[string]*refusalKey
	sweepAt int
	swept   time.Time
}

type refusalKey struct {
	bucket *rate.Limiter
	// pending counts refusals left out since the key's last record; last is
	// the latest of them, written by Flush if nothing else is.
	pending int
	last    audit.Record
}

// NewRefusals returns a Refusals writing to log under l; now is the clock
// that paces it (nil: time.Now).
func NewRefusals(log AuditLog, m *Metrics, l RefusalLimits, now func() time.Time, opts ...RefusalOption) (*Refusals, error) {
	if log == nil || m == nil {
		return nil, errors.New("broker: NewRefusals: missing dependency")
	}
	if now == nil {
		now = time.Now
	}
	r := &Refusals{audit: log, metrics: m, now: now}
	for _, o := range opts {
		o(r)
	}
	for i, rl := range []RecordingLimits{l.ByIdentity, l.ByAddress} {
		if _, err := limits.NewBuckets(rl.PerKey, &rl.Total, 0); err != nil {
			return nil, fmt.Errorf("broker: refusal recording by %s: %w", refusalClass(i), err)
		}
		r.classes[i] = &refusalTable{spec: rl.PerKey, total: rate.NewLimiter(rl.Total.Rate, rl.Total.Burst),
			maxKeys: limits.DefaultMaxKeys, keys: map[string]*refusalKey{}, sweepAt: 1024}
	}
	return r, nil
}

func mustDefaultRefusals(log AuditLog, m *Metrics, now func() time.Time) *Refusals {
	r, err := NewRefusals(log, m, DefaultRefusalLimits(), now)
	if err != nil {
		panic(err) // the defaults are valid; a test proves it
	}
	return r
}

// Refuse records a refusal in rec with decision d and returns err for the
// caller. Refusals (denied, throttled) are the caller's doing and are
// recorded at the bounded rate: per caller identity when rec names one, else
// per source address, with "(from ADDR)" in the reason. Failures
// (DecisionFailed) are the broker's and always recorded. If the record
// cannot be written the caller is told the audit store is unavailable: a
// decision that is not on record did not happen cleanly. A recorded refusal
// names its request in the caller's message, so that an operator can find
// it (credbrokerctl issuances show ID).
func (r *Refusals) Refuse(ctx context.Context, rec *audit.Record, d audit.Decision, err error) error {
	rec.Decision, rec.Reason = d, clip(reasonOf(err))
	annotate(err, rec)
	var recorded bool
	var aerr error
	switch {
	case d == audit.DecisionFailed:
		_, aerr = r.audit.Append(*rec)
		recorded = aerr == nil
	case rec.Caller != "":
		recorded, aerr = r.record(ctx, byIdentity, rec.Caller, *rec)
	default:
		rec.Reason = clip(rec.Reason + " (from " + sourceOf(ctx) + ")")
		recorded, aerr = r.record(ctx, byAddress, sourceKey(ctx), *rec)
	}
	if aerr != nil {
		err = wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, errors.Join(err, aerr), "audit store unavailable (issuance %s)", rec.IssuanceID)
		annotate(err, rec)
		return err
	}
	if !recorded {
		return unrecordedError{err}
	}
	var ae *apiError
	if rec.IssuanceID != "" && errors.As(err, &ae) && !strings.Contains(ae.msg, rec.IssuanceID) {
		ae.msg += fmt.Sprintf(" (request %s)", rec.IssuanceID)
	}
	return err
}

// unrecordedError marks a refusal that was only counted, not recorded: its
// log line drops to debug level too, so that a flood costs no more log than
// audit.
type unrecordedError struct{ error }

func (e unrecordedError) Unwrap() error { return e.error }

// Recorded reports whether the refusal err (from Refusals.Refuse) was
// written to the audit log, for choosing the level of its log line.
func Recorded(err error) bool {
	var u unrecordedError
	return !errors.As(err, &u)
}

// RefusalLogLevel is the level at which to log a refusal: level when it was
// recorded, debug when it was only counted.
func RefusalLogLevel(err error, level slog.Level) slog.Level {
	if Recorded(err) {
		return level
	}
	return slog.LevelDebug
}

// record writes rec, a refusal under key, unless the key or its class is
// over its recording rate; then it only counts it. It reports whether rec
// was written, and the audit log's error if writing failed. Every refusal
// is counted for the alert rules first.
func (r *Refusals) record(ctx context.Context, class refusalClass, key string, rec audit.Record) (bool, error) {
	// A request waiting for approval is no denial: it feeds no burst rule
	// (the approval_requested alert tells approvers of it once).
	if r.alerts != nil && rec.Decision != audit.DecisionPending {
		a := alerts.Refusal{Identity: key, Throttled: rec.Decision == audit.DecisionThrottled}
		if class == byAddress {
			a = alerts.Refusal{Address: key, Throttled: a.Throttled}
		}
		r.alerts.Refused(ctx, a)
	}
	t := r.classes[class]
	now := r.now()
	t.mu.Lock()
	k, key := t.get(key, now)
	if !t.take(k, now) {
		k.pending++
		k.last = rec
		t.mu.Unlock()
		r.unrecorded(class, 1)
		return false, nil
	}
	left := k.pending
	k.pending, k.last = 0, audit.Record{}
	t.mu.Unlock()

	if left > 0 {
		rec.Reason = clipWith(rec.Reason, class.summary(key, left))
	}
	if _, err := r.audit.Append(rec); err != nil {
		r.putBack(class, key, left)
		return false, err
	}
	return true, nil
}

// putBack returns n unwritten refusals to key's count, so that a failed write
// loses no information.
func (r *Refusals) putBack(class refusalClass, key string, n int) {
	if n == 0 {
		return
	}
	t := r.classes[class]
	t.mu.Lock()
	defer t.mu.Unlock()
	k, _ := t.get(key, r.now())
	k.pending += n
}

func (r *Refusals) unrecorded(class refusalClass, n int) {
	r.metrics.refusalsUnrecorded.WithLabelValues(class.String()).Add(float64(n))
	if class == byAddress {
		r.metrics.unauthUnrecorded.Add(float64(n))
	}
}

// Flush writes, for every key with refusals left out whose recording bucket
// has a token again, the latest of them, noting how many came before it. The
// daemon calls it periodically and at shutdown; what is still pending when
// the process dies is only in credbroker_refusals_unrecorded_total.
func (r *Refusals) Flush() error {
	var errs []error
	for class, t := range r.classes {
		c := refusalClass(class)
		now := r.now()
		type due struct {
			key string
			n   int
			rec audit.Record
		}
		var todo []due
		t.mu.Lock()
		for key, k := range t.keys {
			if k.pending == 0 || !t.take(k, now) {
				continue
			}
			todo = append(todo, due{key, k.pending, k.last})
			k.pending, k.last = 0, audit.Record{}
		}
		t.mu.Unlock()
		sort.Slice(todo, func(i, j int) bool { return todo[i].key < todo[j].key }) // a stable order in the chain
		for _, d := range todo {
			d.rec.Reason = clipWith(d.rec.Reason, " (recorded late)")
			if d.n > 1 {
				d.rec.Reason = clipWith(d.rec.Reason, c.summary(d.key, d.n-1))
			}
			if _, err := r.audit.Append(d.rec); err != nil {
				r.putBack(c, d.key, d.n)
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// get returns key's state, creating it; when the table is full of keys that
// cannot be dropped, new keys share the overflow entry. t.mu must be held.
func (t *refusalTable) get(key string, now time.Time) (*refusalKey, string) {
	if k, ok := t.keys[key]; ok {
		return k, key
	}
	// A table full of keys that owe summaries is scanned at most once a
	// second, so that new keys do not each cost a scan.
	if n := len(t.keys); n >= t.sweepAt && (n < t.maxKeys || now.Sub(t.swept) >= time.Second) {
		t.sweep(now)
	}
	if len(t.keys) >= t.maxKeys {
		key = limits.Overflow
		if k, ok := t.keys[key]; ok {
			return k, key
		}
	}
	k := &refusalKey{bucket: rate.NewLimiter(t.spec.Rate, t.spec.Burst)}
	t.keys[key] = k
	return k, key
}

// take takes a recording token from k and from the class total, or none.
func (t *refusalTable) take(k *refusalKey, now time.Time) bool {
	res := k.bucket.ReserveN(now, 1)
	if res.DelayFrom(now) > 0 {
		res.CancelAt(now)
		return false
	}
	tres := t.total.ReserveN(now, 1)
	if tres.DelayFrom(now) > 0 {
		tres.CancelAt(now)
		res.CancelAt(now)
		return false
	}
	return true
}

// sweep drops keys that owe no summary and whose bucket is full again: they
// are indistinguishable from new ones. t.mu must be held.
func (t *refusalTable) sweep(now time.Time) {
	for key, k := range t.keys {
		if k.pending == 0 && k.bucket.TokensAt(now) >= float64(t.spec.Burst) {
			delete(t.keys, key)
		}
	}
	t.sweepAt = max(1024, 2*len(t.keys))
	t.swept = now
}

// clipWith appends suffix to s, shortening s so that the whole stays within
// maxRecordedLen: the summary is the part that must survive.
func clipWith(s, suffix string) string {
	if len(s)+len(suffix) <= maxRecordedLen {
		return s + suffix
	}
	return clipTo(s, maxRecordedLen-len(suffix)) + suffix
}

// sourceOf is the caller's IP address (without port), or "unknown".
func sourceOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}

// sourceKey is the key that limits and recording use for the caller's
// address: the IPv4 address, or the IPv6 /64 (one host usually has a whole
// /64, so a per-address key would give it 2^64 buckets).
func sourceKey(ctx context.Context) string {
	src := sourceOf(ctx)
	ip := net.ParseIP(src)
	if ip == nil || ip.To4() != nil {
		return src
	}
	return (&net.IPNet{IP: ip.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}
