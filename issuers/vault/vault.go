// Package vault mints credentials through HashiCorp Vault, so that Vault's
// engines and policies apply and the broker adds attestation, quotas and its
// audit trail on top.
//
// The broker authenticates to Vault without a static token: with Vault's JWT
// auth method trusting the broker's own OIDC issuer (the broker signs a
// short-lived token for itself and logs in), or with AppRole, or — the
// fallback — a token file. The Vault token is renewed by a LifetimeWatcher
// and re-acquired when it can no longer be renewed or a login fails.
//
// Profiles are of three kinds:
//
//   - aws: read an AWS secrets engine path (`aws/sts/ROLE` for assumed_role
//     or federation_token, `aws/creds/ROLE`) with the granted TTL; the result
//     is AWS credentials, like the STS issuer's;
//   - token: create a Vault token through a token role (which should be
//     orphan, so that the token does not die with the broker's own), with the
//     profile's policies, TTL = explicit max TTL = the granted TTL, num_uses,
//     and metadata naming the caller, cluster, profile and issuance;
//   - secret: read any path that returns a leased secret (a database engine,
//     for instance), returned as a JSON object.
//
// Every credential's lease id (or, for tokens, the accessor) is its upstream
// reference, recorded in the audit trail; Revoke revokes it in Vault.
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credbroker/credbroker/issuers"
)

// Profile kinds.
const (
	KindAWS    = "aws"
	KindToken  = "token"
	KindSecret = "secret"
)

// Defaults.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultMaxRetries  = 1
	DefaultJWTAudience = "vault"
	// loginTokenTTL is the lifetime of the token the broker signs to log in.
	loginTokenTTL = 5 * time.Minute
	// throttledRetryAfter is the delay suggested after Vault's 429, which
	// carries no Retry-After the api client exposes.
	throttledRetryAfter = time.Second
	// unavailableRetryAfter is suggested when Vault is sealed or unreachable.
	unavailableRetryAfter = 2 * time.Second
)

// Signer signs the JWTs the broker logs in to Vault with (*jwt.Issuer).
type Signer interface {
	Sign(claims map[string]any) (string, error)
}

// Auth logs the broker in to Vault and returns the auth secret.
type Auth interface {
	Login(ctx context.Context, c *vaultapi.Client) (*vaultapi.Secret, error)
}

// JWTAuth logs in with Vault's JWT auth method using a token the broker's
// own OIDC issuer signs for the broker itself.
type JWTAuth struct {
	// Mount is the auth mount path, e.g. "jwt".
	Mount string
	// Role is the JWT auth role to log in as.
	Role string
	// Signer signs the login token; Subject and Audience are its sub and aud
	// (the role's bound_audiences must include Audience).
	Signer   Signer
	Subject  string
	Audience string
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// Login implements Auth.
func (a JWTAuth) Login(ctx context.Context, c *vaultapi.Client) (*vaultapi.Secret, error) {
	now := time.Now
	if a.Clock != nil {
		now = a.Clock
	}
	t := now().Truncate(time.Second)
	token, err := a.Signer.Sign(map[string]any{
		"sub": a.Subject, "aud": a.Audience, "iat": t.Unix(), "nbf": t.Unix(), "exp": t.Add(loginTokenTTL).Unix(),
	})
	if err != nil {
		return nil, fmt.Errorf("vault: signing the login token: %w", err)
	}
	return c.Logical().WriteWithContext(ctx, "auth/"+a.Mount+"/login", map[string]any{"role": a.Role, "jwt": token})
}

// AppRoleAuth logs in with AppRole; the role and secret ids are read from
// files at each login, so that they can be rotated.
type AppRoleAuth struct {
	Mount                    string
	RoleIDFile, SecretIDFile string
}

// Login implements Auth.
func (a AppRoleAuth) Login(ctx context.Context, c *vaultapi.Client) (*vaultapi.Secret, error) {
	roleID, err := readSecretFile(a.RoleIDFile)
	if err != nil {
		return nil, err
	}
	secretID, err := readSecretFile(a.SecretIDFile)
	if err != nil {
		return nil, err
	}
	return c.Logical().WriteWithContext(ctx, "auth/"+a.Mount+"/login", map[string]any{"role_id": roleID, "secret_id": secretID})
}

// TokenFileAuth uses a token kept in a file (re-read at each login) and
// looks it up to learn its lifetime.
type TokenFileAuth struct {
	Path string
}

// Login implements Auth.
func (a TokenFileAuth) Login(ctx context.Context, c *vaultapi.Client) (*vaultapi.Secret, error) {
	tok, err := readSecretFile(a.Path)
	if err != nil {
		return nil, err
	}
	clone, err := c.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	clone.SetToken(tok)
	self, err := clone.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, err
	}
	ttl, _ := self.TokenTTL()
	renewable, _ := self.TokenIsRenewable()
	return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: tok, LeaseDuration: int(ttl / time.Second), Renewable: renewable}}, nil
}

func readSecretFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("vault: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("vault: %s is readable by others (mode %04o); make it 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vault: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("vault: %s is empty", path)
	}
	return s, nil
}

// Profile is what one broker profile reads or creates in Vault.
type Profile struct {
	// Kind is KindAWS, KindToken or KindSecret.
	Kind string
	// Path is read for KindAWS and KindSecret (e.g. "aws/sts/capa").
	Path string
	// TokenRole is the token role KindToken creates through.
	TokenRole string
	// Policies are the KindToken token's policies.
	Policies []string
	// NumUses limits a KindToken token's uses (0: unlimited).
	NumUses int
}

// Config configures an Issuer.
type Config struct {
	// Address of Vault, e.g. https://vault.example.org:8200.
	Address string
	// Namespace is sent as X-Vault-Namespace (Vault Enterprise).
	Namespace string
	// CAFile and ServerName configure TLS to Vault.
	CAFile, ServerName string
	// Timeout bounds one request to Vault; default DefaultTimeout.
	Timeout time.Duration
	// MaxRetries is the api client's retries on 5xx and 429; default
	// DefaultMaxRetries, with short waits, so a caller is not held for
	// seconds. Negative means none.
	MaxRetries int
	// Auth logs the broker in.
	Auth Auth
	// Profiles by broker profile name.
	Profiles map[string]Profile
	// Clock defaults to time.Now; Log to a discarding logger.
	Clock func() time.Time
	Log   *slog.Logger
	// Budget, when set, is drawn from before every Vault call made for a
	// request (logins and renewals of the broker's own token take
	// nothing).
	Budget issuers.Budget
}

// Issuer mints credentials through Vault. It is safe for concurrent use;
// Run keeps it logged in.
type Issuer struct {
	client   *vaultapi.Client
	auth     Auth
	profiles map[string]Profile
	clock    func() time.Time
	log      *slog.Logger
	budget   issuers.Budget

	mu       sync.Mutex
	loggedIn bool
	loginErr error
	ready    chan struct{}
	logins   uint64        // successful logins so far
	loginCh  chan struct{} // closed and replaced at each login
	relogin  chan struct{} // asks Run to log in again now
}

// New checks cfg and builds an Issuer. It does not contact Vault: Run logs
// in (the broker's own OIDC issuer, which Vault may fetch keys from, is only
// serving once the broker has started).
func New(cfg Config) (*Issuer, error) {
	if cfg.Address == "" {
		return nil, errors.New("vault: no address configured")
	}
	if cfg.Auth == nil {
		return nil, errors.New("vault: no auth method configured")
	}
	for name, p := range cfg.Profiles {
		if err := p.check(); err != nil {
			return nil, fmt.Errorf("vault: profile %q: %w", name, err)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	vc := vaultapi.DefaultConfig()
	if vc.Error != nil {
		return nil, fmt.Errorf("vault: %w", vc.Error)
	}
	vc.Address = cfg.Address
	vc.Timeout = cfg.Timeout
	vc.MaxRetries = cfg.MaxRetries
	vc.MinRetryWait, vc.MaxRetryWait = 50*time.Millisecond, 250*time.Millisecond
	if cfg.CAFile != "" || cfg.ServerName != "" {
		if err := vc.ConfigureTLS(&vaultapi.TLSConfig{CACert: cfg.CAFile, TLSServerName: cfg.ServerName}); err != nil {
			return nil, fmt.Errorf("vault: TLS: %w", err)
		}
	}
	client, err := vaultapi.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	// Nothing from the environment (VAULT_TOKEN, VAULT_NAMESPACE) applies.
	client.ClearToken()
	client.SetNamespace(cfg.Namespace)
	return &Issuer{client: client, auth: cfg.Auth, profiles: cfg.Profiles, clock: cfg.Clock, log: cfg.Log, budget: cfg.Budget,
		ready: make(chan struct{}), loginCh: make(chan struct{}), relogin: make(chan struct{}, 1)}, nil
}

func (p Profile) check() error {
	switch p.Kind {
	case KindAWS, KindSecret:
		if p.Path == "" {
			return errors.New("a path is required")
		}
	case KindToken:
		if p.TokenRole == "" {
			return errors.New("a token role is required (an orphan role, so tokens outlive the broker's own)")
		}
		if p.NumUses < 0 {
			return errors.New("num_uses must not be negative")
		}
	default:
		return fmt.Errorf("kind %q: want %s, %s or %s", p.Kind, KindAWS, KindToken, KindSecret)
	}
	return nil
}

// Ready is closed after the first successful login.
func (i *Issuer) Ready() <-chan struct{} { return i.ready }

// Run logs in and keeps the broker's Vault token alive until ctx ends:
// renewed by a LifetimeWatcher, re-acquired by logging in again when it can
// no longer be renewed, with backoff after failed logins.
func (i *Issuer) Run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		secret, err := i.auth.Login(ctx, i.client)
		if err == nil && (secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "") {
			err = errors.New("vault: login returned no token")
		}
		if err != nil {
			i.setLogin(false, err)
			i.log.Warn("vault login failed", slog.String("error", err.Error()), slog.Duration("retry_in", backoff))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = 500 * time.Millisecond
		i.client.SetToken(secret.Auth.ClientToken)
		i.setLogin(true, nil)
		i.log.Info("logged in to vault", slog.String("accessor", secret.Auth.Accessor), slog.Int("ttl_seconds", secret.Auth.LeaseDuration))
		i.keep(ctx, secret)
	}
}

// keep renews secret's token until it cannot be renewed any more (or ctx
// ends); the caller then logs in again.
func (i *Issuer) keep(ctx context.Context, secret *vaultapi.Secret) {
	if !secret.Auth.Renewable || secret.Auth.LeaseDuration == 0 {
		// Not renewable: log in again at two thirds of its lifetime.
		wait := time.Duration(secret.Auth.LeaseDuration) * time.Second * 2 / 3
		if secret.Auth.LeaseDuration == 0 {
			// A non-expiring token (a token file): keep it until it stops working.
			select {
			case <-ctx.Done():
			case <-i.relogin:
			}
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		case <-i.relogin:
		}
		return
	}
	w, err := i.client.NewLifetimeWatcher(&vaultapi.LifetimeWatcherInput{Secret: secret})
	if err != nil {
		i.log.Warn("vault token renewal unavailable", slog.String("error", err.Error()))
		return
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-w.DoneCh():
			if err != nil {
				i.log.Warn("vault token renewal failed; logging in again", slog.String("error", err.Error()))
			}
			return
		case <-i.relogin:
			i.log.Warn("the broker's vault token is no longer valid; logging in again")
			return
		case r := <-w.RenewCh():
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				i.log.Debug("vault token renewed", slog.Int("ttl_seconds", r.Secret.Auth.LeaseDuration))
			}
		}
	}
}

func (i *Issuer) setLogin(ok bool, err error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.loggedIn, i.loginErr = ok, err
	if ok {
		select {
		case <-i.ready:
		default:
			close(i.ready)
		}
		i.logins++
		close(i.loginCh)
		i.loginCh = make(chan struct{})
	}
}

// loginState returns the number of logins so far and a channel closed at
// the next one.
func (i *Issuer) loginState() (uint64, <-chan struct{}) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.logins, i.loginCh
}

// checkOwnToken is called after Vault refused a request: if the broker's own
// token is what Vault no longer accepts (revoked, expired), it asks Run to
// log in again and reports Unavailable rather than blaming the caller.
func (i *Issuer) checkOwnToken(ctx context.Context, refusal error) error {
	var ie *issuers.Error
	if !errors.As(refusal, &ie) || !errors.Is(ie.Kind, issuers.ErrRejected) {
		return refusal
	}
	if _, err := i.client.Auth().Token().LookupSelfWithContext(ctx); err == nil {
		return refusal
	}
	i.setLogin(false, errors.New("vault: the broker's token is no longer accepted"))
	select {
	case i.relogin <- struct{}{}:
	default:
	}
	return &issuers.Error{Kind: issuers.ErrUnavailable, Code: "re-authenticating to Vault", RetryAfter: unavailableRetryAfter, Err: refusal}
}

func (i *Issuer) checkLogin() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.loggedIn {
		return nil
	}
	return &issuers.Error{Kind: issuers.ErrUnavailable, Code: "not logged in to Vault", RetryAfter: unavailableRetryAfter, Err: i.loginErr}
}

// Effect implements issuers.Issuer: every credential is a lease or token
// that exists in Vault.
func (i *Issuer) Effect() issuers.Effect { return issuers.EffectUpstream }

// Issue implements issuers.Issuer.
func (i *Issuer) Issue(ctx context.Context, req issuers.Request) (issuers.Credential, error) {
	p, ok := i.profiles[req.Profile]
	if !ok {
		return issuers.Credential{}, fmt.Errorf("vault: profile %q is not configured for this issuer", req.Profile)
	}
	if err := i.checkLogin(); err != nil {
		return issuers.Credential{}, err
	}
	if i.budget != nil {
		if err := i.budget.Take(ctx); err != nil {
			return issuers.Credential{}, fmt.Errorf("vault: %w", err)
		}
	}
	ttl := strconv.Itoa(int(req.TTL/time.Second)) + "s"
	start := i.clock()
	switch p.Kind {
	case KindToken:
		return i.token(ctx, p, req, ttl, start)
	default:
		secret, err := i.client.Logical().ReadWithDataWithContext(ctx, p.Path, map[string][]string{"ttl": {ttl}})
		if err != nil {
			return issuers.Credential{}, i.checkOwnToken(ctx, classify(err))
		}
		if secret == nil || secret.Data == nil {
			return issuers.Credential{}, &issuers.Error{Kind: issuers.ErrMisconfigured, Code: "no secret at path", Err: fmt.Errorf("vault: nothing at %s", p.Path)}
		}
		if secret.LeaseDuration <= 0 {
			return issuers.Credential{}, &issuers.Error{Kind: issuers.ErrMisconfigured, Code: "secret is not leased",
				Err: fmt.Errorf("vault: %s returned a secret without a lease; only dynamic secrets can be issued", p.Path)}
		}
		cred := issuers.Credential{ExpiresAt: start.Add(time.Duration(secret.LeaseDuration) * time.Second), UpstreamRef: secret.LeaseID}
		if p.Kind == KindAWS {
			aws, err := awsFrom(secret.Data)
			if err != nil {
				return issuers.Credential{}, err
			}
			cred.Kind, cred.AWS = issuers.KindAWS, aws
			return cred, nil
		}
		data, err := json.Marshal(secret.Data)
		if err != nil {
			return issuers.Credential{}, fmt.Errorf("vault: encoding the secret: %w", err)
		}
		cred.Kind, cred.Secret = issuers.KindSecret, data
		return cred, nil
	}
}

// Preview implements issuers.Previewer: the path Issue would read or the
// token role it would create through, with the token's policies. Vault
// keeps the rest (an AWS engine role's policy document) on its side.
func (i *Issuer) Preview(req issuers.Request) (issuers.Preview, error) {
	p, ok := i.profiles[req.Profile]
	if !ok {
		return issuers.Preview{}, fmt.Errorf("vault: profile %q is not configured for this issuer", req.Profile)
	}
	ttl := strconv.Itoa(int(req.TTL/time.Second)) + "s"
	if p.Kind != KindToken {
		return issuers.Preview{Target: p.Path, Details: map[string]string{"ttl": ttl}}, nil
	}
	return issuers.Preview{Target: "auth/token/create/" + p.TokenRole, Details: map[string]string{
		"policies": strings.Join(p.Policies, ","), "ttl": ttl, "explicit_max_ttl": ttl, "num_uses": strconv.Itoa(p.NumUses),
	}}, nil
}

// TokenType is the Credential.TokenType of Vault tokens.
const TokenType = "vault"

func (i *Issuer) token(ctx context.Context, p Profile, req issuers.Request, ttl string, start time.Time) (issuers.Credential, error) {
	renewable := false
	meta := map[string]string{"spiffe_id": req.Subject, "profile": req.Profile, "issuance_id": req.IssuanceID}
	if req.Cluster != "" {
		meta["cluster"] = req.Cluster
	}
	secret, err := i.client.Auth().Token().CreateWithRoleWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies:       p.Policies,
		Metadata:       meta,
		TTL:            ttl,
		ExplicitMaxTTL: ttl,
		NumUses:        p.NumUses,
		Renewable:      &renewable,
		DisplayName:    "credbroker-" + req.Profile,
	}, p.TokenRole)
	if err != nil {
		return issuers.Credential{}, i.checkOwnToken(ctx, classify(err))
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return issuers.Credential{}, &issuers.Error{Kind: issuers.ErrUnavailable, Code: "no token in response", Err: errors.New("vault: token create returned no token")}
	}
	return issuers.Credential{
		Kind:        issuers.KindToken,
		Token:       secret.Auth.ClientToken,
		TokenType:   TokenType,
		ExpiresAt:   start.Add(time.Duration(secret.Auth.LeaseDuration) * time.Second),
		UpstreamRef: AccessorRefPrefix + secret.Auth.Accessor,
	}, nil
}

// AccessorRefPrefix marks an upstream reference that is a token accessor
// rather than a lease id.
const AccessorRefPrefix = "accessor:"

// Revoke implements issuers.UpstreamRevoker: it revokes what an issuance's
// upstream reference names, a lease (sys/leases/revoke) or a token by its
// accessor (auth/token/revoke-accessor). A token that is already gone
// (revoked or expired: Vault no longer knows its accessor) counts as
// revoked, so that revoking again is harmless, as it is for leases.
func (i *Issuer) Revoke(ctx context.Context, ref string) error {
	if err := i.checkLogin(); err != nil {
		return err
	}
	var err error
	if acc, ok := strings.CutPrefix(ref, AccessorRefPrefix); ok {
		err = i.client.Auth().Token().RevokeAccessorWithContext(ctx, acc)
		var re *vaultapi.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && slices.Contains(re.Errors, "invalid accessor") {
			return nil
		}
	} else {
		err = i.client.Sys().RevokeWithContext(ctx, ref)
	}
	if err != nil {
		return i.checkOwnToken(ctx, classify(err))
	}
	return nil
}

func awsFrom(data map[string]any) (*issuers.AWSCredentials, error) {
	str := func(k string) string { s, _ := data[k].(string); return s }
	c := &issuers.AWSCredentials{AccessKeyID: str("access_key"), SecretAccessKey: str("secret_key"), SessionToken: str("session_token")}
	if c.SessionToken == "" {
		c.SessionToken = str("security_token")
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return nil, &issuers.Error{Kind: issuers.ErrMisconfigured, Code: "not AWS credentials",
			Err: errors.New("vault: the path did not return access_key and secret_key (is it an AWS secrets engine path?)")}
	}
	return c, nil
}

// classify turns a Vault failure into an issuers.Error naming only an HTTP
// status, never Vault's message.
func classify(err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		code := fmt.Sprintf("HTTP %d", re.StatusCode)
		switch {
		case re.StatusCode == http.StatusTooManyRequests:
			return &issuers.Error{Kind: issuers.ErrThrottled, Code: code, RetryAfter: throttledRetryAfter, Err: err}
		case re.StatusCode == http.StatusForbidden:
			return &issuers.Error{Kind: issuers.ErrRejected, Code: code + " permission denied", Err: err}
		case re.StatusCode == http.StatusServiceUnavailable:
			return &issuers.Error{Kind: issuers.ErrUnavailable, Code: code + " sealed or in standby", RetryAfter: unavailableRetryAfter, Err: err}
		case re.StatusCode >= 500:
			return &issuers.Error{Kind: issuers.ErrUnavailable, Code: code, RetryAfter: unavailableRetryAfter, Err: err}
		default:
			return &issuers.Error{Kind: issuers.ErrMisconfigured, Code: code, Err: err}
		}
	}
	code := "unreachable"
	if errors.Is(err, context.DeadlineExceeded) {
		code = "timeout"
	}
	return &issuers.Error{Kind: issuers.ErrUnavailable, Code: code, RetryAfter: unavailableRetryAfter, Err: err}
}

var _ issuers.UpstreamRevoker = (*Issuer)(nil)
