package x509svid

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/credbroker/credbroker/attest"
)

// Verifying a chain costs an ECDSA signature check per certificate, which on
// a busy broker is more than everything else a request does. A connection
// presents the same chain on every request, so a successful verification is
// remembered for a short while, keyed by the exact certificate bytes.
// Validity periods are still checked on every request with the injected
// clock, and so is the trust bundle: a cached chain is used only while an
// authority it was verified against is still in the current bundle of its
// trust domain, so a revoked authority (an agent pushing the bundle without
// it) stops being accepted on the next request, not cacheTTL later.
// Failures are never cached.
const (
	cacheTTL     = time.Minute
	cacheEntries = 4096
)

type chainKey [sha256.Size]byte

type cached struct {
	caller     attest.Caller
	notBefore  time.Time // latest NotBefore in the verified chain
	verifiedAt time.Time
	// anchors are the bundle authorities the verified chains end in.
	anchors []*x509.Certificate
}

type verifyCache struct {
	mu      sync.Mutex
	entries map[chainKey]cached
}

func keyOf(certs []*x509.Certificate) chainKey {
	h := sha256.New()
	var n [4]byte
	for _, c := range certs {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k chainKey
	h.Sum(k[:0])
	return k
}

// get returns the cached caller for k if it is still usable at now, with
// bundles as they are now.
func (c *verifyCache) get(k chainKey, now time.Time, bundles x509bundle.Source) (attest.Caller, bool) {
	c.mu.Lock()
	e, ok := c.entries[k]
	c.mu.Unlock()
	if !ok || now.Sub(e.verifiedAt) >= cacheTTL || now.Before(e.verifiedAt) ||
		now.Before(e.notBefore) || !now.Before(e.caller.ExpiresAt) {
		return attest.Caller{}, false
	}
	b, err := bundles.GetX509BundleForTrustDomain(e.caller.ID.TrustDomain())
	if err != nil || !slices.ContainsFunc(e.anchors, b.HasX509Authority) {
		return attest.Caller{}, false
	}
	return e.caller, true
}

func (c *verifyCache) put(k chainKey, e cached) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil || len(c.entries) >= cacheEntries {
		// Dropping everything is crude but bounded and rare: it only happens
		// with thousands of distinct chains inside one cacheTTL.
		c.entries = make(map[chainKey]cached, 64)
	}
	c.entries[k] = e
}

// anchorsOf returns the last certificate of each chain: the bundle
// authorities the chains were verified against.
func anchorsOf(chains [][]*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, chain := range chains {
		if len(chain) > 0 && !slices.ContainsFunc(out, chain[len(chain)-1].Equal) {
			out = append(out, chain[len(chain)-1])
		}
	}
	return out
}

func latestNotBefore(chains [][]*x509.Certificate) time.Time {
	var t time.Time
	for _, chain := range chains {
		for _, c := range chain {
			if c.NotBefore.After(t) {
				t = c.NotBefore
			}
		}
	}
	return t
}
