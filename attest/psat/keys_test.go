package psat

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/attest"
)

// issuerServer serves an OIDC discovery document and a JWKS over TLS on
// loopback, like a workload cluster's service-account issuer.
type issuerServer struct {
	srv *httptest.Server

	mu        sync.Mutex
	jwks      []byte
	issuer    string // in the discovery document; defaults to the server URL
	status    int    // if non-zero, every response has this status
	discovery int    // requests served
	keys      int
}

func newIssuerServer(t *testing.T, jwks []byte) *issuerServer {
	t.Helper()
	s := &issuerServer{jwks: jwks}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.discovery++
		if s.status != 0 {
			w.WriteHeader(s.status)
			return
		}
		iss := s.issuer
		if iss == "" {
			iss = s.srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss, "jwks_uri": s.srv.URL + "/openid/v1/jwks"})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.keys++
		if s.status != 0 {
			w.WriteHeader(s.status)
			return
		}
		// As kube-apiserver: the JWKS is application/jwk-set+json, and a
		// request that does not accept that type is answered 406.
		if !strings.Contains(r.Header.Get("Accept"), "application/jwk-set+json") {
			w.WriteHeader(http.StatusNotAcceptable)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(s.jwks)
	})
	s.srv = httptest.NewTLSServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *issuerServer) set(f func(s *issuerServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// fetches returns how many discovery and JWKS requests were served.
func (s *issuerServer) fetches() (discovery, keys int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.discovery, s.keys
}

type discoveryFixture struct {
	srv   *issuerServer
	v     *Verifier
	clock *clock
}

func newDiscoveryFixture(t *testing.T, signers ...signer) *discoveryFixture {
	t.Helper()
	f := &discoveryFixture{srv: newIssuerServer(t, jwksOf(t, signers...)), clock: &clock{t: t0}}
	var err error
	f.v, err = New(map[string]ClusterConfig{"fleet/cluster-a": {
		Issuer:          f.srv.srv.URL,
		Audience:        audience,
		DiscoveryURL:    f.srv.srv.URL + "/.well-known/openid-configuration",
		ServiceAccounts: []string{agentSA},
		HTTPClient:      f.srv.srv.Client(),
	}}, WithClock(f.clock.now))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// verify mints a token signed by s, valid at the fixture's current time.
func (f *discoveryFixture) verify(t *testing.T, s signer) error {
	t.Helper()
	tok := mint(t, jwt.SigningMethodES256, s, podClaims(f.srv.srv.URL, f.clock.now()))
	_, err := f.v.Verify(context.Background(), "fleet/cluster-a", tok)
	return err
}

func (f *discoveryFixture) wantFetches(t *testing.T, want int) {
	t.Helper()
	if d, k := f.srv.fetches(); d != want || k != want {
		t.Fatalf("fetched discovery %d and JWKS %d times, want %d", d, k, want)
	}
}

func TestDiscoveryFetchesAndCaches(t *testing.T) {
	k1 := newEC(t, "k1", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	f.wantFetches(t, 0) // nothing fetched before first use
	for range 3 {
		if err := f.verify(t, k1); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	f.wantFetches(t, 1)

	f.clock.advance(10 * time.Minute) // TTL over: fetched again
	if err := f.verify(t, k1); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	f.wantFetches(t, 2)
}

func TestDiscoveryKeyRotation(t *testing.T) {
	k1, k2 := newEC(t, "k1", elliptic.P256()), newEC(t, "k2", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	if err := f.verify(t, k1); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	f.srv.set(func(s *issuerServer) { s.jwks = jwksOf(t, k1, k2) })

	// Within a minute of the last fetch an unknown kid does not refetch.
	f.clock.advance(30 * time.Second)
	if err := f.verify(t, k2); !errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("Verify with new kid 30s after fetch: %v, want rejection", err)
	}
	f.wantFetches(t, 1)

	// After a minute the new kid triggers exactly one fetch.
	f.clock.advance(31 * time.Second)
	for range 2 {
		if err := f.verify(t, k2); err != nil {
			t.Fatalf("Verify with rotated key: %v", err)
		}
	}
	f.wantFetches(t, 1+1)

	// A made-up kid right after cannot force another fetch.
	bogus := newEC(t, "bogus", elliptic.P256())
	if err := f.verify(t, bogus); !errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("Verify with unknown kid: %v, want rejection", err)
	}
	f.wantFetches(t, 2)

	// A key removed from the JWKS stops working once keys are refetched.
	f.srv.set(func(s *issuerServer) { s.jwks = jwksOf(t, k2) })
	f.clock.advance(10 * time.Minute)
	if err := f.verify(t, k1); !errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("Verify with removed key: %v, want rejection", err)
	}
	f.wantFetches(t, 3)
}

func TestDiscoveryConcurrentFetchOnce(t *testing.T) {
	k1 := newEC(t, "k1", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	tok := mint(t, jwt.SigningMethodES256, k1, podClaims(f.srv.srv.URL, t0))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := f.v.Verify(context.Background(), "fleet/cluster-a", tok)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	f.wantFetches(t, 1)
}

func TestDiscoveryFailureIsUnavailable(t *testing.T) {
	k1 := newEC(t, "k1", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	f.srv.set(func(s *issuerServer) { s.status = http.StatusInternalServerError })
	err := f.verify(t, k1)
	if !errors.Is(err, ErrKeysUnavailable) || errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("Verify with issuer down: %v, want ErrKeysUnavailable and not a rejection", err)
	}
	// A failed fetch is not retried for a minute, even by new requests.
	f.srv.set(func(s *issuerServer) { s.status = 0 })
	f.clock.advance(59 * time.Second)
	if err := f.verify(t, k1); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Verify 59s after failure: %v, want ErrKeysUnavailable", err)
	}
	if d, _ := f.srv.fetches(); d != 1 {
		t.Fatalf("discovery fetched %d times, want 1", d)
	}
	f.clock.advance(time.Second)
	if err := f.verify(t, k1); err != nil {
		t.Fatalf("Verify after recovery: %v", err)
	}
}

func TestDiscoveryStaleKeysFailClosed(t *testing.T) {
	k1 := newEC(t, "k1", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	if err := f.verify(t, k1); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	f.srv.set(func(s *issuerServer) { s.status = http.StatusServiceUnavailable })
	f.clock.advance(10 * time.Minute)
	if err := f.verify(t, k1); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Verify with stale keys and issuer down: %v, want ErrKeysUnavailable", err)
	}
}

func TestDiscoveryIssuerMismatch(t *testing.T) {
	k1 := newEC(t, "k1", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	f.srv.set(func(s *issuerServer) { s.issuer = "https://other.example.com" })
	if err := f.verify(t, k1); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Verify with foreign discovery issuer: %v, want ErrKeysUnavailable", err)
	}
}

func TestDiscoveryCallerContextCancelled(t *testing.T) {
	k1 := newEC(t, "k1", elliptic.P256())
	f := newDiscoveryFixture(t, k1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tok := mint(t, jwt.SigningMethodES256, k1, podClaims(f.srv.srv.URL, t0))
	_, err := f.v.Verify(ctx, "fleet/cluster-a", tok)
	if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with cancelled context: %v, want ErrKeysUnavailable wrapping context.Canceled", err)
	}
}
