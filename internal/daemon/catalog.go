package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/issuers/vault"
)

// issuerSet is every configured issuer, by name, and the HTTP handlers they
// publish (OIDC discovery and JWKS).
type issuerSet struct {
	byName   map[string]issuers.Issuer
	handlers []http.Handler
	// runners keep issuers' upstream sessions alive (Vault logins) while
	// the broker serves.
	runners []func(context.Context)
	// jwtName and jwt are the local JWT issuer, if one is configured (at
	// most one: it owns the HTTP listener's discovery paths).
	jwtName string
	jwt     *jwt.Issuer
}

// forget drops from every issuer that reuses credentials those a new
// revocation covers, and has the local JWT issuer rebuild its revoked-token
// list (a state.RevocationIndex hook).
func (s *issuerSet) forget(c state.RevocationChange) {
	if s.jwt != nil {
		s.jwt.InvalidateRevoked()
	}
	if c.Removed {
		return
	}
	for _, iss := range s.byName {
		if f, ok := iss.(issuers.Forgetter); ok {
			f.Forget(broker.Forgets(c.Revocation))
		}
	}
}

// upstreamRevokers are the issuers, by name, whose credentials a revocation
// also revokes upstream (Vault).
func (s *issuerSet) upstreamRevokers() map[string]issuers.UpstreamRevoker {
	return implementing[issuers.UpstreamRevoker](s)
}

// keyRings returns the issuers with signing keys of their own (local JWT),
// by name.
func (s *issuerSet) keyRings() map[string]issuers.KeyRing { return implementing[issuers.KeyRing](s) }

// implementing returns the issuers of s that implement T, by name.
func implementing[T any](s *issuerSet) map[string]T {
	out := map[string]T{}
	for name, iss := range s.byName {
		if u, ok := iss.(T); ok {
			out[name] = u
		}
	}
	return out
}

// buildBudgets returns the upstream budget of every issuer that has one, by
// issuer name: one broker.UpstreamBudget per budget name, drawn from store
// (shared by the replicas on etcd), so that issuers naming the same budget
// (one AWS account) share it.
func buildBudgets(cfg *config.Config, store state.Budgets, m *broker.Metrics) (map[string]*broker.UpstreamBudget, error) {
	byKey := map[string]*broker.UpstreamBudget{}
	out := map[string]*broker.UpstreamBudget{}
	for name, ic := range cfg.Issuers {
		b := ic.Budget
		if b == nil {
			continue
		}
		key := b.Key(name)
		ub, ok := byKey[key]
		if !ok {
			var err error
			if ub, err = broker.NewUpstreamBudget(key, b.Spec(), b.LeaseSize(), store, nil, m); err != nil {
				return nil, fmt.Errorf("issuers.%s.budget: %w", name, err)
			}
			byKey[key] = ub
		}
		out[name] = ub
	}
	return out, nil
}

// budgetOf is issuer name's budget as an issuers.Budget: nil (not a nil
// pointer in an interface) when it has none.
func budgetOf(budgets map[string]*broker.UpstreamBudget, name string) issuers.Budget {
	if b := budgets[name]; b != nil {
		return b
	}
	return nil
}

// ttlBounded is implemented by issuers whose upstream limits lifetimes.
type ttlBounded interface {
	TTLBounds() (lo, hi time.Duration)
}

// buildIssuers is the issuer catalog: one plain constructor per type. Local
// JWT issuers come first, since an aws_sts issuer in web identity mode signs
// with one of them.
// budgets are the upstream budgets by issuer name (buildBudgets).
//
// A local JWT issuer signs with this replica's own key and publishes its
// public half through keys, under the replica's id, so every replica's JWKS
// serves every replica's keys; it publishes before the broker serves (a
// token signed with an unpublished key would not verify elsewhere).
func buildIssuers(ctx context.Context, cfg *config.Config, self string, budgets map[string]*broker.UpstreamBudget, keys state.SigningKeys, replica string, log *slog.Logger) (*issuerSet, error) {
	set := &issuerSet{byName: map[string]issuers.Issuer{}}
	jwts := map[string]*jwt.Issuer{}
	names := make([]string, 0, len(cfg.Issuers))
	for name := range cfg.Issuers {
		names = append(names, name)
	}
	// jwt < aws_sts in this order, then by name.
	sort.Slice(names, func(a, b int) bool {
		ta, tb := cfg.Issuers[names[a]].Type == config.IssuerJWT, cfg.Issuers[names[b]].Type == config.IssuerJWT
		if ta != tb {
			return ta
		}
		return names[a] < names[b]
	})
	for _, name := range names {
		ic := cfg.Issuers[name]
		switch ic.Type {
		case config.IssuerJWT:
			iss, err := jwt.New(jwt.Config{
				IssuerURL: ic.JWT.IssuerURL, KeyFile: ic.JWT.KeyFile,
				Keys: signingKeyStore{keys: keys, issuer: name}, Replica: replica,
				RotationPeriod: ic.JWT.RotationPeriod, PublishAhead: ic.JWT.PublishAhead, MaxTTL: maxTokenTTL(cfg),
			})
			if err != nil {
				return nil, fmt.Errorf("issuers.%s: %w", name, err)
			}
			if err := iss.Maintain(ctx); err != nil {
				return nil, fmt.Errorf("issuers.%s: %w", name, err)
			}
			issLog := log.With(slog.String("issuer", name))
			set.runners = append(set.runners, func(ctx context.Context) { maintainKeys(ctx, iss, issLog) })
			jwts[name] = iss
			set.byName[name] = iss
			set.handlers = append(set.handlers, iss.Handler())
			set.jwtName, set.jwt = name, iss
		case config.IssuerAWSSTS:
			iss, err := newAWSSTS(ctx, cfg, name, jwts, budgetOf(budgets, name))
			if err != nil {
				return nil, fmt.Errorf("issuers.%s: %w", name, err)
			}
			set.byName[name] = iss
		case config.IssuerVault:
			iss, err := newVault(cfg, name, jwts, self, budgetOf(budgets, name), log.With(slog.String("issuer", name)))
			if err != nil {
				return nil, fmt.Errorf("issuers.%s: %w", name, err)
			}
			set.byName[name] = iss
			set.runners = append(set.runners, iss.Run)
		default:
			return nil, fmt.Errorf("issuers.%s: unknown type %q", name, ic.Type)
		}
	}
	if len(set.handlers) > 1 {
		return nil, fmt.Errorf("issuers: only one issuer of type %q may be configured on one HTTP listener", config.IssuerJWT)
	}
	return set, nil
}

func newAWSSTS(ctx context.Context, cfg *config.Config, name string, jwts map[string]*jwt.Issuer, budget issuers.Budget) (*awssts.Issuer, error) {
	ac := cfg.Issuers[name].AWSSTS
	c := awssts.Config{
		Region:      ac.Region,
		Endpoint:    ac.Endpoint,
		Credentials: ac.Credentials,
		Profiles:    map[string]awssts.Profile{},
		Timeout:     ac.Timeout,
		MaxAttempts: ac.MaxAttempts,
		Budget:      budget,
	}
	if wi := ac.WebIdentity; wi != nil {
		signer, ok := jwts[wi.Issuer]
		if !ok {
			return nil, fmt.Errorf("web_identity.issuer %q is not a configured jwt issuer", wi.Issuer)
		}
		c.WebIdentity = awssts.WebIdentity{Signer: signer, Audience: wi.Audience, TokenTTL: wi.TokenTTL}
	}
	for pname, p := range cfg.Profiles {
		if p.Issuer != name {
			continue
		}
		prof := awssts.Profile{RoleARN: p.AWS.RoleARN, ExternalID: p.AWS.ExternalID}
		if p.AWS.SessionPolicy != nil {
			tmpl, err := awssts.CompilePolicy(p.AWS.SessionPolicy)
			if err != nil {
				return nil, fmt.Errorf("profiles.%s.aws.session_policy: %w", pname, err)
			}
			prof.Policy = tmpl
		}
		c.Profiles[pname] = prof
	}
	return awssts.New(ctx, c)
}

func newVault(cfg *config.Config, name string, jwts map[string]*jwt.Issuer, self string, budget issuers.Budget, log *slog.Logger) (*vault.Issuer, error) {
	vc := cfg.Issuers[name].Vault
	c := vault.Config{
		Address: vc.Address, Namespace: vc.Namespace, CAFile: vc.CAFile, ServerName: vc.ServerName,
		Timeout: vc.Timeout, MaxRetries: vc.MaxRetries, Profiles: map[string]vault.Profile{}, Log: log, Budget: budget,
	}
	a := vc.Auth
	mount := a.Mount
	if mount == "" {
		mount = a.Method
	}
	switch a.Method {
	case config.VaultAuthJWT:
		signer, ok := jwts[a.Issuer]
		if !ok {
			return nil, fmt.Errorf("auth.issuer %q is not a configured jwt issuer", a.Issuer)
		}
		aud := a.Audience
		if aud == "" {
			aud = vault.DefaultJWTAudience
		}
		c.Auth = vault.JWTAuth{Mount: mount, Role: a.Role, Signer: signer, Subject: self, Audience: aud}
	case config.VaultAuthAppRole:
		c.Auth = vault.AppRoleAuth{Mount: mount, RoleIDFile: a.RoleIDFile, SecretIDFile: a.SecretIDFile}
	case config.VaultAuthTokenFile:
		c.Auth = vault.TokenFileAuth{Path: a.TokenFile}
	}
	for pname, p := range cfg.Profiles {
		if p.Issuer != name {
			continue
		}
		v := p.Vault
		c.Profiles[pname] = vault.Profile{Kind: v.Kind, Path: v.Path, TokenRole: v.TokenRole, Policies: v.Policies, NumUses: v.NumUses}
	}
	return vault.New(c)
}

// budgets are the upstream budgets by issuer name (buildBudgets).
func buildProfiles(cfg *config.Config, set *issuerSet, budgets map[string]*broker.UpstreamBudget) (map[string]broker.Profile, error) {
	out := make(map[string]broker.Profile, len(cfg.Profiles))
	for name, p := range cfg.Profiles {
		iss, ok := set.byName[p.Issuer]
		if !ok {
			return nil, fmt.Errorf("profiles.%s: issuer %q is not configured", name, p.Issuer)
		}
		prof := broker.Profile{
			Name:        name,
			IssuerName:  p.Issuer,
			Issuer:      iss,
			DefaultTTL:  p.DefaultTTL,
			MaxTTL:      p.MaxTTL,
			Audiences:   p.Audiences,
			ClusterMode: p.Cluster,
			Budget:      budgets[p.Issuer],
		}
		if a := p.Approval; a != nil {
			prof.Approval = broker.ApprovalRule{Approvers: a.Approvers, Window: a.Window}
		}
		if b, ok := iss.(ttlBounded); ok {
			lo, hi := b.TTLBounds()
			if p.DefaultTTL < lo || p.MaxTTL > hi {
				return nil, fmt.Errorf("profiles.%s: default_ttl %s and max_ttl %s must lie within [%s, %s] for issuer %s",
					name, p.DefaultTTL, p.MaxTTL, lo, hi, strings.TrimSpace(p.Issuer))
			}
			prof.MinTTL = lo
		}
		out[name] = prof
	}
	return out, nil
}
