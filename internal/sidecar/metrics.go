package sidecar

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/status"
)

// Metrics are the sidecar's Prometheus metrics, on their own registry:
//
//	credbroker_sidecar_refreshes_total{credential,result}  upstream attempts; result is
//	    "success" or the gRPC code in snake case ("unavailable", "permission_denied", ...)
//	credbroker_sidecar_credential_expiry_seconds{credential}  seconds until the held
//	    credential expires (negative once expired, 0 while there is none)
//
// plus the Go runtime and process collectors.
type Metrics struct {
	reg       *prometheus.Registry
	refreshes *prometheus.CounterVec
	expiry    *expiryCollector
}

// NewMetrics makes the registry; clock is used for the expiry gauge.
func NewMetrics(clock Clock) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_sidecar_refreshes_total",
			Help: "Upstream credential requests by credential and result (success or gRPC code).",
		}, []string{"credential", "result"}),
		expiry: &expiryCollector{clock: clock, desc: prometheus.NewDesc(
			"credbroker_sidecar_credential_expiry_seconds",
			"Seconds until the credential held expires (negative once expired, 0 when none is held).",
			[]string{"credential"}, nil)},
	}
	m.reg.MustRegister(m.refreshes, m.expiry,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch adds refreshers to the expiry gauge and starts their success
// counters at zero.
func (m *Metrics) Watch(rs ...*Refresher) {
	for _, r := range rs {
		m.refreshes.WithLabelValues(r.Spec().Name, "success")
	}
	m.expiry.add(rs)
}

// Observe counts one upstream attempt; it fits Observer.
func (m *Metrics) Observe(spec Spec, _ Credential, err error) {
	m.refreshes.WithLabelValues(spec.Name, resultLabel(err)).Inc()
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry returns the registry, for tests and for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func resultLabel(err error) string {
	if err == nil {
		return "success"
	}
	return codeLabel(status.Code(err).String())
}

// codeLabel turns "PermissionDenied" into "permission_denied".
func codeLabel(s string) string {
	out := make([]byte, 0, len(s)+4)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				out = append(out, '_')
			}
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}

type expiryCollector struct {
	clock Clock
	desc  *prometheus.Desc
	mu    sync.Mutex
	rs    []*Refresher
}

func (e *expiryCollector) add(rs []*Refresher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rs = append(e.rs, rs...)
}

func (e *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- e.desc }

func (e *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	rs := e.rs
	e.mu.Unlock()
	now := e.clock.Now()
	for _, r := range rs {
		var secs float64
		if c, ok := r.Latest(); ok {
			secs = c.Expiration.Sub(now).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(e.desc, prometheus.GaugeValue, secs, r.Spec().Name)
	}
}
