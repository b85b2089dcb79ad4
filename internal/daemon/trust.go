package daemon

import (
	"fmt"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"crypto/tls"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jwtsvid"
	attestx509 "github.com/credbroker/credbroker/attest/x509svid"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/internal/devenv"
)

// trust is the broker's own SVID and the bundles it verifies callers with.
type trust struct {
	x509 *x509bundle.Set
	jwt  *jwtbundle.Set
	svid atomic.Pointer[x509svid.SVID]
	dev  *devenv.Env
}

func loadTrust(cfg *config.Config, dev bool) (*trust, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	t := &trust{x509: x509bundle.NewSet(), jwt: jwtbundle.NewSet()}
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

	svid, err := x509svid.Load(cfg.TLS.SVIDFile, cfg.TLS.SVIDKeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: broker SVID: %w", err)
	}
	if svid.ID.TrustDomain() != td {
		return nil, fmt.Errorf("tls: broker SVID %s is not in trust domain %q", svid.ID, td)
	}
	t.svid.Store(svid)
	for name, path := range cfg.TLS.Bundles {
		b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(name), path)
		if err != nil {
			return nil, fmt.Errorf("tls.bundles[%s]: %w", name, err)
		}
		t.x509.Add(b)
	}
	for name, path := range cfg.TLS.JWTBundles {
		b, err := jwtbundle.Load(spiffeid.RequireTrustDomainFromString(name), path)
		if err != nil {
			return nil, fmt.Errorf("tls.jwt_bundles[%s]: %w", name, err)
		}
		t.jwt.Add(b)
	}
	if !t.x509.Has(td) {
		return nil, fmt.Errorf("tls.bundles has no bundle for the broker's own trust domain %q", td)
	}
	return t, nil
}

// authenticators returns the caller verifiers in the order they are tried: a
// JWT-SVID in metadata first (it is an explicit choice by the caller), then
// the mTLS peer certificate.
func (t *trust) authenticators(cfg *config.Config) []attest.Authenticator {
	return []attest.Authenticator{
		jwtsvid.New(t.jwt, cfg.JWTSVIDAudiences),
		attestx509.New(t.x509),
	}
}

func (t *trust) serverTLS() *tls.Config {
	return serverTLSConfig(t.svid.Load)
}
