package daemon

import (
	"fmt"
	"net/http"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/jwt"
)

// issuerSet is every configured issuer, by name, and the HTTP handlers they
// publish (OIDC discovery and JWKS).
type issuerSet struct {
	byName   map[string]issuers.Issuer
	handlers []http.Handler
}

// buildIssuers is the issuer catalog: one plain constructor per type.
func buildIssuers(cfg *config.Config) (*issuerSet, error) {
	set := &issuerSet{byName: map[string]issuers.Issuer{}}
	for name, ic := range cfg.Issuers {
		switch ic.Type {
		case config.IssuerJWT:
			iss, err := jwt.New(jwt.Config{IssuerURL: ic.JWT.IssuerURL, KeyFile: ic.JWT.KeyFile})
			if err != nil {
				return nil, fmt.Errorf("issuers.%s: %w", name, err)
			}
			set.byName[name] = iss
			set.handlers = append(set.handlers, iss.Handler())
		default:
			return nil, fmt.Errorf("issuers.%s: unknown type %q", name, ic.Type)
		}
	}
	if len(set.handlers) > 1 {
		return nil, fmt.Errorf("issuers: only one issuer of type %q may be configured on one HTTP listener", config.IssuerJWT)
	}
	return set, nil
}

func buildProfiles(cfg *config.Config, set *issuerSet) (map[string]broker.Profile, error) {
	out := make(map[string]broker.Profile, len(cfg.Profiles))
	for name, p := range cfg.Profiles {
		iss, ok := set.byName[p.Issuer]
		if !ok {
			return nil, fmt.Errorf("profiles.%s: issuer %q is not configured", name, p.Issuer)
		}
		out[name] = broker.Profile{
			Name:        name,
			IssuerName:  p.Issuer,
			Issuer:      iss,
			DefaultTTL:  p.DefaultTTL,
			MaxTTL:      p.MaxTTL,
			Audiences:   p.Audiences,
			ClusterMode: p.Cluster,
		}
	}
	return out, nil
}
