// Package daemon wires and runs the broker: it is the explicit catalog that
// turns a configuration into listeners, verifiers, issuers, limits and the
// audit log, and the lifecycle that starts them and drains them on shutdown.
// Reading Run tells you the whole server.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/issuers/awssts"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Options are what `credbroker serve` passes in from its flags.
type Options struct {
	// Dev runs on the embedded dev configuration with a generated trust domain.
	Dev bool
	// ConfigFile is the configuration file (required unless Dev).
	ConfigFile string
	// DataDir, Listen and HTTPListen override the configuration when set.
	DataDir, Listen, HTTPListen string
	// Stdout receives the human-readable start banner; Stderr the logs.
	Stdout, Stderr io.Writer
	// BinDir is where the sibling binaries live, for the copy-paste hints.
	BinDir string
	// Reload, when it delivers, re-reads the SVID and bundle files at once
	// (the server's main wires it to SIGHUP).
	Reload <-chan os.Signal
}

// DBFile is the bbolt file name inside the data directory.
const DBFile = "credbroker.db"

// refusalFlushInterval is how often the summaries of refusals left out of the
// audit log are written for callers that went quiet.
const refusalFlushInterval = 10 * time.Second

// httpIdleTimeout closes an HTTP keep-alive connection with no request for
// this long (net/http would keep it for ever).
const httpIdleTimeout = 2 * time.Minute

// Run starts the broker and blocks until ctx is done, then shuts down
// gracefully: in-flight RPCs drain (up to the configured grace), listeners
// close, and the database is closed last.
func Run(ctx context.Context, opts Options) error {
	cfg, err := loadConfig(opts)
	if err != nil {
		return err
	}
	log := newLogger(opts.Stderr, cfg.LogLevel)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	trust, err := loadTrust(ctx, cfg, opts.Dev)
	if err != nil {
		return err
	}
	defer trust.close()

	// Bind every listener before anything else so that port conflicts fail
	// fast and ":0" resolves to real addresses for the issuer URL.
	grpcLis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	defer grpcLis.Close()
	httpLis, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", cfg.HTTPListen, err)
	}
	defer httpLis.Close()
	cfg.Listen, cfg.HTTPListen = grpcLis.Addr().String(), httpLis.Addr().String()
	cfg.ResolvePaths()
	if err := cfg.CheckAuditAnchorPath(); err != nil {
		return err
	}
	// The plain-text health listener (health_listen), for Kubernetes gRPC
	// probes: the health service only.
	var healthLis net.Listener
	if cfg.HealthListen != "" {
		if healthLis, err = net.Listen("tcp", cfg.HealthListen); err != nil {
			return fmt.Errorf("health listen %s: %w", cfg.HealthListen, err)
		}
		defer healthLis.Close()
		cfg.HealthListen = healthLis.Addr().String()
	}
	adminLis, err := listenUnix(cfg.Admin.Socket)
	if err != nil {
		return err
	}
	defer adminLis.Close()

	// One bbolt file holds the audit chain and, beside it, the broker's
	// state; quota spends commit in the audit transaction (state.Ledger).
	// With state.etcd the state is in etcd instead (see openState).
	db, err := boltstate.OpenDB(filepath.Join(cfg.DataDir, DBFile))
	if err != nil {
		return err
	}
	defer db.Close()
	replica, err := replicaOption(cfg.ReplicaID, os.Hostname)
	if err != nil {
		return err
	}
	auditLog, err := audit.Open(db, replica)
	if err != nil {
		return err
	}
	defer auditLog.Close()
	backend, err := openState(ctx, cfg, db, auditLog, log)
	if err != nil {
		return err
	}
	defer backend.close()
	st, ledger := backend.store, backend.ledger
	table := cfg.LimitTable()
	limiter, err := limits.New(table.Default, limits.WithOverrides(table.Profiles, table.Rules))
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(backend.collectors...)
	metrics := broker.NewMetrics(reg)
	rateLimits, err := broker.NewRateLimits(broker.RequestLimitsFrom(cfg.Limits.Requests), nil)
	if err != nil {
		return err
	}
	// Alerts: log events and counters always, webhooks as configured. Its
	// webhook queue drains (up to the shutdown grace) after the servers
	// stop, so the alerts of the last requests still go out.
	alerter, err := alerts.New(cfg.Alerts, alerts.Options{Log: log, Registerer: reg, Usage: st.Usage})
	if err != nil {
		return err
	}
	defer func() {
		actx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
		defer cancel()
		if err := alerter.Close(actx); err != nil {
			log.Warn("alert webhooks not drained before the shutdown grace ended", slog.String("error", err.Error()))
		}
	}()
	refusals, err := broker.NewRefusals(auditLog, metrics, broker.RefusalLimitsFrom(cfg.Limits.RefusalRecords), nil, broker.WithRefusalAlerts(alerter))
	if err != nil {
		return err
	}

	self, err := trust.svidSource.GetX509SVID()
	if err != nil {
		return fmt.Errorf("the broker's own SVID: %w", err)
	}
	// The audit chain's head, published outside the host (audit.anchor).
	anchor, err := newAnchoring(cfg.Audit.Anchor, auditLog, self.ID.String(), auditLog.Replica(), reg, log)
	if err != nil {
		return err
	}
	if anchor != nil {
		defer anchor.stop() // when Run fails before it serves
	}
	budgets, err := buildBudgets(cfg, st, metrics)
	if err != nil {
		return err
	}
	issuerSet, err := buildIssuers(ctx, cfg, self.ID.String(), budgets, st, auditLog.Replica(), log)
	if err != nil {
		return err
	}
	if err := recordAbandonedRotations(issuerSet, auditLog, self.ID.String(), newIssuanceID, log); err != nil {
		return err
	}
	profiles, err := buildProfiles(cfg, issuerSet, budgets)
	if err != nil {
		return err
	}
	pol, err := policy.New(cfg.PolicyRules())
	if err != nil {
		return err
	}
	// Revocations are checked on every request from memory; the index sees
	// each change before the admin's call returns, and drops the reused
	// credentials it covers from every issuer that reuses them.
	// The AWS deny policies follow every change too (awsRevocations.sync);
	// they are built once the index they read exists.
	var awsRevHook atomic.Pointer[awsRevocations]
	revIndex, err := state.NewRevocationIndex(ctx, st, issuerSet.forget, func(state.RevocationChange) {
		if a := awsRevHook.Load(); a != nil {
			a.sync()
		}
	})
	if err != nil {
		return err
	}
	defer revIndex.Close()
	if issuerSet.jwt != nil {
		issuerSet.jwt.SetRevokedSource(revokedJTIs(revIndex, issuerSet.jwtName, jwtMaxTTL(cfg, issuerSet.jwtName), time.Now))
	}
	revOpts := []broker.RevocationOption{broker.WithUpstreamRevokers(issuerSet.upstreamRevokers(), log), broker.WithRevocationAlerts(alerter)}
	awsRev := newAWSRevocations(cfg, revIndex, time.Now, log)
	var awsAppliers []*awssts.RevocationApplier
	if awsRev != nil {
		reporter := newAWSApplyReporter(reg, auditLog, self.ID.String(), newIssuanceID, log)
		if awsAppliers, err = awsRev.startAppliers(ctx, cfg, reporter.report); err != nil {
			return err
		}
		awsRevHook.Store(awsRev)
		revOpts = append(revOpts, broker.WithAWSPolicies(awsRev))
	}
	revocations, err := broker.NewRevocations(st, revIndex, auditLog, nil, newIssuanceID, revOpts...)
	if err != nil {
		return err
	}
	// Sidecars watch the revocations covering what they serve, so that they
	// stop serving a revoked credential at once.
	watches, err := broker.NewWatches(revIndex, auditLog, broker.WatchConfig{
		PerIdentity: cfg.Limits.WatchStreams.PerIdentity, Total: cfg.Limits.WatchStreams.Total, Registerer: reg})
	if err != nil {
		return err
	}
	defer watches.Stop()
	// Before the authenticators are built: it adds the node CA to the trust.
	nodeAuth, err := buildNodeAuthority(cfg, trust, st, auditLog, refusals, revocations, alerter, backend.ready, log)
	if err != nil {
		return err
	}
	approvals, err := broker.NewApprovals(broker.ApprovalsDeps{
		Store: st, Audit: auditLog, NewID: newIssuanceID, Log: log, Approvers: approversText(cfg),
		Alerts: alerter, MaxOpenTotal: cfg.Limits.OpenApprovals,
	})
	if err != nil {
		return err
	}
	svc, err := broker.NewService(broker.ServiceDeps{
		Profiles: profiles,
		Policy:   pol,
		Limiter:  limiter,
		Ledger:   ledger,
		Audit:    auditLog,
		NewID:    newIssuanceID,
		Log:      log,
		Metrics:  metrics,
		Refusals: refusals,

		Revocations: revIndex,
		Watches:     watches,
		Approvals:   approvals,
		Alerts:      alerter,
	})
	if err != nil {
		return err
	}
	// A nil interface, not a nil *NodeAuthority, when node attestation is off.
	var nodeService credbrokerv1.NodeServiceServer
	var nodeAdmin broker.NodeAdmin
	gateOpts := []broker.GateOption{broker.WithAdminJWTSVID(cfg.Admin.AllowJWTSVID), broker.WithRateLimits(rateLimits), broker.WithRefusals(refusals),
		broker.WithRevocationCheck(revIndex)}
	if nodeAuth != nil {
		nodeService, nodeAdmin = nodeAuth, nodeAuth
		gateOpts = append(gateOpts, broker.WithEvictionCheck(nodeAuth.Evicted))
	}
	admin := broker.NewAdmin(auditLog, nodeAdmin, broker.WithRevocations(revocations, st), broker.WithDecisions(svc), broker.WithApprovals(approvals),
		broker.WithSigningKeys(issuerSet.keyRings(), auditLog, alerter))
	gate := broker.NewGate(trust.authenticators(cfg), cfg.Admin.SPIFFEIDs, auditLog, metrics, log, gateOpts...)
	// Health: NOT_SERVING until the first check passes, and from the start
	// of shutdown on.
	health := broker.NewHealth(0)
	ready := &readiness{svid: trust.svidSource, probeAudit: probeAuditDB(db), probeState: backend.ready, now: time.Now, status: health, log: log}
	ready.check()
	serverOpts := []broker.ServerOption{broker.WithHealth(health)}
	if cfg.GRPCReflection {
		serverOpts = append(serverOpts, broker.WithReflection())
	}
	grpcServer := broker.NewGRPCServer(trust.serverTLS(), gate, svc, nodeService, admin, serverOpts...)
	var healthServer *grpc.Server
	if healthLis != nil {
		healthServer = broker.NewHealthServer(health, log, metrics, rateLimits)
	}
	adminServer := broker.NewAdminSocketServer(adminUIDs(cfg), admin, log, metrics, rateLimits, refusals)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	for _, h := range issuerSet.handlers {
		// The issuer serves discovery under its issuer URL's path, whatever it is.
		mux.Handle("/", h)
	}
	// Headers bounded as on the gRPC listener (net/http would take 1 MiB).
	// Idle keep-alive connections are closed after a while, so a client
	// that made one request does not hold its connection for ever.
	httpServer := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: httpIdleTimeout, MaxHeaderBytes: broker.MaxHeaderBytes}

	log.Info("serving",
		slog.String("grpc", cfg.Listen), slog.String("http", cfg.HTTPListen),
		slog.String("health", cfg.HealthListen), slog.Bool("grpc_reflection", cfg.GRPCReflection),
		slog.String("admin_socket", cfg.Admin.Socket), slog.String("trust_domain", cfg.TrustDomain),
		slog.String("spiffe_id", self.ID.String()), slog.Bool("dev", opts.Dev))
	if opts.Dev {
		printDevBanner(opts, cfg, trust)
	}

	g, gctx := errgroup.WithContext(ctx)
	if anchor != nil {
		g.Go(func() error { anchor.run(gctx.Done()); return nil })
	}
	switch {
	case trust.workload != nil:
		g.Go(func() error {
			t := time.NewTicker(expiryCheckInterval)
			defer t.Stop()
			trust.watchWorkloadAPI(gctx, t.C, time.Now, log)
			return nil
		})
	case !opts.Dev:
		g.Go(func() error {
			trust.watch(gctx, cfg, cfg.TLS.ReloadInterval, opts.Reload, time.Now, log)
			return nil
		})
	}
	g.Go(func() error {
		t := time.NewTicker(cfg.HousekeepingInterval)
		defer t.Stop()
		hk := append(purges(gctx, st), purge{"expired approvals", func(now time.Time) (int, error) { return approvals.Expire(gctx, now) }})
		if awsRev != nil {
			hk = append(hk, awsRev.purge())
		}
		hk = append(hk, auditPurges(cfg.Audit, auditLog)...)
		housekeeper{purges: hk, now: time.Now, log: log}.run(gctx.Done(), t.C)
		return nil
	})
	g.Go(func() error { flushRefusals(gctx.Done(), refusals, refusalFlushInterval, log); return nil })
	g.Go(func() error {
		t := time.NewTicker(readinessInterval)
		defer t.Stop()
		// The shared state's check follows its probes, so that readiness
		// turns within a probe interval of the state, both ways.
		var stateTick <-chan time.Time
		if backend.ready != nil {
			st := time.NewTicker(backend.readyEvery)
			defer st.Stop()
			stateTick = st.C
		}
		ready.run(gctx.Done(), t.C, stateTick)
		return nil
	})
	g.Go(func() error {
		t := time.NewTicker(cfg.Alerts.Rules.AuditVerify.Interval)
		defer t.Stop()
		alerter.RunAuditVerify(gctx, auditLog, t.C)
		return nil
	})
	for _, ap := range awsAppliers {
		g.Go(func() error { ap.Run(gctx); return nil })
	}
	if awsRev != nil {
		awsRev.sync() // entries that ended while the broker was down leave the roles now
	}
	for _, run := range issuerSet.runners {
		g.Go(func() error { run(gctx); return nil })
	}
	// Connections are bounded before any request: open at once and accepted
	// per second, per source address and in all (the admin socket is
	// bounded by its file mode and peer uid check).
	grpcConns, err := broker.LimitConnections(grpcLis, "grpc", broker.GRPCConnLimits(cfg.Limits.Connections), metrics, time.Now)
	if err != nil {
		return err
	}
	httpConns, err := broker.LimitConnections(httpLis, "http", broker.DefaultHTTPConnLimits, metrics, time.Now)
	if err != nil {
		return err
	}
	g.Go(func() error { return serveGRPC(grpcServer, grpcConns) })
	g.Go(func() error { return serveGRPC(adminServer, adminLis) })
	if healthServer != nil {
		healthConns, err := broker.LimitConnections(healthLis, "health", broker.DefaultHTTPConnLimits, metrics, time.Now)
		if err != nil {
			return err
		}
		g.Go(func() error { return serveGRPC(healthServer, healthConns) })
	}
	g.Go(func() error {
		if err := httpServer.Serve(httpConns); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", slog.Duration("grace", cfg.ShutdownGrace))
		health.Stop()  // NOT_SERVING from now on; health watches end
		admin.Stop()   // audit followers would hold a graceful stop open
		watches.Stop() // and so would revocation watches
		shutdown(grpcServer, cfg.ShutdownGrace)
		shutdown(adminServer, cfg.ShutdownGrace)
		if healthServer != nil {
			shutdown(healthServer, cfg.ShutdownGrace)
		}
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
		defer cancel()
		return httpServer.Shutdown(sctx)
	})
	err = g.Wait()
	// The servers have stopped: write the summaries of refusals left out, so
	// that the audit log accounts for every one.
	if ferr := refusals.Flush(); ferr != nil {
		log.Error("recording the summary of refusals left out", slog.String("error", ferr.Error()))
	}
	if anchor != nil {
		// Nothing is appended any more: anchor the head the broker stops at.
		actx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
		anchor.final(actx)
		cancel()
	}
	log.Info("stopped")
	return err
}

// flushRefusals writes the pending summaries of refusals every interval.
func flushRefusals(done <-chan struct{}, r *broker.Refusals, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if err := r.Flush(); err != nil {
				log.Error("recording the summary of refusals left out", slog.String("error", err.Error()))
			}
		}
	}
}

func loadConfig(opts Options) (*config.Config, error) {
	var cfg *config.Config
	var err error
	switch {
	case opts.Dev && opts.ConfigFile != "":
		// Dev identity (own CA, demo SVIDs) with the file's issuers, profiles
		// and policy: for trying real issuers locally.
		if cfg, err = config.LoadFile(opts.ConfigFile); err == nil && (cfg.TLS.SVIDFile != "" || cfg.TLS.WorkloadAPISocket != "" || len(cfg.TLS.Bundles) > 0 || len(cfg.TLS.JWTBundles) > 0) {
			return nil, errors.New("--dev provides the broker's identity and trust: remove tls.* from the file, or drop --dev")
		}
	case opts.Dev:
		cfg, err = config.Parse(bytesReader(config.DevYAML()))
	case opts.ConfigFile == "":
		return nil, errors.New("no configuration: pass --config FILE, or --dev to try the broker locally")
	default:
		cfg, err = config.LoadFile(opts.ConfigFile)
	}
	if err != nil {
		return nil, err
	}
	if opts.DataDir != "" {
		cfg.DataDir = opts.DataDir
	}
	if opts.Listen != "" {
		cfg.Listen = opts.Listen
	}
	if opts.HTTPListen != "" {
		cfg.HTTPListen = opts.HTTPListen
	}
	if !opts.Dev && cfg.TLS.SVIDFile == "" && cfg.TLS.WorkloadAPISocket == "" {
		return nil, errors.New("config: the broker needs an identity outside --dev: set tls.workload_api_socket, or tls.svid_file and tls.svid_key_file")
	}
	return cfg, nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// listenUnix opens the admin socket with mode 0600, replacing a stale socket
// file left by a previous run.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket: %s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket: %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return lis, nil
}

func adminUIDs(cfg *config.Config) []uint32 {
	if len(cfg.Admin.UnixUIDs) == 0 {
		// The broker's own user, and root (who can read the database anyway).
		if uid := uint32(os.Getuid()); uid != 0 {
			return []uint32{uid, 0}
		}
		return []uint32{0}
	}
	uids := make([]uint32, 0, len(cfg.Admin.UnixUIDs))
	for _, u := range cfg.Admin.UnixUIDs {
		uids = append(uids, uint32(u))
	}
	return uids
}

// approversText says who may approve, for the message a caller waiting for
// approval gets: the admin SPIFFE IDs (the first few) and the admin socket's
// uids.
func approversText(cfg *config.Config) string {
	var parts []string
	if ids := cfg.Admin.SPIFFEIDs; len(ids) > 0 {
		shown := ids[:min(len(ids), 3)]
		more := ""
		if len(ids) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(ids)-len(shown))
		}
		parts = append(parts, "an admin SPIFFE ID ("+strings.Join(shown, ", ")+more+") over mTLS")
	}
	uids := adminUIDs(cfg)
	us := make([]string, len(uids))
	for i, u := range uids {
		us[i] = strconv.FormatUint(uint64(u), 10)
	}
	parts = append(parts, "a user with uid "+strings.Join(us, " or ")+" on the admin socket "+cfg.Admin.Socket)
	return "an admin other than the requester — " + strings.Join(parts, ", or ") + " —"
}

func serveGRPC(s *grpc.Server, lis net.Listener) error {
	if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// shutdown drains in-flight RPCs, then cuts off whatever is still running
// after grace.
func shutdown(s *grpc.Server, grace time.Duration) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.Stop()
		<-done
	}
}

func newIssuanceID() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// serverTLSConfig is the broker's TLS configuration: its own SVID (from
// go-spiffe's tlsconfig, read from source on every handshake, so rotations
// apply to new connections), TLS 1.3, and client certificates requested but
// verified by the Gate, per request, not in the handshake.
func serverTLSConfig(source x509svid.Source) *tls.Config {
	c := tlsconfig.TLSServerConfig(source)
	c.MinVersion = tls.VersionTLS13
	c.ClientAuth = tls.RequestClientCert
	return c
}

// purge deletes one kind of state that has ended by now and says how much.
type purge struct {
	what string
	run  func(now time.Time) (int, error)
}

// purges are what housekeeping deletes from st, whether or not node
// attestation is on: ended quota windows, expired join tokens, nodes whose
// SVID expired (evicted ones stay), and revocations that cover nothing any
// more (their until passed, or the credential they cover expired).
func purges(ctx context.Context, st state.Store) []purge {
	return []purge{
		{"ended quota windows", func(now time.Time) (int, error) { return st.PurgeQuotas(ctx, now) }},
		{"expired join tokens", func(now time.Time) (int, error) { return st.PurgeJoinTokens(ctx, now) }},
		{"expired nodes", func(now time.Time) (int, error) { return st.PurgeNodes(ctx, now) }},
		{"ended revocations", func(now time.Time) (int, error) { return st.PurgeRevocations(ctx, now) }},
	}
}

// housekeeper runs every purge at each tick, with the time of its clock.
type housekeeper struct {
	purges []purge
	now    func() time.Time
	log    *slog.Logger
	// swept, when set, is called after each round (tests wait on it).
	swept func()
}

// run sweeps at every tick until done closes.
func (h housekeeper) run(done <-chan struct{}, tick <-chan time.Time) {
	for {
		select {
		case <-done:
			return
		case <-tick:
			now := h.now()
			for _, p := range h.purges {
				if n, err := p.run(now); err != nil {
					h.log.Error("purging "+p.what, slog.String("error", err.Error()))
				} else if n > 0 {
					h.log.Info("purged "+p.what, slog.Int("count", n))
				}
			}
			if h.swept != nil {
				h.swept()
			}
		}
	}
}
