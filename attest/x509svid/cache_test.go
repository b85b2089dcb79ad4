package x509svid

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// swapBundles is a bundle source whose contents a test can replace.
type swapBundles struct {
	mu  sync.Mutex
	set *x509bundle.Set
}

func (s *swapBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set.GetX509BundleForTrustDomain(td)
}

func (s *swapBundles) replace(b *x509bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set = x509bundle.NewSet(b)
}

func TestVerificationCache(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cache.test")
	t0 := time.Now().Truncate(time.Second)
	clk := fakeclock.New(t0)
	authority, err := ca.New(td, ca.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.New(td, ca.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/w"), 50*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bundles := &swapBundles{set: x509bundle.NewSet(authority.X509Bundle())}
	a := New(bundles, WithClock(clk.Now))

	if _, err := a.verify(svid.Certificates); err != nil {
		t.Fatal(err)
	}
	// The trust bundle rotates away from the signer: the cached chain is
	// refused on the very next request, well inside cacheTTL.
	bundles.replace(other.X509Bundle())
	clk.Set(t0.Add(time.Second))
	if _, err := a.verify(svid.Certificates); err == nil || !strings.Contains(err.Error(), "not signed by the trust bundle") {
		t.Fatalf("cached chain accepted after its authority left the bundle: %v", err)
	}
	// A bundle that still holds the signer among others keeps the entry.
	both := x509bundle.FromX509Authorities(td, append(other.X509Bundle().X509Authorities(), authority.Certificate()))
	bundles.replace(both)
	if _, err := a.verify(svid.Certificates); err != nil {
		t.Fatal(err)
	}
	bundles.replace(other.X509Bundle())
	if _, ok := a.cache.get(keyOf(svid.Certificates), clk.Now(), bundles); ok {
		t.Fatal("cache hit after the authority left the bundle")
	}
	bundles.replace(authority.X509Bundle())
	if _, ok := a.cache.get(keyOf(svid.Certificates), clk.Now(), bundles); !ok {
		t.Fatal("no cache hit for a chain whose authority is in the bundle")
	}
	// Validity periods still count for cached chains.
	clk.Set(t0.Add(55 * time.Second)) // past NotAfter, still inside cacheTTL
	if _, err := a.verify(svid.Certificates); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired chain accepted from cache: %v", err)
	}

	// And cacheTTL bounds an entry regardless.
	fresh, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/w"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.verify(fresh.Certificates); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.cache.get(keyOf(fresh.Certificates), clk.Now().Add(cacheTTL-time.Second), bundles); !ok {
		t.Fatal("no cache hit within cacheTTL")
	}
	if _, ok := a.cache.get(keyOf(fresh.Certificates), clk.Now().Add(cacheTTL), bundles); ok {
		t.Fatal("cache hit after cacheTTL")
	}
	// Failures are not cached: restoring the bundle admits a chain again at once.
	bundles.replace(other.X509Bundle())
	clk.Set(t0.Add(55*time.Second + cacheTTL))
	if _, err := a.verify(fresh.Certificates); err == nil || !strings.Contains(err.Error(), "not signed by the trust bundle") {
		t.Fatalf("chain accepted with a bundle that does not sign it: %v", err)
	}
	bundles.replace(authority.X509Bundle())
	if _, err := a.verify(fresh.Certificates); err != nil {
		t.Fatalf("failure was cached: %v", err)
	}
}

func TestVerificationCacheIsBounded(t *testing.T) {
	var c verifyCache
	now := time.Now()
	for i := 0; i < cacheEntries*3; i++ {
		var k chainKey
		k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
		c.put(k, cached{verifiedAt: now})
		if len(c.entries) > cacheEntries {
			t.Fatalf("cache grew to %d entries", len(c.entries))
		}
	}
}
