package psat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/credbroker/credbroker/attest"
)

// ErrKeysUnavailable is returned (wrapped) when a cluster's signing keys
// could not be fetched, so the token could not be judged either way. It does
// not wrap attest.ErrNodeRejected: the broker should answer Unavailable, and
// the node should retry.
var ErrKeysUnavailable = errors.New("psat: cluster signing keys unavailable")

const (
	// maxDocSize bounds a discovery document or JWKS response.
	maxDocSize = 1 << 20
	// fetchTimeout bounds one discovery + JWKS fetch.
	fetchTimeout = 10 * time.Second
	// defaultKeysTTL is how long fetched keys are used before a refetch.
	defaultKeysTTL = 10 * time.Minute
	// minRefetch spaces fetches triggered by unknown kids or failures, so that
	// tokens with made-up kids cannot make us hammer the cluster's issuer.
	minRefetch = time.Minute
)

// keySource returns the key a cluster signed a token with.
type keySource interface {
	key(ctx context.Context, kid string) (publicKey, error)
}

// staticKeys is a JWKS given in configuration.
type staticKeys map[string]publicKey

func (s staticKeys) key(_ context.Context, kid string) (publicKey, error) {
	k, ok := s[kid]
	if !ok {
		return publicKey{}, unknownKid()
	}
	return k, nil
}

func unknownKid() error {
	return fmt.Errorf("psat: token is signed with a key (kid) the cluster does not publish: %w", attest.ErrNodeRejected)
}

// remoteKeys fetches a cluster's JWKS through OIDC discovery and caches it.
// Keys are refetched when older than ttl, or when a token names an unknown
// kid (key rotation), at most once per minRefetch. If keys are past their
// ttl and cannot be refetched, verification fails closed with
// ErrKeysUnavailable: a key removed from the JWKS must stop being accepted.
type remoteKeys struct {
	discoveryURL string
	issuer       string
	client       *http.Client
	now          func() time.Time
	ttl          time.Duration

	group singleflight.Group

	mu        sync.Mutex
	keys      map[string]publicKey
	fetched   time.Time // of keys; zero before the first success
	attempted time.Time // of the last fetch, successful or not
}

func (r *remoteKeys) key(ctx context.Context, kid string) (publicKey, error) {
	if k, ok, fresh := r.lookup(kid); ok && fresh {
		return k, nil
	}
	// Unknown kid or stale keys: fetch, unless a fetch happened less than
	// minRefetch ago (then refresh only waits for one still in flight).
	if err := r.refresh(ctx); err != nil {
		return publicKey{}, err
	}
	k, ok, fresh := r.lookup(kid)
	switch {
	case !fresh:
		return publicKey{}, fmt.Errorf("%w: last fetch failed less than %v ago", ErrKeysUnavailable, minRefetch)
	case !ok:
		return publicKey{}, unknownKid()
	}
	return k, nil
}

func (r *remoteKeys) lookup(kid string) (k publicKey, ok, fresh bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok = r.keys[kid]
	fresh = !r.fetched.IsZero() && r.now().Sub(r.fetched) < r.ttl
	return k, ok, fresh
}

// refresh fetches the keys once for all concurrent callers, and not at all
// if the last fetch started less than minRefetch ago. The fetch runs
// on its own timeout, not the first caller's context, so one caller giving
// up does not fail the others; each caller still stops waiting when its own
// context ends.
func (r *remoteKeys) refresh(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	ch := r.group.DoChan("", func() (any, error) {
		r.mu.Lock()
		if !r.attempted.IsZero() && r.now().Sub(r.attempted) < minRefetch {
			r.mu.Unlock()
			return nil, nil // another caller just fetched
		}
		r.attempted = r.now()
		r.mu.Unlock()

		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		keys, err := r.fetch(fctx)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.keys, r.fetched = keys, r.now()
		r.mu.Unlock()
		return nil, nil
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrKeysUnavailable, ctx.Err())
	}
}

func (r *remoteKeys) fetch(ctx context.Context) (map[string]publicKey, error) {
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	body, err := r.get(ctx, r.discoveryURL)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(body, &disc); err != nil {
		return nil, fmt.Errorf("%w: discovery document is not valid JSON", ErrKeysUnavailable)
	}
	// OIDC Discovery 1.0 §4.3: the issuer must match the one we expect, or
	// one cluster's discovery endpoint could vouch for another's keys.
	if disc.Issuer != r.issuer {
		return nil, fmt.Errorf("%w: discovery document names another issuer", ErrKeysUnavailable)
	}
	if err := checkHTTPS(disc.JWKSURI); err != nil {
		return nil, fmt.Errorf("%w: discovery document jwks_uri: %w", ErrKeysUnavailable, err)
	}
	if body, err = r.get(ctx, disc.JWKSURI); err != nil {
		return nil, err
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	return keys, nil
}

// get returns the body of a 200 response. Errors name the URL and status but
// never the body, which is not ours to log.
func (r *remoteKeys) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	// kube-apiserver serves its JWKS as application/jwk-set+json and answers
	// 406 to a request that accepts only application/json.
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET %s: HTTP %d", ErrKeysUnavailable, u, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %w", ErrKeysUnavailable, u, err)
	}
	if len(body) > maxDocSize {
		return nil, fmt.Errorf("%w: GET %s: response larger than %d bytes", ErrKeysUnavailable, u, maxDocSize)
	}
	return body, nil
}

// checkHTTPS requires an absolute https URL: keys fetched in clear text
// could be replaced by anyone on the path.
func checkHTTPS(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return errors.New("must be an absolute https URL")
	}
	return nil
}
