package broker

import (
	"errors"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/issuers"
)

// Metrics are the broker's Prometheus metrics. Names are stable: dashboards
// and alerts depend on them.
type Metrics struct {
	// grpc are the standard per-method server metrics
	// (grpc_server_handled_total, grpc_server_handling_seconds, ...).
	grpc      *grpcprom.ServerMetrics
	decisions *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	authFails *prometheus.CounterVec
	// adminRefusals counts admin API calls refused because the caller,
	// though authenticated, is not an admin (or used a bearer token), by
	// listener and reason.
	adminRefusals *prometheus.CounterVec
	// unauthUnrecorded counts unauthenticated attempts refused without an
	// audit record because their source exceeded the recording rate.
	unauthUnrecorded prometheus.Counter
	// refusalsUnrecorded counts refusals left out of the audit log by the
	// recording bounds, by class (identity or address).
	refusalsUnrecorded *prometheus.CounterVec
	// rateLimited counts calls refused by a method's rate limit, by method
	// and by which bucket refused (key or total).
	rateLimited      *prometheus.CounterVec
	reused           *prometheus.CounterVec
	upstreamFailures *prometheus.CounterVec
	// malformed counts request bodies that did not decode, by method.
	malformed *prometheus.CounterVec
	// budgetTokens and budgetRefusals count what upstream budgets let
	// through and refused (UpstreamBudget).
	budgetTokens, budgetRefusals *prometheus.CounterVec
	// connsRefused and connsOpen count what LimitConnections refused and
	// let in.
	connsRefused *prometheus.CounterVec
	connsOpen    *prometheus.GaugeVec
	// streamsRefused counts streams refused by the open-stream caps, and
	// streamsOpen the calls holding a slot under them.
	streamsRefused *prometheus.CounterVec
	streamsOpen    prometheus.Gauge
}

// NewMetrics registers the broker's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(prometheus.ExponentialBuckets(0.0005, 2, 14)))),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_decisions_total",
			Help: "Issuance decisions by outcome (issued, denied, throttled, failed) and profile.",
		}, []string{"decision", "profile"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credbroker_issue_duration_seconds",
			Help:    "Time to decide an IssueCredential request, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"decision"}),
		authFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_authentication_failures_total",
			Help: "Requests refused because the caller could not be authenticated, by API.",
		}, []string{"api"}),
		unauthUnrecorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_unauthenticated_unrecorded_total",
			Help: "Unauthenticated requests refused without an audit record because their source address exceeded the recording rate.",
		}),
	}
	m.adminRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_admin_refusals_total",
		Help: "Admin API calls refused to authenticated callers that are not admins, by listener (mtls, socket) and reason (not_admin: an identity or socket uid not listed; jwt_svid: a JWT-SVID where an X.509-SVID is required).",
	}, []string{"listener", "reason"})
	m.refusalsUnrecorded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_refusals_unrecorded_total",
		Help: "Refusals not written individually to the audit log because their identity or address (class), or the class as a whole, exceeded the recording rate; each is counted in a later record.",
	}, []string{"class"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_rate_limited_total",
		Help: "Calls refused with RESOURCE_EXHAUSTED by a method's rate limit, by method and by the bucket that refused (key: the caller's own; total: the one shared by all callers).",
	}, []string{"method", "bucket"})
	m.reused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_credentials_reused_total",
		Help: "Issued credentials that were minted for an earlier issuance and handed out again (shared upstream calls), by profile.",
	}, []string{"profile"})
	m.upstreamFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_upstream_failures_total",
		Help: "Issuer failures by issuer and kind (unavailable, throttled, rejected, misconfigured, other).",
	}, []string{"issuer", "kind"})
	m.malformed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_malformed_requests_total",
		Help: "Requests refused with INVALID_ARGUMENT because their body did not decode (broken protobuf wire format, invalid UTF-8 in a string field), by method.",
	}, []string{"method"})
	m.budgetTokens, m.budgetRefusals = budgetMetrics()
	m.connsRefused, m.connsOpen = connMetrics()
	m.streamsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_streams_refused_total",
		Help: "Calls refused RESOURCE_EXHAUSTED before their handler started because too many were open from their source address or on the server, by reason (per_address, total).",
	}, []string{"reason"})
	m.streamsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credbroker_streams_open",
		Help: "Calls open at once under the open-call caps, on every gRPC server of the broker (mTLS, health, admin socket).",
	})
	reg.MustRegister(m.connsRefused, m.connsOpen, m.streamsRefused, m.streamsOpen, m.grpc, m.decisions, m.latency, m.authFails, m.adminRefusals, m.unauthUnrecorded, m.refusalsUnrecorded, m.rateLimited, m.reused, m.upstreamFailures, m.malformed,
		m.budgetTokens, m.budgetRefusals)
	return m
}

// upstreamFailure counts an issuer failure by its kind.
func (m *Metrics) upstreamFailure(issuer string, err error) {
	kind := "other"
	for _, k := range []struct {
		err  error
		name string
	}{
		{issuers.ErrUnavailable, "unavailable"}, {issuers.ErrThrottled, "throttled"},
		{issuers.ErrRejected, "rejected"}, {issuers.ErrMisconfigured, "misconfigured"},
	} {
		if errors.Is(err, k.err) {
			kind = k.name
			break
		}
	}
	m.upstreamFailures.WithLabelValues(issuer, kind).Inc()
}

// observe counts one decision. profile must be a configured profile name or
// "unknown", never caller-chosen text, to keep label cardinality bounded.
func (m *Metrics) observe(d audit.Decision, profile string, took time.Duration) {
	dec := string(d)
	if d == audit.DecisionIntent {
		// The intent was written but nothing after it: the result failed to record.
		dec = string(audit.DecisionFailed)
	}
	m.decisions.WithLabelValues(dec, profile).Inc()
	m.latency.WithLabelValues(dec).Observe(took.Seconds())
}
