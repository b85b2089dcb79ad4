package daemon

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/attest/awsiid"
	"github.com/credbroker/credbroker/attest/psat"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/nodeauth"
	"github.com/credbroker/credbroker/internal/ca"
)

// defaultPSATAudience is what projected tokens for the broker carry unless
// configured otherwise.
const defaultPSATAudience = "credbroker"

// buildNodeAuthority wires node attestation when the configuration asks for
// it: the configured verifiers and the node CA, with join tokens and the
// node registry kept in st. current (nil on bbolt) fails while the shared
// state is not current, and then no node SVID is issued. It also makes the
// broker trust the node CA for its own trust domain.
func buildNodeAuthority(cfg *config.Config, t *trust, st nodeauth.State, auditLog *audit.Log, refusals *broker.Refusals, revocations nodeauth.Revoker, alerter nodeauth.Alerter, current func() error, log *slog.Logger) (*nodeauth.NodeAuthority, error) {
	na := cfg.NodeAttestation
	if na == nil {
		return nil, nil
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	nodeCA, err := loadNodeCA(na.CADir, td, t)
	if err != nil {
		return nil, err
	}
	t.x509Source = withAuthority{src: t.x509Source, td: td, cert: nodeCA.Certificate()}

	deps := nodeauth.NodeDeps{
		TrustDomain: td,
		State:       st,
		CA:          nodeCA,
		Bundle: func() ([]*x509.Certificate, error) {
			b, err := t.x509Source.GetX509BundleForTrustDomain(td)
			if err != nil {
				return nil, err
			}
			return b.X509Authorities(), nil
		},
		Audit:    auditLog,
		SVIDTTL:  na.SVIDTTL,
		NewID:    newIssuanceID,
		Log:      log,
		Refusals: refusals,

		Revocations: revocations,
		Alerts:      alerter,
		Current:     current,
	}
	if p := na.K8sPSAT; p != nil {
		clusters := map[string]psat.ClusterConfig{}
		for name, c := range p.Clusters {
			cc := psat.ClusterConfig{Issuer: c.Issuer, Audience: c.Audience, ServiceAccounts: c.ServiceAccounts}
			if cc.Audience == "" {
				cc.Audience = defaultPSATAudience
			}
			if c.JWKSFile != "" {
				if cc.JWKS, err = os.ReadFile(c.JWKSFile); err != nil {
					return nil, fmt.Errorf("node_attestation.k8s_psat.clusters[%s].jwks_file: %w", name, err)
				}
			} else {
				cc.DiscoveryURL = strings.TrimSuffix(c.Issuer, "/") + "/.well-known/openid-configuration"
			}
			clusters[name] = cc
		}
		v, err := psat.New(clusters)
		if err != nil {
			return nil, fmt.Errorf("node_attestation.k8s_psat: %w", err)
		}
		deps.PSAT = v
	}
	if a := na.AWSIID; a != nil {
		certs, err := loadCertificates(a.Certificates)
		if err != nil {
			return nil, fmt.Errorf("node_attestation.aws_iid.certificates: %w", err)
		}
		accounts := map[string]awsiid.AccountConfig{}
		for id, acct := range a.Accounts {
			accounts[id] = awsiid.AccountConfig{Regions: acct.Regions, Clusters: acct.Clusters}
		}
		v, err := awsiid.New(awsiid.Config{Certificates: certs, Accounts: accounts, MaxAge: a.MaxAge})
		if err != nil {
			return nil, fmt.Errorf("node_attestation.aws_iid: %w", err)
		}
		deps.IID = v
	}
	return nodeauth.New(deps)
}

// loadNodeCA returns the CA that signs node SVIDs: the dev CA in --dev, else
// the CA kept in dir, created on first start.
func loadNodeCA(dir string, td spiffeid.TrustDomain, t *trust) (*ca.CA, error) {
	if t.dev != nil {
		return t.dev.CA, nil
	}
	c, err := ca.Load(dir)
	if err == nil {
		if c.TrustDomain() != td {
			return nil, fmt.Errorf("node_attestation.ca_dir %s holds a CA for %q, not %q", dir, c.TrustDomain(), td)
		}
		return c, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node_attestation.ca_dir: %w", err)
	}
	if c, err = ca.New(td); err != nil {
		return nil, err
	}
	if err := c.Save(dir); err != nil {
		return nil, fmt.Errorf("node_attestation.ca_dir: %w", err)
	}
	return c, nil
}

func loadCertificates(paths []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no certificates found")
	}
	return out, nil
}

// withAuthority adds one authority (the node CA) to the bundle of td that
// src returns, so node SVIDs verify wherever the broker verifies callers.
type withAuthority struct {
	src  x509bundle.Source
	td   spiffeid.TrustDomain
	cert *x509.Certificate
}

func (w withAuthority) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := w.src.GetX509BundleForTrustDomain(td)
	if td != w.td {
		return b, err
	}
	if err != nil {
		return x509bundle.FromX509Authorities(td, []*x509.Certificate{w.cert}), nil
	}
	if b.HasX509Authority(w.cert) {
		return b, nil
	}
	c := b.Clone()
	c.AddX509Authority(w.cert)
	return c, nil
}
