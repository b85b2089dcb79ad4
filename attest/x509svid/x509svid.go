// Package x509svid authenticates callers by the X.509-SVID they present as
// their TLS client certificate.
//
// The gRPC server requests but does not verify client certificates in the
// handshake (tls.RequestClientCert); the TLS stack has still checked that the
// peer holds the certificate's private key. Authenticate then verifies the
// chain against the trust bundle for the leaf's trust domain with go-spiffe,
// so a bad certificate becomes an UNAUTHENTICATED error the caller can read
// rather than an opaque handshake failure.
package x509svid

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffex509svid "github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/attest"
)

// maxChain bounds the certificates a peer may present; real SVID chains are
// a leaf and at most a few intermediates.
const maxChain = 8

// Authenticator verifies X.509-SVIDs presented over mTLS. It implements
// attest.Authenticator.
type Authenticator struct {
	bundles x509bundle.Source
	now     func() time.Time
	cache   verifyCache
}

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithClock sets the clock used to check validity periods (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(a *Authenticator) { a.now = now }
}

// New returns an Authenticator that trusts the X.509 bundles in bundles,
// e.g. an *x509bundle.Bundle, an *x509bundle.Set, or a Workload API source.
func New(bundles x509bundle.Source, opts ...Option) *Authenticator {
	a := &Authenticator{bundles: bundles, now: time.Now}
	for _, o := range opts {
		o(a)
	}
	return a
}

var _ attest.Authenticator = (*Authenticator)(nil)

// Authenticate returns the caller proved by the peer's client certificate.
// It returns attest.ErrNoEvidence when the connection is not TLS or the peer
// sent no certificate. Other errors are safe to return to the caller: they
// never contain the certificate.
func (a *Authenticator) Authenticate(ctx context.Context) (attest.Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return attest.Caller{}, attest.ErrNoEvidence
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return attest.Caller{}, attest.ErrNoEvidence
	}
	return a.verify(info.State.PeerCertificates)
}

func (a *Authenticator) verify(certs []*x509.Certificate) (attest.Caller, error) {
	if len(certs) > maxChain {
		return attest.Caller{}, fmt.Errorf("x509svid: certificate chain longer than %d", maxChain)
	}
	now := a.now()
	key := keyOf(certs)
	if c, ok := a.cache.get(key, now, a.bundles); ok {
		return c, nil
	}
	leaf := certs[0]
	// Checked here, before go-spiffe, to give each failure its own message.
	id, err := spiffex509svid.IDFromCert(leaf)
	if err != nil {
		return attest.Caller{}, notSVID(err.Error(), err)
	}
	if id.Path() == "" {
		return attest.Caller{}, notSVID("SPIFFE ID has no path", nil)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return attest.Caller{}, notSVID("leaf lacks digitalSignature key usage", nil)
	}
	td := id.TrustDomain()
	if _, err := a.bundles.GetX509BundleForTrustDomain(td); err != nil {
		return attest.Caller{}, &authError{msg: fmt.Sprintf("x509svid: no trust bundle for trust domain %q", td.Name()), cause: err}
	}

	_, chains, err := spiffex509svid.Verify(certs, a.bundles, spiffex509svid.WithTime(now))
	if err != nil {
		return attest.Caller{}, verifyError(td, err)
	}
	caller := attest.Caller{
		ID:          id,
		Method:      attest.MethodX509SVID,
		ExpiresAt:   expiry(chains),
		Constraints: attest.ConstraintsFor(id),
	}
	a.cache.put(key, cached{caller: caller, notBefore: latestNotBefore(chains), verifiedAt: now, anchors: anchorsOf(chains)})
	return caller, nil
}

// expiry is when the first certificate of the verified chains expires. For
// an ordinary SVID that is the leaf's NotAfter; an intermediate that expires
// sooner ends the evidence sooner.
func expiry(chains [][]*x509.Certificate) time.Time {
	var t time.Time
	for _, chain := range chains {
		for _, c := range chain {
			if t.IsZero() || c.NotAfter.Before(t) {
				t = c.NotAfter
			}
		}
	}
	return t
}

func notSVID(reason string, cause error) error {
	return &authError{msg: "x509svid: certificate is not an X.509-SVID: " + reason, cause: cause}
}

// verifyError turns a go-spiffe verification failure into a short, caller-safe
// message, keeping the original as the cause.
func verifyError(td spiffeid.TrustDomain, err error) error {
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.Expired:
			return &authError{msg: "x509svid: certificate has expired or is not yet valid", cause: err}
		case x509.NotAuthorizedToSign:
			return &authError{msg: "x509svid: certificate chain contains a certificate not authorized to sign", cause: err}
		}
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return &authError{msg: fmt.Sprintf("x509svid: certificate is not signed by the trust bundle for trust domain %q", td.Name()), cause: err}
	}
	return &authError{msg: "x509svid: certificate chain does not verify", cause: err}
}

// authError is a verification failure. Its message is safe to show the
// caller; Unwrap gives the underlying go-spiffe or crypto/x509 error, whose
// detail (names, times) belongs in logs.
type authError struct {
	msg   string
	cause error
}

func (e *authError) Error() string { return e.msg }

func (e *authError) Unwrap() error { return e.cause }
