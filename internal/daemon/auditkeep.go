package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/internal/webhook"
)

// auditPurges are the housekeeping of the audit log: with a retention, the
// records older than it are pruned behind checkpoint records (a batch per
// transaction, so appends wait for one batch at most), only as far as an
// admin has marked exported when require_export is set, and never a record
// of a credential still valid.
func auditPurges(c config.Audit, l *audit.Log) []purge {
	if c.Retention == 0 {
		return nil
	}
	return []purge{{"audit records past retention", func(now time.Time) (int, error) {
		res, err := l.Prune(audit.PruneOptions{Before: now.Add(-c.Retention), Now: now, RequireExport: c.RequireExport})
		return int(res.Pruned), err
	}}}
}

// replicaOption names the audit chain's replica: the configured
// replica_id, which the database must already carry if it carries one, or
// else the host name, which names only a database that has no id yet (so a
// chain keeps its name when its volume moves to another host).
func replicaOption(configured string, hostname func() (string, error)) (audit.Option, error) {
	if configured != "" {
		return audit.WithReplica(configured), nil
	}
	host, err := hostname()
	if err == nil && !config.ReplicaIDPattern.MatchString(host) {
		err = fmt.Errorf("%q is not a valid replica id", host)
	}
	if err != nil {
		return nil, fmt.Errorf("replica_id is not set and the host name cannot stand in for it: %w", err)
	}
	return audit.WithDefaultReplica(host), nil
}

// anchorWebhookName labels the anchor webhook in logs and metrics.
const anchorWebhookName = "audit-anchor"

// anchoring publishes the audit chain's head (audit.anchor) to a file
// outside the data dir and/or a webhook.
type anchoring struct {
	pub    *audit.AnchorPublisher
	sender *webhook.Sender // nil without a webhook
	every  time.Duration
	log    *slog.Logger
}

// newAnchoring builds the publisher of audit.anchor, or returns nil when
// it is not configured. Anchors name the replica (replica_id, by default
// the host name) as their host: replicas sharing a SPIFFE ID keep a chain
// each, and the anchor says whose. The webhook's secret is read here, from its
// environment variable or file, and kept in memory only.
func newAnchoring(c *config.AuditAnchor, l *audit.Log, brokerID, replica string, reg prometheus.Registerer, log *slog.Logger) (*anchoring, error) {
	if c == nil {
		return nil, nil
	}
	a := &anchoring{every: c.Interval, log: log}
	var sinks []audit.AnchorSink
	if c.File != "" {
		sinks = append(sinks, audit.NewAnchorFile(c.File, l))
	}
	if w := c.Webhook; w != nil {
		secret, err := webhook.LoadSecret(w.SecretEnv, w.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("audit.anchor.webhook: %w", err)
		}
		// A small queue: a head not delivered is superseded by the next.
		a.sender = webhook.New(webhook.Options{QueueSize: 8, Workers: 1, Registerer: reg, Log: log})
		sinks = append(sinks, anchorWebhook{s: a.sender, t: &webhook.Target{Name: anchorWebhookName, URL: w.URL, Secret: secret}})
	}
	a.pub = audit.NewAnchorPublisher(l, brokerID, replica, time.Now, sinks...)
	published := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "credbroker_audit_anchor_seq",
		Help: "Seq of the audit chain head last published to each anchor sink.",
	}, []string{"sink"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_audit_anchor_failures_total",
		Help: "Audit anchor publications that failed, per sink (including a file the chain no longer reaches).",
	}, []string{"sink"})
	if reg != nil {
		for _, c := range []prometheus.Collector{published, failures} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("audit anchor metrics: %w", err)
			}
		}
	}
	a.pub.Observe(func(sink string, an audit.Anchor, err error) {
		if err != nil {
			failures.WithLabelValues(sink).Inc()
			return
		}
		published.WithLabelValues(sink).Set(float64(an.Seq))
	})
	return a, nil
}

// run publishes at once and every interval until done closes.
func (a *anchoring) run(done <-chan struct{}) {
	t := time.NewTicker(a.every)
	defer t.Stop()
	a.pub.Run(done, t.C, a.report)
}

// final publishes the head the broker stops with, and drains the webhook
// queue until ctx ends.
func (a *anchoring) final(ctx context.Context) {
	an, err := a.pub.Publish()
	a.report(an, err)
	if err == nil {
		a.log.Info("audit anchor published", slog.Uint64("seq", an.Seq), slog.String("hash", an.Hash))
	}
	if a.sender != nil {
		if err := a.sender.Close(ctx); err != nil {
			a.log.Warn("audit anchor webhook not drained before the shutdown grace ended", slog.String("error", err.Error()))
		}
	}
}

// stop stops the webhook's workers if final did not (Run failed before it
// served); nothing is left to deliver then.
func (a *anchoring) stop() {
	if a.sender != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = a.sender.Close(ctx)
	}
}

func (a *anchoring) report(_ audit.Anchor, err error) {
	if err != nil {
		a.log.Error("publishing the audit anchor", slog.String("error", err.Error()))
	}
}

// anchorWebhook sends heads as signed JSON POSTs through the webhook
// package's bounded queue.
type anchorWebhook struct {
	s *webhook.Sender
	t *webhook.Target
}

func (w anchorWebhook) Name() string { return "webhook" }

func (w anchorWebhook) PublishAnchor(a audit.Anchor) error {
	return w.s.Send(w.t, audit.AnchorEvent{Type: audit.AnchorEventType, Anchor: a})
}
