// Package jwtsvid authenticates callers by a JWT-SVID sent in gRPC metadata
// as "authorization: Bearer <token>". Tokens are validated with go-spiffe
// (signature against the JWT bundle of the subject's trust domain, exp,
// audience), and their lifetime is bounded: a bearer token works for anyone
// who holds a copy, so one that lives for years is a standing credential,
// which is what the broker exists to avoid.
package jwtsvid

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	spiffejwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/metadata"

	"github.com/credbroker/credbroker/attest"
)

// MetadataKey is the gRPC metadata key carrying the token.
const MetadataKey = "authorization"

// maxTokenLen bounds the token we are willing to parse. JWT-SVIDs are well
// under 2 KiB.
const maxTokenLen = 8 << 10

// DefaultMaxLifetime is the longest JWT-SVID lifetime accepted unless
// configured otherwise. SPIRE issues JWT-SVIDs for 5 minutes by default.
const DefaultMaxLifetime = time.Hour

// Authenticator verifies JWT-SVIDs. It implements attest.Authenticator.
type Authenticator struct {
	bundles     jwtbundle.Source
	audiences   []string
	now         func() time.Time
	maxLifetime time.Duration
}

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithClock sets a clock against which the token's expiry is also checked.
// go-spiffe always validates exp, nbf and iat against the wall clock (with
// go-jose's one-minute leeway) and has no way to inject a clock, so a token
// is accepted only if both clocks consider it unexpired.
func WithClock(now func() time.Time) Option {
	return func(a *Authenticator) { a.now = now }
}

// WithMaxLifetime sets the longest lifetime a token may have (default
// DefaultMaxLifetime): both from its start (the later of iat and nbf, when
// present) to exp, and from now to exp. A non-positive d keeps the default.
func WithMaxLifetime(d time.Duration) Option {
	return func(a *Authenticator) {
		if d > 0 {
			a.maxLifetime = d
		}
	}
}

// New returns an Authenticator that trusts the JWT bundles in bundles and
// accepts tokens whose aud claim contains at least one of audiences. With no
// (non-empty) audiences every token is refused: an empty audience list would
// make go-spiffe skip the audience check.
func New(bundles jwtbundle.Source, audiences []string, opts ...Option) *Authenticator {
	a := &Authenticator{bundles: bundles, now: time.Now, maxLifetime: DefaultMaxLifetime}
	for _, aud := range audiences {
		if aud != "" {
			a.audiences = append(a.audiences, aud)
		}
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

var _ attest.Authenticator = (*Authenticator)(nil)

// Authenticate returns the caller proved by the request's JWT-SVID. It
// returns attest.ErrNoEvidence when there is no authorization metadata.
// Other errors are safe to return to the caller; they never contain the
// token.
func (a *Authenticator) Authenticate(ctx context.Context) (attest.Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(MetadataKey)
	switch {
	case len(vals) == 0:
		return attest.Caller{}, attest.ErrNoEvidence
	case len(vals) > 1:
		return attest.Caller{}, errors.New("jwtsvid: more than one authorization value")
	}
	token, err := bearer(vals[0])
	if err != nil {
		return attest.Caller{}, err
	}
	if len(a.audiences) == 0 {
		return attest.Caller{}, errors.New("jwtsvid: no audience configured; refusing all tokens")
	}

	svid, err := spiffejwtsvid.ParseAndValidate(token, a.bundles, a.audiences)
	if err != nil {
		return attest.Caller{}, redact(err, token)
	}
	now := a.now()
	if !now.Before(svid.Expiry) {
		return attest.Caller{}, errors.New("jwtsvid: token has expired")
	}
	if err := a.checkLifetime(svid.Claims, svid.Expiry, now); err != nil {
		return attest.Caller{}, err
	}
	return attest.Caller{
		ID:          svid.ID,
		Method:      attest.MethodJWTSVID,
		ExpiresAt:   svid.Expiry,
		Constraints: attest.ConstraintsFor(svid.ID),
	}, nil
}

// checkLifetime refuses a token that lives longer than maxLifetime, from its
// start (iat or nbf, whichever is later) or from now. go-spiffe has already
// required exp; iat and nbf are optional in a JWT-SVID, and when absent the
// bound from now still applies.
func (a *Authenticator) checkLifetime(claims map[string]any, exp, now time.Time) error {
	if left := exp.Sub(now); left > a.maxLifetime {
		return fmt.Errorf("jwtsvid: token expires in %s, more than the %s the broker accepts", left.Round(time.Second), a.maxLifetime)
	}
	for _, name := range []string{"iat", "nbf"} {
		v, ok := claims[name]
		if !ok {
			continue
		}
		secs, ok := v.(float64)
		if !ok {
			return fmt.Errorf("jwtsvid: %s claim is not a number", name)
		}
		// go-spiffe has parsed iat and nbf as NumericDates, so they fit in
		// int64 seconds; fractions do not matter against a bound in minutes.
		start := time.Unix(int64(secs), 0)
		if life := exp.Sub(start); life > a.maxLifetime {
			return fmt.Errorf("jwtsvid: token lifetime (%s to exp) is %s, more than the %s the broker accepts", name, life.Round(time.Second), a.maxLifetime)
		}
	}
	return nil
}

// bearer extracts the token from an "authorization" value of the form
// "Bearer <token>" (scheme case-insensitive, RFC 6750).
func bearer(v string) (string, error) {
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", errors.New(`jwtsvid: authorization is not of the form "Bearer <token>"`)
	}
	switch {
	case token == "" || strings.ContainsAny(token, " \t"):
		return "", errors.New(`jwtsvid: authorization is not of the form "Bearer <token>"`)
	case len(token) > maxTokenLen:
		return "", fmt.Errorf("jwtsvid: token longer than %d bytes", maxTokenLen)
	}
	return token, nil
}

// redact returns err unless its message contains the token or its signature,
// which would turn an error message into a usable credential; go-spiffe's
// messages do not, and this keeps it so if that ever changes.
func redact(err error, token string) error {
	msg := err.Error()
	sig := token[strings.LastIndexByte(token, '.')+1:]
	if strings.Contains(msg, token) || (len(sig) >= 16 && strings.Contains(msg, sig)) {
		return errors.New("jwtsvid: invalid token")
	}
	return err
}
