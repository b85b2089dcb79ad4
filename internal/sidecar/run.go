package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ShutdownTimeout bounds how long Run waits for requests in progress after
// ctx ends.
const ShutdownTimeout = 5 * time.Second

// Options configure Run.
type Options struct {
	// Broker is the broker's gRPC address; BrokerID, when set, the exact
	// SPIFFE ID it must present. SVIDs and Bundles are the sidecar's own
	// identity (see internal/svidsource). Run dials with
	// brokerclient.DialSource through a Redialer. Ignored when Upstream is set.
	Broker   string
	BrokerID string
	SVIDs    x509svid.Source
	Bundles  x509bundle.Source
	// Upstream, when set, is used instead of dialing Broker (tests).
	Upstream Upstream

	// Credentials to serve; at least one, names unique.
	Credentials []Spec
	// Listen is a loopback HOST:PORT (see CheckListen); port 0 picks one.
	Listen string
	// MetricsListen, when set, is a HOST:PORT of its own (see
	// CheckMetricsListen) where a second server answers GET /metrics and
	// GET /healthz only (Handler.MonitorHandler), for Prometheus and the
	// kubelet: it never serves credentials.
	MetricsListen string
	// Token is what the Authorization header must hold.
	Token string
	// CredentialsFile, when set, is kept as an AWS shared-credentials file.
	CredentialsFile string
	// RefreshAt is the lifetime fraction at which to refresh (0: default).
	RefreshAt float64
	// NoWatch turns off the revocation watch (see Watcher); a revoked
	// credential is then served until the next refresh is refused.
	NoWatch bool
	// ServedLifetime, when positive, caps the expiry the endpoint tells the
	// SDK (see WithServedLifetime).
	ServedLifetime time.Duration

	// Clock and Rand default to the real ones; Logger to slog.Default().
	Clock  Clock
	Rand   func() float64
	Logger *slog.Logger
	// Listening, when set, is called with the bound address once the
	// endpoint accepts connections (also logged as msg=serving addr=...).
	Listening func(net.Addr)
	// MetricsListening, likewise for MetricsListen (logged as msg="serving
	// metrics"). The metrics listener is up before the first credential
	// requests are made, so a slow start is seen and scraped.
	MetricsListening func(net.Addr)
}

// Bounds of both HTTP servers: a client cannot hold a connection open by
// sending slowly, nor fill memory with headers (the AWS SDKs send a few
// hundred bytes).
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = time.Minute
	maxHeaderBytes    = 16 << 10
)

// Bounds of the metrics server, which the pod network reaches: a request is
// read and answered within these, and it holds at most maxMetricsConns
// connections (more wait in the kernel's accept queue). Prometheus and the
// kubelet need one or two.
const (
	metricsReadTimeout  = 10 * time.Second
	metricsWriteTimeout = 30 * time.Second
	maxMetricsConns     = 16
)

func newServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes}
}

// Run fetches every credential once, serves them on Listen, and keeps them
// fresh until ctx ends, then shuts down gracefully and returns nil. With
// MetricsListen it serves metrics and health there too, from before the
// first fetch on.
//
// Startup: a broker answer that will not change by retrying —
// PermissionDenied, Unauthenticated, InvalidArgument, NotFound,
// Unimplemented, or a profile that does not issue AWS credentials — makes
// Run return an error before serving. REVOKED does not: Run serves the
// refusal (403) and asks again with backoff, and at once when the lift is
// seen. Anything else (Unavailable, deadline,
// ResourceExhausted, FailedPrecondition such as a pending approval) is
// logged, and Run serves anyway and keeps retrying in the background;
// /healthz answers 503 until every credential is held.
func Run(ctx context.Context, o Options) error {
	if err := o.check(); err != nil {
		return err
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	clock := o.Clock
	if clock == nil {
		clock = RealClock()
	}

	up := o.Upstream
	if up == nil {
		rd := NewRedialer(o.SVIDs, func() (*grpc.ClientConn, error) {
			return brokerclient.DialSource(o.Broker, o.SVIDs, o.Bundles, o.BrokerID)
		})
		defer rd.Close()
		up = rd
	}

	metrics := NewMetrics(clock)
	var file *CredentialsFile
	if o.CredentialsFile != "" {
		file = NewCredentialsFile(o.CredentialsFile)
	}
	var watcher *Watcher // set before the first refresh
	observe := func(spec Spec, c Credential, err error) {
		metrics.Observe(spec, c, err)
		if err != nil {
			if id := approvalWaited(err); id != "" {
				// Said plainly: the broker's message names who can approve
				// and how; the refresher keeps asking with backoff.
				log.Warn("waiting for two-person approval", "credential", spec.Name, "approval_id", id,
					"approvals", brokerclient.Metadata(err, "approvals"), "approvers_needed", brokerclient.Metadata(err, "approvers_needed"),
					"expires_at", brokerclient.Metadata(err, "expires_at"), "how", describe(err))
				return
			}
			log.Warn("refresh failed", "credential", spec.Name, "error", describe(err))
			return
		}
		log.Info("refreshed", "credential", spec.Name, "access_key_id", c.AccessKeyID, "issuance_id", c.IssuanceID, "expires", c.Expiration.UTC())
		if file != nil {
			if err := file.Update(spec.Name, c); err != nil {
				log.Error("writing credentials file", "error", err)
			}
		}
		if watcher != nil {
			watcher.Renewed()
		}
	}
	dropped := func(spec Spec, n Notice) {
		log.Warn("credential revoked; no longer served", "credential", spec.Name, "revocation_id", n.RevocationID, "revoked_by", n.Admin, "why", n.Message)
		if file != nil {
			if err := file.Remove(spec.Name); err != nil {
				log.Error("writing credentials file", "error", err)
			}
		}
	}
	opts := []Option{WithClock(clock), WithObserver(observe), WithDropped(dropped)}
	if o.Rand != nil {
		opts = append(opts, WithRand(o.Rand))
	}
	if o.RefreshAt != 0 {
		opts = append(opts, WithRefreshAt(o.RefreshAt))
	}
	refreshers := make([]*Refresher, 0, len(o.Credentials))
	for _, spec := range o.Credentials {
		r, err := NewRefresher(spec, up, opts...)
		if err != nil {
			return err
		}
		refreshers = append(refreshers, r)
	}
	if src, ok := up.(RevocationSource); ok && !o.NoWatch {
		watcher = NewWatcher(src, refreshers, log)
	}
	metrics.Watch(refreshers...)
	handler, err := NewHandler(o.Token, refreshers, metrics.Handler(), WithServedLifetime(o.ServedLifetime, clock.Now))
	if err != nil {
		return err
	}

	srvs := servers{served: make(chan error, 2)}
	if o.MetricsListen != "" {
		lis, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			return fmt.Errorf("sidecar: metrics: %w", err)
		}
		srv := newServer(handler.MonitorHandler(metrics.Handler()))
		srv.ReadTimeout, srv.WriteTimeout = metricsReadTimeout, metricsWriteTimeout
		srvs.serve(netutil.LimitListener(lis, maxMetricsConns), srv)
		log.Info("serving metrics", "addr", lis.Addr().String())
		if o.MetricsListening != nil {
			o.MetricsListening(lis.Addr())
		}
	}

	if err := fetchAll(ctx, refreshers, log); err != nil {
		srvs.shutdown(ctx)
		return err
	}

	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		srvs.shutdown(ctx)
		return fmt.Errorf("sidecar: %w", err)
	}
	// Belt and braces: what was bound, not only what was asked for.
	if err := CheckListen(lis.Addr().String()); err != nil {
		lis.Close()
		srvs.shutdown(ctx)
		return err
	}

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	var loops sync.WaitGroup
	for _, r := range refreshers {
		loops.Go(func() { r.Run(loopCtx) })
	}
	if watcher != nil {
		loops.Go(func() { watcher.Run(loopCtx) })
	}
	srvs.serve(lis, newServer(handler))
	log.Info("serving", "addr", lis.Addr().String(), "credentials", len(refreshers))
	if o.Listening != nil {
		o.Listening(lis.Addr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-srvs.served:
	}
	stopLoops()
	if err := srvs.shutdown(ctx); err != nil && serveErr == nil {
		serveErr = err
	}
	loops.Wait()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("sidecar: serving: %w", serveErr)
	}
	log.Info("stopped")
	return nil
}

// servers are the HTTP servers Run has started; served receives the end of
// each one's Serve (its capacity is their number, so none blocks).
type servers struct {
	list   []*http.Server
	served chan error
}

func (s *servers) serve(lis net.Listener, srv *http.Server) {
	s.list = append(s.list, srv)
	go func() { s.served <- srv.Serve(lis) }()
}

// shutdown stops every server gracefully, waiting at most ShutdownTimeout
// for requests in progress even when ctx has ended.
func (s *servers) shutdown(ctx context.Context) error {
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	var errs []error
	for _, srv := range s.list {
		errs = append(errs, srv.Shutdown(shutCtx))
	}
	return errors.Join(errs...)
}

func (o Options) check() error {
	switch {
	case o.Upstream == nil && (o.Broker == "" || o.SVIDs == nil || o.Bundles == nil):
		return errors.New("sidecar: a broker address and an identity (SVID and bundle sources) are required")
	case len(o.Credentials) == 0:
		return errors.New("sidecar: at least one credential is required")
	case o.Token == "":
		return errors.New("sidecar: authorization token is required")
	}
	if err := CheckListen(o.Listen); err != nil {
		return err
	}
	if o.MetricsListen != "" {
		return CheckMetricsListen(o.MetricsListen, o.Listen)
	}
	return nil
}

// fetchAll makes the first request for every credential at once.
func fetchAll(ctx context.Context, rs []*Refresher, log *slog.Logger) error {
	var g errgroup.Group
	for _, r := range rs {
		g.Go(func() error {
			_, err := r.Refresh(ctx)
			switch {
			case err == nil:
				return nil
			case ctx.Err() != nil:
				return ctx.Err()
			case brokerclient.Reason(err) == credbrokerv1.ErrorReason_REVOKED:
				// An operator's decision, which a lift undoes: serve the
				// refusal (403 naming the revocation) rather than exit.
				log.Warn("revoked; serving the refusal until the revocation is lifted", "credential", r.Spec().Name, "error", describe(err))
				return nil
			case Permanent(err):
				return fmt.Errorf("sidecar: credential %q (profile %q): %s", r.Spec().Name, r.Spec().Profile, describe(err))
			default:
				log.Warn("first request failed; serving anyway and retrying", "credential", r.Spec().Name, "error", describe(err))
				return nil
			}
		})
	}
	return g.Wait()
}

// approvalWaited returns the approval a refused request waits for (reason
// APPROVAL_REQUIRED), or "".
func approvalWaited(err error) string {
	if brokerclient.Reason(err) != credbrokerv1.ErrorReason_APPROVAL_REQUIRED {
		return ""
	}
	return brokerclient.Metadata(err, "approval_id")
}

// Permanent reports whether a broker error will not go away by retrying the
// same request: the sidecar's configuration, its identity or the broker's
// policy must change first. It branches on the broker's ErrorInfo reason
// (brokerclient.Permanent); an error that is no broker status at all (e.g.
// the profile does not issue AWS credentials) is permanent.
func Permanent(err error) bool { return brokerclient.Permanent(err) }
