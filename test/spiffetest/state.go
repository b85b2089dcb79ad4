package spiffetest

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SetX509 replaces the X.509 context: svids (the first is the default; each
// SVID's Hint is passed on) and bundles, which must hold the bundle of every
// SVID's trust domain and may hold federated ones. Every open FetchX509SVID
// and FetchX509Bundles stream receives the new state at once; new streams
// receive it first thing.
//
// An agent with no identity for the caller is SetError's business, so at
// least one SVID is required.
func (w *WorkloadAPI) SetX509(svids []*x509svid.SVID, bundles *x509bundle.Set) error {
	if len(svids) == 0 {
		return errors.New("spiffetest: SetX509 needs at least one SVID (use SetError for a caller with no identity)")
	}
	if bundles == nil {
		return errors.New("spiffetest: SetX509 needs a bundle set")
	}

	svidResp := &workload.X509SVIDResponse{FederatedBundles: map[string][]byte{}}
	own := map[spiffeid.TrustDomain]bool{}
	ids := make([]identity, 0, len(svids))
	for i, s := range svids {
		if s == nil {
			return fmt.Errorf("spiffetest: SVID %d is nil", i)
		}
		// DER certificates, leaf first, concatenated; PKCS#8 DER key: what
		// the client's x509svid.ParseRaw expects.
		certs, key, err := s.MarshalRaw()
		if err != nil {
			return fmt.Errorf("spiffetest: SVID %d (%s): %w", i, s.ID, err)
		}
		td := s.ID.TrustDomain()
		b, ok := bundles.Get(td)
		if !ok {
			return fmt.Errorf("spiffetest: no bundle for trust domain %q of SVID %d (%s)", td, i, s.ID)
		}
		svidResp.Svids = append(svidResp.Svids, &workload.X509SVID{
			SpiffeId:    s.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      concatDER(b.X509Authorities()),
			Hint:        s.Hint,
		})
		own[td] = true
		ids = append(ids, identity{id: s.ID, hint: s.Hint})
	}

	// Bundles are keyed by the trust domain's SPIFFE ID ("spiffe://td"); the
	// federated ones exclude the SVIDs' own trust domains, as in SPIRE.
	bundlesResp := &workload.X509BundlesResponse{Bundles: map[string][]byte{}}
	for _, b := range bundles.Bundles() {
		key := b.TrustDomain().IDString()
		der := concatDER(b.X509Authorities())
		bundlesResp.Bundles[key] = der
		if !own[b.TrustDomain()] {
			svidResp.FederatedBundles[key] = der
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	w.x509, w.x509Bundles, w.ids = svidResp, bundlesResp, ids
	w.broadcastLocked()
	return nil
}

// SetJWTBundles replaces the JWT bundles (sent as JWKS documents keyed by
// trust domain SPIFFE ID). Every open FetchJWTBundles stream receives them at
// once; new streams receive them first thing.
func (w *WorkloadAPI) SetJWTBundles(bundles *jwtbundle.Set) error {
	if bundles == nil {
		return errors.New("spiffetest: SetJWTBundles needs a bundle set")
	}
	resp := &workload.JWTBundlesResponse{Bundles: map[string][]byte{}}
	for _, b := range bundles.Bundles() {
		jwks, err := b.Marshal()
		if err != nil {
			return fmt.Errorf("spiffetest: JWT bundle for %q: %w", b.TrustDomain(), err)
		}
		resp.Bundles[b.TrustDomain().IDString()] = jwks
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	w.jwtBundles = resp
	w.broadcastLocked()
	return nil
}

// concatDER concatenates the DER encodings of certs, the bundle encoding of
// the Workload API.
func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
