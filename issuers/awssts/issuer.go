// Package awssts mints scoped, expiring AWS credentials through AWS STS.
//
// For each issuance the broker calls AssumeRole (with its own AWS
// credentials from the SDK's default chain) or AssumeRoleWithWebIdentity
// (with a token its own OIDC issuer signs for the caller, so the broker needs
// no AWS keys at all). Every call carries:
//
//   - DurationSeconds: the granted TTL, which the broker keeps within STS's
//     limits (MinDuration..MaxDuration);
//   - RoleSessionName and SourceIdentity derived from the caller's SPIFFE ID
//     (see RoleSessionName and SourceIdentity);
//   - session tags naming the caller, profile, cluster and issuance (see
//     SessionTags) — as the Tags parameter for AssumeRole, and as the
//     https://aws.amazon.com/tags claim of the web identity token;
//   - the profile's inline session policy, compiled from its template with
//     the cluster filled in (see CompilePolicy), so the credential can do at
//     most what the role allows AND what the cluster's policy allows.
//
// Identical requests (same caller, profile, cluster and TTL) share one
// upstream call and reuse its credential until half of its lifetime has
// passed. Throttling is retried by the SDK's standard retryer (jittered
// exponential backoff), then reported as issuers.ErrUnavailable with a retry
// delay.
package awssts

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/sync/singleflight"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/issuers"
)

// STS limits on a role session's lifetime. A role's own maximum session
// duration (1–12 h, set in IAM) may be lower than MaxDuration; STS then
// refuses longer requests, which the broker reports as a configuration error.
const (
	MinDuration = 15 * time.Minute
	MaxDuration = 12 * time.Hour
)

// Ways the broker authenticates to STS.
const (
	// CredentialsDefault: AssumeRole signed with the broker's own credentials
	// from the SDK's default chain (environment, shared files, web identity
	// token file, ECS/EKS container credentials, EC2 instance profile).
	CredentialsDefault = "default"
	// CredentialsWebIdentity: AssumeRoleWithWebIdentity with a token the
	// broker's own OIDC issuer signs for the caller; no AWS keys anywhere.
	CredentialsWebIdentity = "web_identity"
)

// Defaults.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultMaxAttempts    = 3
	DefaultWebIdentityAud = "sts.amazonaws.com"
	DefaultWebIdentityTTL = 5 * time.Minute
)

const (
	maxBackoff             = 2 * time.Second
	unavailableRetryAfter  = 2 * time.Second
	sourceIdentityClaim    = "https://aws.amazon.com/source_identity"
	sessionTagsClaim       = "https://aws.amazon.com/tags"
	cacheSweepThreshold    = 1024
	minRemainingForHandout = time.Second
)

// Signer signs the web identity tokens exchanged in CredentialsWebIdentity
// mode; *jwt.Issuer implements it.
type Signer interface {
	Sign(claims map[string]any) (string, error)
}

// Profile is what one broker profile assumes.
type Profile struct {
	// RoleARN is the role to assume.
	RoleARN string
	// ExternalID is passed to AssumeRole when set (AssumeRole only).
	ExternalID string
	// Policy is the session policy template; nil only for profiles that are
	// not cluster-scoped (the role's own policy is then the whole scope).
	Policy *PolicyTemplate
}

// WebIdentity configures CredentialsWebIdentity mode.
type WebIdentity struct {
	// Signer signs the tokens (the broker's own OIDC issuer).
	Signer Signer
	// Audience is the token's aud; default DefaultWebIdentityAud. The IAM
	// OIDC provider's client id must match it.
	Audience string
	// TokenTTL is how long a token is valid for the exchange; default
	// DefaultWebIdentityTTL. It does not bound the credential's lifetime.
	TokenTTL time.Duration
}

// Config configures an Issuer.
type Config struct {
	// Region is the STS region, e.g. "us-east-1".
	Region string
	// Endpoint overrides the STS endpoint (GovCloud, FIPS, VPC endpoints,
	// MinIO); empty means the SDK's regional endpoint.
	Endpoint string
	// Credentials is CredentialsDefault or CredentialsWebIdentity.
	Credentials string
	// WebIdentity is required in CredentialsWebIdentity mode.
	WebIdentity WebIdentity
	// Profiles by broker profile name.
	Profiles map[string]Profile
	// Timeout bounds one upstream call including the SDK's retries; default
	// DefaultTimeout.
	Timeout time.Duration
	// MaxAttempts is the SDK retryer's attempt limit; default
	// DefaultMaxAttempts.
	MaxAttempts int
	// Clock returns the current time; nil means time.Now. It decides when a
	// cached credential is due for renewal and stamps web identity tokens.
	Clock func() time.Time

	// CredentialsProvider replaces the default chain in CredentialsDefault
	// mode (embedding and tests).
	CredentialsProvider aws.CredentialsProvider
	// HTTPClient replaces the SDK's HTTP client (embedding and tests).
	HTTPClient aws.HTTPClient
	// APIOptions are added to every STS call's middleware stack (tests count
	// or inspect calls with them).
	APIOptions []func(*middleware.Stack) error
	// Budget, when set, is drawn from before every STS call (once per
	// call, whatever the number of requests joining it); a credential
	// handed out again takes nothing from it.
	Budget issuers.Budget
}

// Issuer mints AWS credentials through STS. It is safe for concurrent use.
type Issuer struct {
	client      *sts.Client
	mode        string
	webIdentity WebIdentity
	profiles    map[string]Profile
	timeout     time.Duration
	clock       func() time.Time
	budget      issuers.Budget

	flights singleflight.Group
	mu      sync.Mutex
	cache   map[cacheKey]cached
	// forgets counts Forget calls; a mint that began before one is not
	// cached, since it may be covered by the revocation that caused it.
	forgets uint64
}

type cacheKey struct {
	subject, profile, cluster string
	seconds                   int32
}

func (k cacheKey) String() string {
	return strings.Join([]string{k.subject, k.profile, k.cluster, fmt.Sprint(k.seconds)}, "\x00")
}

type cached struct {
	cred      issuers.Credential
	renewAt   time.Time
	originReq string
}

// New builds an Issuer. In CredentialsDefault mode it checks that the
// default chain yields credentials, so that a broker without AWS credentials
// fails at start rather than on the first request.
func New(ctx context.Context, cfg Config) (*Issuer, error) {
	if cfg.Region == "" {
		return nil, errors.New("awssts: no region configured")
	}
	if cfg.Endpoint != "" {
		if u, err := url.Parse(cfg.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("awssts: endpoint %q must be an absolute http(s) URL", cfg.Endpoint)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(cfg.Region),
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = maxBackoff
			})
		}),
	}
	switch cfg.Credentials {
	case CredentialsDefault:
		if cfg.CredentialsProvider != nil {
			opts = append(opts, awsconfig.WithCredentialsProvider(cfg.CredentialsProvider))
		}
	case CredentialsWebIdentity:
		if cfg.WebIdentity.Signer == nil {
			return nil, errors.New("awssts: web identity mode needs a token signer")
		}
		if cfg.WebIdentity.Audience == "" {
			cfg.WebIdentity.Audience = DefaultWebIdentityAud
		}
		if cfg.WebIdentity.TokenTTL == 0 {
			cfg.WebIdentity.TokenTTL = DefaultWebIdentityTTL
		}
		// AssumeRoleWithWebIdentity is not signed: the token is the proof.
		opts = append(opts, awsconfig.WithCredentialsProvider(aws.AnonymousCredentials{}))
	default:
		return nil, fmt.Errorf("awssts: credentials %q: want %q or %q", cfg.Credentials, CredentialsDefault, CredentialsWebIdentity)
	}
	for name, p := range cfg.Profiles {
		if p.RoleARN == "" {
			return nil, fmt.Errorf("awssts: profile %q has no role ARN", name)
		}
		if p.ExternalID != "" && cfg.Credentials == CredentialsWebIdentity {
			return nil, fmt.Errorf("awssts: profile %q: an external id only applies to AssumeRole, not web identity", name)
		}
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awssts: loading AWS configuration: %w", err)
	}
	if cfg.HTTPClient != nil {
		awsCfg.HTTPClient = cfg.HTTPClient
	}
	if cfg.Credentials == CredentialsDefault {
		checkCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		_, err := awsCfg.Credentials.Retrieve(checkCtx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("awssts: the broker has no AWS credentials of its own for AssumeRole (set them up for the SDK's default chain, or use credentials: %s): %w", CredentialsWebIdentity, err)
		}
	}
	client := sts.NewFromConfig(awsCfg, func(o *sts.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.APIOptions = append(o.APIOptions, cfg.APIOptions...)
	})
	return &Issuer{
		client:      client,
		mode:        cfg.Credentials,
		webIdentity: cfg.WebIdentity,
		profiles:    cfg.Profiles,
		timeout:     cfg.Timeout,
		clock:       cfg.Clock,
		budget:      cfg.Budget,
		cache:       map[cacheKey]cached{},
	}, nil
}

// TTLBounds are the lifetimes STS can grant.
func (i *Issuer) TTLBounds() (lo, hi time.Duration) { return MinDuration, MaxDuration }

// Effect implements issuers.Issuer: every fresh credential is an STS
// session that exists upstream.
func (i *Issuer) Effect() issuers.Effect { return issuers.EffectUpstream }

// Issue returns AWS credentials for req: a fresh set from STS, or the set
// minted for an identical earlier request while it is in the first half of
// its lifetime (Credential.Reused is then set).
func (i *Issuer) Issue(ctx context.Context, req issuers.Request) (issuers.Credential, error) {
	p, ok := i.profiles[req.Profile]
	if !ok {
		return issuers.Credential{}, fmt.Errorf("awssts: profile %q is not configured for this issuer", req.Profile)
	}
	if req.Subject == "" || req.IssuanceID == "" {
		return issuers.Credential{}, errors.New("awssts: request has no subject or issuance id")
	}
	if req.TTL < MinDuration || req.TTL > MaxDuration {
		return issuers.Credential{}, fmt.Errorf("awssts: TTL %s is outside STS's [%s, %s]", req.TTL, MinDuration, MaxDuration)
	}
	if p.Policy != nil && p.Policy.UsesCluster() && req.Cluster == "" {
		return issuers.Credential{}, fmt.Errorf("awssts: profile %q is cluster-scoped but the request names no cluster", req.Profile)
	}
	key := keyFor(req)
	if c, ok := i.lookup(key); ok {
		return handOut(c, req), nil
	}
	ch := i.flights.DoChan(key.String(), func() (any, error) {
		if c, ok := i.lookup(key); ok {
			return c, nil
		}
		// The call belongs to every request waiting on it, so the first
		// caller giving up must not cancel it; the timeout bounds it.
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), i.timeout)
		defer cancel()
		// Only a call that goes upstream spends from the budget.
		if i.budget != nil {
			if err := i.budget.Take(callCtx); err != nil {
				return nil, fmt.Errorf("awssts: %w", err)
			}
		}
		i.mu.Lock()
		gen := i.forgets
		i.mu.Unlock()
		issuedAt := i.clock()
		cred, err := i.assume(callCtx, p, key.seconds, req)
		if err != nil {
			return nil, err
		}
		c := cached{cred: cred, renewAt: issuedAt.Add(cred.ExpiresAt.Sub(issuedAt) / 2), originReq: req.IssuanceID}
		i.store(key, c, gen)
		return c, nil
	})
	select {
	case <-ctx.Done():
		return issuers.Credential{}, fmt.Errorf("awssts: %w", ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return issuers.Credential{}, r.Err
		}
		return handOut(r.Val.(cached), req), nil
	}
}

// keyFor is what identical requests share a credential by.
func keyFor(req issuers.Request) cacheKey {
	return cacheKey{req.Subject, req.Profile, req.Cluster, int32(req.TTL / time.Second)}
}

// Reuses implements issuers.Reuser: an identical request's credential is
// held, in the first half of its life.
func (i *Issuer) Reuses(req issuers.Request) bool {
	_, ok := i.lookup(keyFor(req))
	return ok
}

func handOut(c cached, req issuers.Request) issuers.Credential {
	cred := c.cred
	cred.Reused = c.originReq != req.IssuanceID
	cred.OriginIssuanceID = c.originReq
	return cred
}

// Forget implements issuers.Forgetter: the credentials it covers are
// dropped from reuse, and a mint in flight is not kept (its waiters still
// get it, and the broker checks it against the revocations before handing
// it out).
func (i *Issuer) Forget(covered func(issuers.Held) bool) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.forgets++
	n := 0
	for k, c := range i.cache {
		if covered(issuers.Held{IssuanceID: c.originReq, Subject: k.subject, Cluster: k.cluster, UpstreamRef: c.cred.UpstreamRef}) {
			delete(i.cache, k)
			n++
		}
	}
	return n
}

// lookup returns a cached credential still in the first half of its life.
func (i *Issuer) lookup(k cacheKey) (cached, bool) {
	now := i.clock()
	i.mu.Lock()
	defer i.mu.Unlock()
	c, ok := i.cache[k]
	if !ok || !now.Before(c.renewAt) || c.cred.ExpiresAt.Sub(now) < minRemainingForHandout {
		return cached{}, false
	}
	return c, true
}

func (i *Issuer) store(k cacheKey, c cached, gen uint64) {
	now := i.clock()
	i.mu.Lock()
	defer i.mu.Unlock()
	if gen != i.forgets {
		return // a revocation came while this was minted
	}
	if len(i.cache) >= cacheSweepThreshold {
		for key, old := range i.cache {
			if !now.Before(old.renewAt) {
				delete(i.cache, key)
			}
		}
	}
	i.cache[k] = c
}

// assume makes the STS call for req.
// call is what one AssumeRole call for a request sends, besides the
// credentials it is signed with.
type call struct {
	policy            *string
	tags              []Tag
	sourceID, session string
}

// plan computes what assume sends for req under p; Preview shows it.
func plan(p Profile, req issuers.Request) (call, error) {
	var cluster attest.ClusterRef
	if req.Cluster != "" {
		var err error
		if cluster, err = attest.ParseClusterRef(req.Cluster); err != nil {
			return call{}, fmt.Errorf("awssts: %w", err)
		}
	}
	ns, name := cluster.Namespace, cluster.Name
	var c call
	if p.Policy != nil {
		doc, err := p.Policy.Render(PolicyVars{ClusterNamespace: ns, ClusterName: name, Profile: req.Profile})
		if err != nil {
			return call{}, err
		}
		c.policy = aws.String(doc)
	}
	var err error
	if c.tags, err = SessionTags(TagValues{SPIFFEID: req.Subject, Profile: req.Profile, ClusterNamespace: ns, ClusterName: name, IssuanceID: req.IssuanceID}); err != nil {
		return call{}, err
	}
	c.sourceID, c.session = SourceIdentity(req.Subject), RoleSessionName(req.Subject)
	return c, nil
}

// Preview implements issuers.Previewer: the role, session policy, source
// identity, session name and tags assume would send for req.
func (i *Issuer) Preview(req issuers.Request) (issuers.Preview, error) {
	p, ok := i.profiles[req.Profile]
	if !ok {
		return issuers.Preview{}, fmt.Errorf("awssts: profile %q is not configured for this issuer", req.Profile)
	}
	c, err := plan(p, req)
	if err != nil {
		return issuers.Preview{}, err
	}
	out := issuers.Preview{Target: p.RoleARN, Details: map[string]string{"RoleSessionName": c.session, "SourceIdentity": c.sourceID}}
	if c.policy != nil {
		out.SessionPolicy = *c.policy
	}
	for _, t := range c.tags {
		out.Details["tag "+t.Key] = t.Value
	}
	return out, nil
}

func (i *Issuer) assume(ctx context.Context, p Profile, seconds int32, req issuers.Request) (issuers.Credential, error) {
	c, err := plan(p, req)
	if err != nil {
		return issuers.Credential{}, err
	}
	policy, tags, sourceID, session := c.policy, c.tags, c.sourceID, c.session

	var creds *ststypes.Credentials
	switch i.mode {
	case CredentialsWebIdentity:
		token, err := i.webIdentityToken(req, sourceID, tags)
		if err != nil {
			return issuers.Credential{}, err
		}
		out, err := i.client.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
			RoleArn:          aws.String(p.RoleARN),
			RoleSessionName:  aws.String(session),
			WebIdentityToken: aws.String(token),
			DurationSeconds:  aws.Int32(seconds),
			Policy:           policy,
		})
		if err != nil {
			return issuers.Credential{}, classify(err)
		}
		creds = out.Credentials
	default:
		in := &sts.AssumeRoleInput{
			RoleArn:         aws.String(p.RoleARN),
			RoleSessionName: aws.String(session),
			DurationSeconds: aws.Int32(seconds),
			Policy:          policy,
			SourceIdentity:  aws.String(sourceID),
		}
		if p.ExternalID != "" {
			in.ExternalId = aws.String(p.ExternalID)
		}
		for _, t := range tags {
			in.Tags = append(in.Tags, ststypes.Tag{Key: aws.String(t.Key), Value: aws.String(t.Value)})
		}
		out, err := i.client.AssumeRole(ctx, in)
		if err != nil {
			return issuers.Credential{}, classify(err)
		}
		creds = out.Credentials
	}
	if creds == nil || creds.AccessKeyId == nil || creds.SecretAccessKey == nil || creds.SessionToken == nil || creds.Expiration == nil {
		return issuers.Credential{}, &issuers.Error{Kind: issuers.ErrUnavailable, Code: "IncompleteResponse",
			Err: errors.New("awssts: STS answered without complete credentials")}
	}
	return issuers.Credential{
		Kind: issuers.KindAWS,
		AWS: &issuers.AWSCredentials{
			AccessKeyID:     *creds.AccessKeyId,
			SecretAccessKey: *creds.SecretAccessKey,
			SessionToken:    *creds.SessionToken,
		},
		ExpiresAt:      creds.Expiration.UTC(),
		UpstreamRef:    *creds.AccessKeyId,
		SourceIdentity: sourceID,
	}, nil
}

// webIdentityToken signs the token exchanged for req: the caller's SPIFFE ID
// as sub, and the source identity and session tags in the claims STS reads
// them from.
func (i *Issuer) webIdentityToken(req issuers.Request, sourceID string, tags []Tag) (string, error) {
	now := i.clock().Truncate(time.Second)
	principalTags := make(map[string]any, len(tags))
	for _, t := range tags {
		principalTags[t.Key] = []string{t.Value}
	}
	claims := map[string]any{
		"sub":               req.Subject,
		"aud":               i.webIdentity.Audience,
		"iat":               now.Unix(),
		"nbf":               now.Unix(),
		"exp":               now.Add(i.webIdentity.TokenTTL).Unix(),
		"jti":               req.IssuanceID,
		"profile":           req.Profile,
		sourceIdentityClaim: sourceID,
		sessionTagsClaim:    map[string]any{"principal_tags": principalTags},
	}
	if req.Cluster != "" {
		claims["cluster"] = req.Cluster
	}
	token, err := i.webIdentity.Signer.Sign(claims)
	if err != nil {
		return "", fmt.Errorf("awssts: signing the web identity token: %w", err)
	}
	return token, nil
}

// STS error codes by what they mean for the caller.
var (
	unavailableCodes = map[string]bool{
		"Throttling": true, "ThrottlingException": true, "RequestLimitExceeded": true,
		"TooManyRequestsException": true, "ServiceUnavailable": true, "InternalFailure": true,
		"InternalError": true, "IDPCommunicationError": true, "RequestTimeout": true,
	}
	rejectedCodes = map[string]bool{
		"AccessDenied": true, "InvalidIdentityToken": true, "ExpiredToken": true,
		"ExpiredTokenException": true, "IDPRejectedClaim": true, "RegionDisabledException": true,
	}
)

// classify turns an STS failure (after the SDK's retries) into an
// issuers.Error that names only the STS error code.
func classify(err error) error {
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		switch {
		case unavailableCodes[code]:
			return &issuers.Error{Kind: issuers.ErrUnavailable, Code: code, RetryAfter: unavailableRetryAfter, Err: err}
		case rejectedCodes[code]:
			return &issuers.Error{Kind: issuers.ErrRejected, Code: code, Err: err}
		default:
			return &issuers.Error{Kind: issuers.ErrMisconfigured, Code: code, Err: err}
		}
	}
	code := "Unreachable"
	if errors.Is(err, context.DeadlineExceeded) {
		code = "Timeout"
	}
	return &issuers.Error{Kind: issuers.ErrUnavailable, Code: code, RetryAfter: unavailableRetryAfter, Err: err}
}
