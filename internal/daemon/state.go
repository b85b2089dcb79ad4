package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
	"github.com/credbroker/credbroker/internal/keyfile"
)

// stateBackend is where the broker keeps its state besides the audit
// chain, as openState opened it.
type stateBackend struct {
	store state.Store
	// ledger pairs quota spends (and approval consumptions) with their
	// decision records.
	ledger state.ApprovalLedger[audit.Record]
	// collectors are its metrics, registered with the broker's.
	collectors []prometheus.Collector
	// ready, when set, fails while the state cannot be relied on (the
	// health status is then NOT_SERVING); readyEvery is how often its
	// answer can change (a probe interval), for the health status to
	// follow it.
	ready      func() error
	readyEvery time.Duration
	// close is to run after the last use of store.
	close func()
}

// openState opens the broker's state. By default it is db, the audit
// chain's own file, and a spend commits in the audit transaction. With
// state.etcd it is etcd, shared by the replicas: a spend commits there
// first and the record is appended to this replica's chain after
// (state.SpendFirst), and nothing is recorded (so nothing issued) while the
// replica cannot confirm its revocations current.
func openState(ctx context.Context, cfg *config.Config, db *bbolt.DB, auditLog *audit.Log, log *slog.Logger) (stateBackend, error) {
	e := cfg.State.Etcd
	if e == nil {
		bs, err := boltstate.New(db)
		if err != nil {
			return stateBackend{}, err
		}
		l, err := bs.Ledger(auditLog)
		if err != nil {
			return stateBackend{}, err
		}
		return stateBackend{store: bs, ledger: l, close: func() {}}, nil
	}
	var tlsCfg *tls.Config
	if e.UsesTLS() {
		var err error
		if tlsCfg, err = etcdTLS(e.TLS); err != nil {
			return stateBackend{}, err
		}
	}
	// The confirmations and the age they are held to read one clock.
	now := time.Now
	fresh := newFreshness(now, e.MaxStaleness)
	es, err := etcdstate.Open(ctx, etcdstate.Config{
		Endpoints: e.Endpoints, TLS: tlsCfg, DialTimeout: e.DialTimeout,
		Options: etcdstate.Options{Prefix: e.Prefix, OpTimeout: e.RequestTimeout,
			ProbeInterval: e.ProbeInterval, OnCurrent: fresh.confirmed, Now: now},
	})
	if err != nil {
		return stateBackend{}, fmt.Errorf("state in etcd (%s): %w", strings.Join(e.Endpoints, ", "), err)
	}
	log.Info("state in etcd", slog.Any("endpoints", e.Endpoints), slog.String("prefix", e.Prefix), slog.Bool("tls", tlsCfg != nil),
		slog.Duration("probe_interval", e.ProbeInterval), slog.Duration("max_staleness", e.MaxStaleness))
	return stateBackend{
		store:  es,
		ledger: freshLedger{state.SpendFirst[audit.Record](es, auditLog), fresh},
		collectors: []prometheus.Collector{
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "credbroker_state_revocations_confirmed_age_seconds",
				Help: "Seconds since this replica last confirmed with etcd that its revocation watch has every revocation; it issues nothing past " + e.MaxStaleness.String() + ".",
			}, func() float64 { return fresh.age().Seconds() }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "credbroker_state_store_up",
				Help: "1 while the shared state store (etcd) can serve this replica's decisions, 0 while it cannot (its revocations not confirmed current for " + e.MaxStaleness.String() + "): the replica refuses UNAVAILABLE and is NOT_SERVING.",
			}, func() float64 { return up(fresh.check() == nil) }),
		},
		ready:      fresh.check,
		readyEvery: e.ProbeInterval,
		close: func() {
			if err := es.Close(); err != nil {
				log.Warn("closing the etcd client", slog.Any("err", err))
			}
		},
	}, nil
}

// etcdTLS is the etcd client's TLS: the members verified against the CA
// file (or the system roots), and, with a client certificate, that
// certificate and key, read again at each handshake so that a rotated pair
// is used from the next connection on. The key file must be owner-only.
func etcdTLS(c config.EtcdTLS) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("state.etcd.tls.ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("state.etcd.tls.ca: %s holds no PEM certificate", c.CA)
		}
	}
	if c.Cert != "" {
		load := func() (*tls.Certificate, error) {
			certPEM, err := os.ReadFile(c.Cert)
			if err != nil {
				return nil, fmt.Errorf("state.etcd.tls.cert: %w", err)
			}
			keyPEM, err := keyfile.Read(c.Key)
			if err != nil {
				return nil, fmt.Errorf("state.etcd.tls.key: %w", err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return nil, fmt.Errorf("state.etcd.tls: %s and %s: %w", c.Cert, c.Key, err)
			}
			return &pair, nil
		}
		// Refuse a broken pair at startup, not at the first handshake.
		if _, err := load(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return load() }
	}
	return cfg, nil
}

// up is a gauge's value for ok.
func up(ok bool) float64 {
	if ok {
		return 1
	}
	return 0
}

// A replica on etcd learns of revocations made on other replicas through
// its watch, and checks them from memory. So that a replica cut off from
// etcd cannot go on issuing under revocations it has not seen, it confirms
// with etcd every state.etcd.probe_interval that its watch has them all,
// and issues nothing (UNAVAILABLE) once the last confirmation is older than
// state.etcd.max_staleness — also what an issuance that charges no quota,
// and so needs no etcd round trip of its own, is held to.

// freshness is when the revocation watch was last confirmed current.
type freshness struct {
	now      func() time.Time
	maxAge   time.Duration
	mu       sync.Mutex
	lastSeen time.Time
}

// newFreshness starts confirmed: the store has just listed everything.
func newFreshness(now func() time.Time, maxAge time.Duration) *freshness {
	return &freshness{now: now, maxAge: maxAge, lastSeen: now()}
}

// confirmed records that every revocation made before asOf is in.
func (f *freshness) confirmed(asOf time.Time) {
	f.mu.Lock()
	if asOf.After(f.lastSeen) {
		f.lastSeen = asOf
	}
	f.mu.Unlock()
}

// age is how long ago the last confirmation was.
func (f *freshness) age() time.Duration {
	f.mu.Lock()
	last := f.lastSeen
	f.mu.Unlock()
	return f.now().Sub(last)
}

// check fails with state.ErrUnavailable once the last confirmation is older
// than maxAge.
func (f *freshness) check() error {
	if age := f.age(); age > f.maxAge {
		return fmt.Errorf("%w: this replica's revocations were last confirmed current %s ago", state.ErrUnavailable, age.Round(time.Millisecond))
	}
	return nil
}

// freshLedger refuses every spend and record while the revocations are not
// known to be current; otherwise it is the ledger it wraps.
type freshLedger struct {
	state.ApprovalLedger[audit.Record]
	fresh *freshness
}

func (l freshLedger) SpendAndAppend(ctx context.Context, now time.Time, charges []state.Charge, rec audit.Record) (audit.Record, error) {
	if err := l.fresh.check(); err != nil {
		return audit.Record{}, err
	}
	return l.ApprovalLedger.SpendAndAppend(ctx, now, charges, rec)
}

func (l freshLedger) ConsumeSpendAndAppend(ctx context.Context, now time.Time, u state.ApprovalUse, charges []state.Charge, rec audit.Record) (audit.Record, error) {
	if err := l.fresh.check(); err != nil {
		return audit.Record{}, err
	}
	return l.ApprovalLedger.ConsumeSpendAndAppend(ctx, now, u, charges, rec)
}
