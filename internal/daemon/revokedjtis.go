package daemon

import (
	"time"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers/jwt"
)

// revokedJTIs is the local JWT issuer's revoked-token list, derived from the
// revocation index each time the issuer rebuilds it (after a change, or when
// an entry expires).
//
// An issuance revocation of one of its tokens is published as that token's
// jti until the token's exp. An identity or cluster revocation is published
// once, as itself (sub or cluster, and issued_before = when it was made),
// until every token it can cover has expired: made + the longest max_ttl of
// the issuer's profiles. Publishing the rule instead of the token ids it
// covers keeps the list as long as the number of revocations, however many
// tokens an identity held, and needs no audit look-up; a relying party
// matches sub/cluster and iat itself.
func revokedJTIs(x *state.RevocationIndex, issuerName string, maxTTL time.Duration, now func() time.Time) jwt.RevokedSource {
	return func() []jwt.RevokedToken {
		t := now()
		var out []jwt.RevokedToken
		for _, r := range x.All() {
			if !r.Active(t) {
				continue
			}
			var e jwt.RevokedToken
			switch r.Kind {
			case state.RevokeIssuance:
				// Revocations stored before the issuer was recorded are
				// published too: an unknown jti matches nothing.
				if r.CoveredUntil.IsZero() || (r.Issuer != "" && r.Issuer != issuerName) {
					continue
				}
				e = jwt.RevokedToken{JTI: r.Target, Exp: r.CoveredUntil.Unix()}
			case state.RevokeIdentity, state.RevokeCluster:
				// Rounded up: a token of the same second as the revocation
				// was issued before it (later requests are refused).
				before := r.CreatedAt.Add(time.Second - 1).Truncate(time.Second)
				e = jwt.RevokedToken{IssuedBefore: before.Unix(), Exp: r.CreatedAt.Add(maxTTL).Add(time.Second - 1).Truncate(time.Second).Unix()}
				if r.Kind == state.RevokeIdentity {
					e.Subject = r.Target
				} else {
					e.Cluster = r.Target
				}
			default:
				continue
			}
			// An ended revocation covers nothing from then on.
			if !r.Until.IsZero() && r.Until.Unix() < e.Exp {
				e.Exp = r.Until.Unix()
			}
			out = append(out, e)
		}
		return out
	}
}

// jwtMaxTTL is the longest lifetime any profile of the named issuer grants.
func jwtMaxTTL(cfg *config.Config, issuerName string) time.Duration {
	var most time.Duration
	for _, p := range cfg.Profiles {
		if p.Issuer == issuerName && p.MaxTTL > most {
			most = p.MaxTTL
		}
	}
	return most
}
