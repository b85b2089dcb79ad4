// Package psat attests nodes of workload clusters by Kubernetes projected
// service account tokens (PSATs). A node agent running in a pod of the
// workload cluster sends a token projected with the broker's audience; the
// token's kubernetes.io claims bind it to a pod, its service account and the
// node the pod runs on, and that node becomes the attested node.
//
// The token is verified offline against the named cluster's service-account
// issuer and signing keys only (static JWKS or OIDC discovery). Unlike
// SPIRE's k8s_psat attestor we do not call the cluster's TokenReview API, so
// a token stays usable until it expires even if its pod was deleted; keep
// expirationSeconds of the projected volume short (the Kubernetes minimum,
// 600 s, is plenty) and see WithMaxLifetime.
package psat

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/attest"
)

const (
	// maxTokenLen bounds the token we are willing to parse; Kubernetes
	// tokens are around 1 KiB.
	maxTokenLen = 16 << 10
	// leeway tolerates clock skew between the broker and the cluster.
	leeway = 30 * time.Second
	// defaultMaxLifetime is the longest exp-iat we accept by default.
	defaultMaxLifetime = 24 * time.Hour
)

// allowedAlgs are the signature algorithms Kubernetes issuers use. HS* and
// none are never accepted.
var allowedAlgs = []string{"RS256", "ES256", "ES384", "PS256"}

// ClusterConfig says how to verify tokens of one workload cluster.
type ClusterConfig struct {
	// Issuer is the cluster's service-account issuer (the iss claim), e.g.
	// "https://oidc.example.com/abc". Required.
	Issuer string
	// Audience must be among the token's audiences, e.g. "credbroker".
	// Required; use a value the API server itself does not accept.
	Audience string
	// JWKS is a static JSON Web Key Set of the cluster's service-account
	// signing keys. Exactly one of JWKS and DiscoveryURL is set.
	JWKS []byte
	// DiscoveryURL is the https URL of the issuer's OpenID configuration,
	// normally Issuer + "/.well-known/openid-configuration". Its issuer must
	// equal Issuer; the keys are fetched from its jwks_uri (https), cached
	// (see WithKeysTTL) and refetched when a token names an unknown kid, at
	// most once a minute.
	DiscoveryURL string
	// ServiceAccounts are the "namespace:name" service accounts the node
	// agent may run as. Required.
	ServiceAccounts []string
	// HTTPClient fetches discovery documents and keys. Optional; the default
	// has a 10 s timeout.
	HTTPClient *http.Client
}

// Verifier verifies projected service account tokens of configured
// workload clusters. It is safe for concurrent use.
type Verifier struct {
	clusters    map[string]*cluster
	now         func() time.Time
	maxLifetime time.Duration
	keysTTL     time.Duration
}

type cluster struct {
	issuer   string
	audience string
	accounts map[string]bool
	keys     keySource
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithClock sets the clock used for token times and key caching.
func WithClock(now func() time.Time) Option {
	return func(v *Verifier) { v.now = now }
}

// WithMaxLifetime sets the longest token lifetime (exp - iat) accepted;
// default 24h. Long-lived tokens are long-lived replayable credentials.
func WithMaxLifetime(d time.Duration) Option {
	return func(v *Verifier) { v.maxLifetime = d }
}

// WithKeysTTL sets how long keys fetched through discovery are used before
// they are fetched again; default 10 minutes, at least one minute.
func WithKeysTTL(d time.Duration) Option {
	return func(v *Verifier) { v.keysTTL = max(d, minRefetch) }
}

// New returns a Verifier for clusters, keyed by the workload cluster's
// "namespace/name". Static JWKS are parsed now; discovery happens on first
// use.
func New(clusters map[string]ClusterConfig, opts ...Option) (*Verifier, error) {
	v := &Verifier{
		clusters:    make(map[string]*cluster, len(clusters)),
		now:         time.Now,
		maxLifetime: defaultMaxLifetime,
		keysTTL:     defaultKeysTTL,
	}
	for _, o := range opts {
		o(v)
	}
	if v.maxLifetime <= 0 {
		return nil, errors.New("psat: max token lifetime must be positive")
	}
	if len(clusters) == 0 {
		return nil, errors.New("psat: no clusters configured")
	}
	for name, cfg := range clusters {
		c, err := v.newCluster(cfg)
		if err != nil {
			return nil, fmt.Errorf("psat: cluster %q: %w", name, err)
		}
		if !attest.ValidCluster(name) {
			return nil, fmt.Errorf("psat: cluster %q: not a namespace/name", name)
		}
		v.clusters[name] = c
	}
	return v, nil
}

func (v *Verifier) newCluster(cfg ClusterConfig) (*cluster, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("issuer is required")
	}
	if cfg.Audience == "" {
		return nil, errors.New("audience is required")
	}
	if len(cfg.ServiceAccounts) == 0 {
		return nil, errors.New("at least one service account is required")
	}
	c := &cluster{issuer: cfg.Issuer, audience: cfg.Audience, accounts: make(map[string]bool)}
	for _, sa := range cfg.ServiceAccounts {
		ns, name, ok := strings.Cut(sa, ":")
		if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			return nil, fmt.Errorf("service account %q is not namespace:name", sa)
		}
		c.accounts[sa] = true
	}
	switch {
	case len(cfg.JWKS) > 0 && cfg.DiscoveryURL != "":
		return nil, errors.New("set either JWKS or DiscoveryURL, not both")
	case len(cfg.JWKS) > 0:
		keys, err := parseJWKS(cfg.JWKS)
		if err != nil {
			return nil, err
		}
		c.keys = staticKeys(keys)
	case cfg.DiscoveryURL != "":
		if err := checkHTTPS(cfg.DiscoveryURL); err != nil {
			return nil, fmt.Errorf("discovery URL %w", err)
		}
		client := cfg.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: fetchTimeout}
		}
		c.keys = &remoteKeys{
			discoveryURL: cfg.DiscoveryURL,
			issuer:       cfg.Issuer,
			client:       client,
			now:          v.now,
			ttl:          v.keysTTL,
		}
	default:
		return nil, errors.New("one of JWKS or DiscoveryURL is required")
	}
	return c, nil
}

// claims is the part of a projected token we read.
type claims struct {
	jwt.RegisteredClaims
	K8s *k8sClaims `json:"kubernetes.io"`
}

type k8sClaims struct {
	Namespace      string  `json:"namespace"`
	ServiceAccount *objRef `json:"serviceaccount"`
	Pod            *objRef `json:"pod"`
	Node           *objRef `json:"node"`
}

type objRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// Verify checks that token is a projected service account token of the
// workload cluster named by cluster ("namespace/name"), issued to an allowed
// service account for a pod bound to a node, and returns that node.
//
// Rejections wrap attest.ErrNodeRejected and never contain the token. An
// error wrapping ErrKeysUnavailable means the cluster's keys could not be
// fetched and the token was not judged.
func (v *Verifier) Verify(ctx context.Context, cluster, token string) (attest.NodeClaims, error) {
	if !attest.ValidCluster(cluster) {
		return attest.NodeClaims{}, reject("cluster is not a namespace/name")
	}
	c, ok := v.clusters[cluster]
	if !ok {
		return attest.NodeClaims{}, reject(fmt.Sprintf("cluster %s is not configured for PSAT attestation", cluster))
	}
	if token == "" || len(token) > maxTokenLen {
		return attest.NodeClaims{}, reject("token is empty or too long")
	}

	parser := jwt.NewParser(
		jwt.WithValidMethods(allowedAlgs),
		jwt.WithIssuer(c.issuer),
		jwt.WithAudience(c.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(v.now),
	)
	var cl claims
	var keyErr error // the keyfunc's own error, unwrapped
	tok, err := parser.ParseWithClaims(token, &cl, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			keyErr = reject("token header has no kid")
			return nil, keyErr
		}
		k, err := c.keys.key(ctx, kid)
		if err != nil {
			keyErr = err
			return nil, err
		}
		if !k.allows(t.Method.Alg()) {
			keyErr = reject("token algorithm does not match its signing key")
			return nil, keyErr
		}
		return k.key, nil
	})
	switch {
	case keyErr != nil:
		return attest.NodeClaims{}, keyErr
	case err != nil:
		return attest.NodeClaims{}, parseError(tok, err)
	}
	return v.nodeClaims(cluster, c, &cl)
}

func (v *Verifier) nodeClaims(cluster string, c *cluster, cl *claims) (attest.NodeClaims, error) {
	// iat is checked against the clock by the parser when present; we need
	// it present to bound the lifetime.
	if cl.IssuedAt == nil {
		return attest.NodeClaims{}, reject("token has no iat")
	}
	if cl.ExpiresAt.Sub(cl.IssuedAt.Time) > v.maxLifetime {
		return attest.NodeClaims{}, reject(fmt.Sprintf("token lifetime is longer than %v", v.maxLifetime))
	}
	k := cl.K8s
	if k == nil || k.Namespace == "" || k.ServiceAccount == nil || k.ServiceAccount.Name == "" {
		return attest.NodeClaims{}, reject("token has no kubernetes.io service account claims; it must be a projected service account token")
	}
	sa := k.Namespace + ":" + k.ServiceAccount.Name
	// The API server sets sub to the same service account; a mismatch means
	// the token was not minted by it.
	if cl.Subject != "system:serviceaccount:"+sa {
		return attest.NodeClaims{}, reject("token subject does not match its service account claims")
	}
	if !c.accounts[sa] {
		return attest.NodeClaims{}, reject(fmt.Sprintf("service account %q is not allowed to attest nodes of cluster %s", sa, cluster))
	}
	if k.Pod == nil || k.Pod.Name == "" || k.Pod.UID == "" || k.Node == nil || k.Node.Name == "" {
		return attest.NodeClaims{}, reject("token is not bound to a pod on a node; project it into the node agent's pod (Kubernetes >= 1.30 adds the node claim)")
	}
	if !attest.ValidNodeName(k.Node.Name) {
		return attest.NodeClaims{}, reject("token's node name is not a valid node name")
	}
	return attest.NodeClaims{
		Cluster: cluster,
		Node:    k.Node.Name,
		Method:  attest.MethodK8sPSAT,
		Detail: fmt.Sprintf("pod %s/%s (%s) on node %s, service account %s",
			k.Namespace, k.Pod.Name, k.Pod.UID, k.Node.Name, sa),
	}, nil
}

func reject(reason string) error {
	return fmt.Errorf("psat: %s: %w", reason, attest.ErrNodeRejected)
}

// parseError turns a jwt error into a rejection with our own wording: the
// library's messages echo header values chosen by the sender.
func parseError(tok *jwt.Token, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return reject("token is malformed")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		if tok == nil || tok.Method == nil || !allowed(tok.Method.Alg()) {
			return reject("token signing algorithm is not allowed (want " + strings.Join(allowedAlgs, ", ") + ")")
		}
		return reject("token signature is invalid")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// alg names a method the library does not know, e.g. "none" is known
		// but "foo" is not.
		return reject("token signing algorithm is not allowed (want " + strings.Join(allowedAlgs, ", ") + ")")
	}
	var reasons []string
	for _, c := range []struct {
		err    error
		reason string
	}{
		{jwt.ErrTokenExpired, "token has expired"},
		{jwt.ErrTokenNotValidYet, "token is not valid yet (nbf)"},
		{jwt.ErrTokenUsedBeforeIssued, "token is issued in the future (iat)"},
		{jwt.ErrTokenInvalidIssuer, "token issuer is not the cluster's issuer"},
		{jwt.ErrTokenInvalidAudience, "token audience does not include the broker's audience"},
		{jwt.ErrTokenRequiredClaimMissing, "token is missing a required claim (exp, iss or aud); legacy non-expiring tokens are not accepted"},
	} {
		if errors.Is(err, c.err) {
			reasons = append(reasons, c.reason)
		}
	}
	if len(reasons) == 0 {
		return reject("token claims are invalid")
	}
	return reject(strings.Join(reasons, "; "))
}

func allowed(alg string) bool { return slices.Contains(allowedAlgs, alg) }
