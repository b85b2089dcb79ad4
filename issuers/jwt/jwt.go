// Package jwt is the broker's own OIDC issuer. It signs short-lived ES256
// JWTs with a key kept in a local file, and publishes the discovery document
// and JWKS that relying parties (AWS AssumeRoleWithWebIdentity, MinIO, Vault's
// JWT auth) fetch to verify them. Replicas each sign with their own key and
// publish its public half through a KeyStore, so that every replica's JWKS
// holds every replica's keys; keys rotate with an overlap (Maintain).
package jwt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/issuers"
)

// TokenType is the Credential.TokenType of tokens this issuer mints.
const TokenType = "JWT"

// Config configures an Issuer.
type Config struct {
	// IssuerURL is the `iss` claim, e.g. "https://broker.example.com". The
	// discovery document and JWKS are served under it
	// (IssuerURL + "/.well-known/..."). It must be an absolute http(s) URL
	// without query or fragment; a trailing slash is dropped.
	IssuerURL string
	// KeyFile holds the ES256 signing key, PEM-encoded PKCS#8. It is generated
	// (mode 0600) when absent. An existing file readable or writable by group
	// or others is refused.
	KeyFile string
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Rand is the randomness used to generate a missing key; nil means
	// crypto/rand. Signing always uses crypto/rand.
	Rand io.Reader

	// Keys, when set, is where this replica publishes its public keys and
	// reads every replica's, so that its JWKS verifies any replica's
	// tokens (see Maintain). Replica then names this replica there.
	Keys    KeyStore
	Replica string
	// RotationPeriod, when positive, replaces the signing key this often
	// (see Maintain); the key file is replaced, the old private key
	// deleted.
	RotationPeriod time.Duration
	// PublishAhead is how long a new key is published before it signs;
	// default DefaultPublishAhead. It must be shorter than RotationPeriod.
	PublishAhead time.Duration
	// MaxTTL is the longest lifetime of a token this issuer signs: a key
	// stays published this long after it stopped signing; default
	// DefaultMaxTTL.
	MaxTTL time.Duration
}

// Issuer mints JWTs signed with this replica's ES256 key, and serves the
// JWKS of every replica's current keys. It is safe for concurrent use.
type Issuer struct {
	issuerURL string
	keyFile   string
	discovery []byte
	clock     func() time.Time
	rand      io.Reader
	revoked   revokedList

	store        KeyStore
	replica      string
	rotation     time.Duration
	publishAhead time.Duration
	maxTTL       time.Duration

	maintainMu sync.Mutex // one Maintain at a time

	mu      sync.Mutex
	cur     *ringKey                   // signs
	next    *ringKey                   // published ahead, signs next (rotation)
	retired []*ringKey                 // public halves, published until their tokens expire
	others  map[string]json.RawMessage // every replica's keys as last listed
	// abandoned is the key of a rotation on demand cut short (its
	// KEY_FILE.rotating found at start): it never signed here, yet may be
	// published; Maintain withdraws it, and no JWKS serves it meanwhile.
	abandoned *ringKey
	// abandonedKID is abandoned's kid, kept after Maintain withdrew it,
	// for AbandonedRotation.
	abandonedKID string
	jwks         []byte
}

// New loads the signing key from cfg.KeyFile, generating it first if the file
// does not exist.
func New(cfg Config) (*Issuer, error) {
	issuerURL, err := parseIssuerURL(cfg.IssuerURL)
	if err != nil {
		return nil, err
	}
	if cfg.KeyFile == "" {
		return nil, errors.New("jwt: no key file configured")
	}
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	i := &Issuer{
		issuerURL: issuerURL, keyFile: cfg.KeyFile, clock: clock, rand: cfg.Rand,
		store: cfg.Keys, replica: cfg.Replica,
		rotation: cfg.RotationPeriod, publishAhead: cfg.PublishAhead, maxTTL: cfg.MaxTTL,
	}
	if i.publishAhead == 0 {
		i.publishAhead = DefaultPublishAhead
	}
	if i.maxTTL == 0 {
		i.maxTTL = DefaultMaxTTL
	}
	switch {
	case i.store != nil && i.replica == "":
		return nil, errors.New("jwt: publishing keys needs the replica's name")
	case i.rotation < 0 || i.publishAhead < 0 || i.maxTTL < 0:
		return nil, errors.New("jwt: negative rotation period, publish-ahead or max TTL")
	case i.rotation > 0 && i.publishAhead >= i.rotation:
		return nil, fmt.Errorf("jwt: the rotation period %s must be longer than the publish-ahead %s", i.rotation, i.publishAhead)
	}
	key, created, err := loadOrCreateKey(cfg.KeyFile, cfg.Rand, clock)
	if err != nil {
		return nil, err
	}
	if i.cur, err = newRingKey(key, created); err != nil {
		return nil, err
	}
	if err := i.loadNext(); err != nil {
		return nil, err
	}
	if err := i.loadAbandoned(); err != nil {
		return nil, err
	}
	// The JWKS of this replica's own keys until Maintain lists the others'.
	if err := i.refreshJWKS(context.Background(), clock()); err != nil && i.store == nil {
		return nil, err
	}
	if i.discovery, err = marshalDiscovery(issuerURL); err != nil {
		return nil, err
	}
	return i, nil
}

func parseIssuerURL(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("jwt: no issuer URL configured")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("jwt: issuer URL %q: %w", raw, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("jwt: issuer URL %q must be an absolute http(s) URL", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("jwt: issuer URL %q must not have user info, query or fragment", raw)
	}
	return strings.TrimSuffix(raw, "/"), nil
}

// Effect implements issuers.Issuer: a token is signed in the process with a
// local key, and its only identifier, the jti, is the request's issuance id,
// fixed before Issue is called; a token that is never handed out exists
// nowhere.
func (i *Issuer) Effect() issuers.Effect { return issuers.EffectNone }

// Issue mints a token for req: iss, sub (req.Subject), aud (req.Audience),
// iat, nbf, exp (now + req.TTL), jti (req.IssuanceID), profile, and cluster
// when req.Cluster is set. The token is only returned, never stored or logged.
func (i *Issuer) Issue(ctx context.Context, req issuers.Request) (issuers.Credential, error) {
	if err := ctx.Err(); err != nil {
		return issuers.Credential{}, fmt.Errorf("jwt: %w", err)
	}
	if err := checkRequest(req); err != nil {
		return issuers.Credential{}, err
	}
	// JWT times have one-second resolution; truncate first so that the
	// credential's ExpiresAt is exactly the token's exp.
	now := i.clock().Truncate(time.Second)
	exp := now.Add(req.TTL)
	claims := jwtlib.MapClaims{
		"iss":     i.issuerURL,
		"sub":     req.Subject,
		"aud":     req.Audience,
		"iat":     now.Unix(),
		"nbf":     now.Unix(),
		"exp":     exp.Unix(),
		"jti":     req.IssuanceID,
		"profile": req.Profile,
	}
	if req.Cluster != "" {
		claims["cluster"] = req.Cluster
	}
	token, err := i.sign(claims)
	if err != nil {
		return issuers.Credential{}, err
	}
	return issuers.Credential{
		Kind:        issuers.KindToken,
		Token:       token,
		TokenType:   TokenType,
		ExpiresAt:   time.Unix(exp.Unix(), 0).UTC(),
		UpstreamRef: req.IssuanceID,
	}, nil
}

func checkRequest(req issuers.Request) error {
	switch {
	case req.Subject == "":
		return errors.New("jwt: request has no subject")
	case req.Audience == "":
		// A token without an audience would be accepted by every relying
		// party that trusts this issuer.
		return errors.New("jwt: request has no audience")
	case req.IssuanceID == "":
		return errors.New("jwt: request has no issuance id")
	case req.TTL < time.Second:
		return fmt.Errorf("jwt: TTL %v is shorter than one second", req.TTL)
	}
	return nil
}

// Sign signs arbitrary claims with the issuer's key (header kid, alg ES256,
// typ JWT). iss is set to the issuer URL when absent and must equal it when
// present; exp is required, so that nothing signed here lives forever. The
// caller's map is not modified.
func (i *Issuer) Sign(claims map[string]any) (string, error) {
	if _, ok := claims["exp"]; !ok {
		return "", errors.New("jwt: claims have no exp; refusing to sign a token that never expires")
	}
	mc := make(jwtlib.MapClaims, len(claims)+1)
	for k, v := range claims {
		mc[k] = v
	}
	if iss, ok := mc["iss"]; !ok {
		mc["iss"] = i.issuerURL
	} else if iss != i.issuerURL {
		return "", fmt.Errorf("jwt: claim iss %v is not this issuer (%s)", iss, i.issuerURL)
	}
	return i.sign(mc)
}

func (i *Issuer) sign(claims jwtlib.MapClaims) (string, error) {
	cur := i.current()
	t := jwtlib.NewWithClaims(jwtlib.SigningMethodES256, claims)
	t.Header["kid"] = cur.kid
	s, err := t.SignedString(cur.priv)
	if err != nil {
		return "", fmt.Errorf("jwt: signing token: %w", err)
	}
	return s, nil
}

// KeyID is the signing key's RFC 7638 JWK SHA-256 thumbprint, base64url
// without padding; it is the kid of every token signed now and of the
// key's JWKS entry.
func (i *Issuer) KeyID() string { return i.current().kid }

// JWKS returns the JSON Web Key Set: this replica's keys and, with Keys,
// every replica's current ones as Maintain last listed them. The caller
// must not modify the returned slice.
func (i *Issuer) JWKS() []byte {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.jwks
}
