package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jwtsvid"
	attestx509 "github.com/credbroker/credbroker/attest/x509svid"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/internal/devenv"
	"github.com/credbroker/credbroker/internal/svidsource"
)

// trust is the broker's own SVID and the bundles it verifies callers with.
// They come from one of three places: the dev CA (--dev), files (re-read on
// rotation), or the SPIFFE Workload API (pushed by the agent).
type trust struct {
	// Sources the broker reads on every handshake and request.
	x509Source x509bundle.Source
	jwtSource  jwtbundle.Source
	svidSource x509svid.Source

	// Files and dev mode keep the current state here.
	x509 *x509bundle.Set
	jwt  *jwtbundle.Set
	svid atomic.Pointer[x509svid.SVID]
	dev  *devenv.Env

	// Workload API mode.
	workload *workloadapi.X509Source
	closers  []io.Closer
}

// GetX509SVID implements x509svid.Source over the file or dev state.
func (t *trust) GetX509SVID() (*x509svid.SVID, error) { return t.svid.Load(), nil }

func loadTrust(ctx context.Context, cfg *config.Config, dev bool) (*trust, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	t := &trust{x509: x509bundle.NewSet(), jwt: jwtbundle.NewSet()}
	t.x509Source, t.jwtSource, t.svidSource = t.x509, t.jwt, t
	if cfg.TLS.WorkloadAPISocket != "" && !dev {
		return t, t.connectWorkloadAPI(ctx, cfg, td)
	}
	if dev {
		env, err := devenv.Prepare(cfg.DataDir, td)
		if err != nil {
			return nil, err
		}
		t.dev = env
		t.svid.Store(env.ServerSVID)
		t.x509.Add(env.CA.X509Bundle())
		t.jwt.Add(env.CA.JWTBundle())
		return t, nil
	}

	if err := t.loadFiles(cfg, td); err != nil {
		return nil, err
	}
	return t, nil
}

// loadFiles reads the broker's SVID and the configured bundles, and installs
// them only if every file is good: a half-written rotation keeps the
// previous, working state.
func (t *trust) loadFiles(cfg *config.Config, td spiffeid.TrustDomain) error {
	svid, err := x509svid.Load(cfg.TLS.SVIDFile, cfg.TLS.SVIDKeyFile)
	if err != nil {
		return fmt.Errorf("tls: broker SVID: %w", err)
	}
	if svid.ID.TrustDomain() != td {
		return fmt.Errorf("tls: broker SVID %s is not in trust domain %q", svid.ID, td)
	}
	if want := cfg.TLS.SPIFFEID; want != "" && svid.ID.String() != want {
		return fmt.Errorf("tls: %s holds an SVID for %s, not tls.spiffe_id %s", cfg.TLS.SVIDFile, svid.ID, want)
	}
	var x509s []*x509bundle.Bundle
	for name, path := range cfg.TLS.Bundles {
		b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(name), path)
		if err != nil {
			return fmt.Errorf("tls.bundles[%s]: %w", name, err)
		}
		x509s = append(x509s, b)
	}
	var jwts []*jwtbundle.Bundle
	for name, path := range cfg.TLS.JWTBundles {
		b, err := jwtbundle.Load(spiffeid.RequireTrustDomainFromString(name), path)
		if err != nil {
			return fmt.Errorf("tls.jwt_bundles[%s]: %w", name, err)
		}
		jwts = append(jwts, b)
	}
	if !slices.ContainsFunc(x509s, func(b *x509bundle.Bundle) bool { return b.TrustDomain() == td }) {
		return fmt.Errorf("tls.bundles has no bundle for the broker's own trust domain %q", td)
	}
	t.svid.Store(svid)
	for _, b := range x509s {
		t.x509.Add(b)
	}
	for _, b := range jwts {
		t.jwt.Add(b)
	}
	return nil
}

// connectWorkloadAPI takes the broker's SVID and the X.509 bundles from an
// X509Source and the JWT bundles from a BundleSource on the agent's socket.
// Both follow rotations pushed by the agent.
func (t *trust) connectWorkloadAPI(ctx context.Context, cfg *config.Config, td spiffeid.TrustDomain) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.TLS.WorkloadAPITimeout)
	defer cancel()
	var opts []svidsource.WorkloadOption
	if cfg.TLS.SPIFFEID != "" {
		opts = append(opts, svidsource.WithSPIFFEID(spiffeid.RequireFromString(cfg.TLS.SPIFFEID))) // validated
	}
	// svidsource says why no identity came (missing socket, no
	// registration entry, another ID), not only that the wait ended.
	x509Source, err := svidsource.FromWorkloadAPI(ctx, cfg.TLS.WorkloadAPISocket, opts...)
	if err != nil {
		return fmt.Errorf("tls.workload_api_socket: %w", err)
	}
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr(cfg.TLS.WorkloadAPISocket))
	t.closers = append(t.closers, x509Source)
	bundles, err := workloadapi.NewBundleSource(ctx, addr)
	if err != nil {
		t.close()
		return fmt.Errorf("tls.workload_api_socket %s: %w", cfg.TLS.WorkloadAPISocket, err)
	}
	t.closers = append(t.closers, bundles)
	svid, err := x509Source.GetX509SVID()
	if err != nil {
		t.close()
		return fmt.Errorf("tls.workload_api_socket: %w", err)
	}
	if svid.ID.TrustDomain() != td {
		t.close()
		return fmt.Errorf("tls.workload_api_socket: the agent gives the broker %s, not an identity in trust domain %q", svid.ID, td)
	}
	t.workload = x509Source
	t.x509Source, t.jwtSource, t.svidSource = x509Source, bundles, x509Source
	return nil
}

// close releases Workload API connections.
func (t *trust) close() {
	for _, c := range t.closers {
		c.Close()
	}
	t.closers = nil
}

// watchWorkloadAPI logs every identity update the agent pushes, and warns
// when the SVID in use is near its expiry without one (expiryWarning),
// checking at every tick with the time of now.
func (t *trust) watchWorkloadAPI(ctx context.Context, tick <-chan time.Time, now func() time.Time, log *slog.Logger) {
	var warn expiryWarning
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.workload.Updated():
			svid, err := t.workload.GetX509SVID()
			if err != nil {
				// tls.spiffe_id is no longer among the agent's SVIDs: the
				// broker keeps no identity, and health says NOT_SERVING.
				log.Error("the Workload API no longer gives the broker its identity", slog.String("error", err.Error()))
				continue
			}
			log.Info("identity updated from the Workload API", slog.String("spiffe_id", svid.ID.String()), slog.Time("svid_expires", svid.Certificates[0].NotAfter))
		case <-tick:
			t.warnUnrotated(&warn, now(), log, "the broker's SVID expires soon and the Workload API has not rotated it")
		}
	}
}

// warnUnrotated warns, as w decides, that the SVID in use is near expiry.
func (t *trust) warnUnrotated(w *expiryWarning, now time.Time, log *slog.Logger, msg string, attrs ...any) {
	svid, err := t.svidSource.GetX509SVID()
	if err != nil || svid == nil {
		return // readiness reports a missing SVID
	}
	leaf := svid.Certificates[0]
	if w.due(now, leaf) {
		log.Warn(msg, append([]any{slog.String("spiffe_id", svid.ID.String()), slog.Time("svid_expires", leaf.NotAfter),
			slog.Duration("expires_in", leaf.NotAfter.Sub(now).Round(time.Second)), slog.Duration("lifetime", leaf.NotAfter.Sub(leaf.NotBefore))}, attrs...)...)
	}
}

// watch reloads the SVID and bundle files every interval and on SIGHUP, so
// that rotations by the SPIFFE issuer (e.g. a SPIRE agent writing files) take
// effect without a restart. A failed reload keeps the previous state and is
// logged; so is a broker SVID near expiry without a replacement
// (expiryWarning).
func (t *trust) watch(ctx context.Context, cfg *config.Config, interval time.Duration, hup <-chan os.Signal, now func() time.Time, log *slog.Logger) {
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var warn expiryWarning
	for {
		level := slog.LevelDebug
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-hup:
			level = slog.LevelInfo // an operator asked: confirm
		}
		if err := t.loadFiles(cfg, td); err != nil {
			log.Error("cannot reload SVID and trust bundles; keeping the previous ones", slog.String("error", err.Error()))
		} else {
			log.Log(ctx, level, "reloaded SVID and trust bundles", slog.Time("svid_expires", t.svid.Load().Certificates[0].NotAfter))
		}
		t.warnUnrotated(&warn, now(), log, "the broker's SVID expires soon and has not been rotated", slog.String("file", cfg.TLS.SVIDFile))
	}
}

// authenticators returns the caller verifiers. The Gate runs all of them:
// evidence of both kinds must name the same identity (see broker.Gate).
func (t *trust) authenticators(cfg *config.Config) []attest.Authenticator {
	return []attest.Authenticator{
		jwtsvid.New(t.jwtSource, cfg.JWTSVIDAudiences, jwtsvid.WithMaxLifetime(cfg.JWTSVIDMaxLifetime)),
		attestx509.New(t.x509Source),
	}
}

func (t *trust) serverTLS() *tls.Config {
	return serverTLSConfig(t.svidSource)
}
