// Package nodeagent is the node side of node attestation: it makes a key
// that never leaves the node, attests to the broker with bootstrap evidence
// (a join token, a projected service account token, or an EC2 instance
// identity document) to get the node's first SVID, keeps the SVID in an SVID
// directory (svid.pem, svid_key.pem mode 0600, bundle.pem) that the other
// credbroker clients read, and renews it with the current SVID at about half
// of its lifetime, with jitter.
package nodeagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Evidence builds the attestation part of an AttestNode request.
type Evidence func(ctx context.Context, req *credbrokerv1.AttestNodeRequest) error

// JoinToken is evidence from a one-time join token; node names the node when
// the token does not.
func JoinToken(token, node string) Evidence {
	return func(_ context.Context, req *credbrokerv1.AttestNodeRequest) error {
		if token == "" {
			return errors.New("nodeagent: the join token is empty")
		}
		req.Evidence = &credbrokerv1.AttestNodeRequest_JoinToken{JoinToken: &credbrokerv1.JoinTokenEvidence{Token: token, NodeName: node}}
		return nil
	}
}

// PSAT is evidence from a projected service account token, read from path
// at attestation time (the kubelet rotates it).
func PSAT(cluster string, read func() ([]byte, error)) Evidence {
	return func(_ context.Context, req *credbrokerv1.AttestNodeRequest) error {
		tok, err := read()
		if err != nil {
			return fmt.Errorf("nodeagent: reading the service account token: %w", err)
		}
		req.Evidence = &credbrokerv1.AttestNodeRequest_K8SPsat{K8SPsat: &credbrokerv1.K8SPSATEvidence{Cluster: cluster, Token: string(tok)}}
		return nil
	}
}

// IID is evidence from an EC2 instance identity document and its signature,
// fetched by fetch (from the instance metadata service in production).
func IID(cluster string, fetch func(ctx context.Context) (document, signature []byte, err error)) Evidence {
	return func(ctx context.Context, req *credbrokerv1.AttestNodeRequest) error {
		doc, sig, err := fetch(ctx)
		if err != nil {
			return fmt.Errorf("nodeagent: fetching the instance identity document: %w", err)
		}
		req.Evidence = &credbrokerv1.AttestNodeRequest_AwsIid{AwsIid: &credbrokerv1.AWSIIDEvidence{Cluster: cluster, Document: doc, Signature: sig}}
		return nil
	}
}

// Config configures an Agent.
type Config struct {
	// Broker is the broker's gRPC address, host:port.
	Broker string
	// BrokerID, when set, is the exact SPIFFE ID the broker must present;
	// otherwise any ID of the trust domain is accepted.
	BrokerID string
	// Bootstrap is the trust bundle (CA certificates) the node uses to verify
	// the broker before it has an SVID; it is public and goes into the
	// node's bootstrap data with the join token.
	Bootstrap *x509bundle.Bundle
	// Dir is the SVID directory to keep.
	Dir string
	// Evidence is used when Dir holds no valid SVID.
	Evidence Evidence
	// RenewAt is the fraction of the SVID's lifetime after which it is
	// renewed; default 0.5. Jitter of ±10 % of the lifetime is added.
	RenewAt float64
	// Clock, Rand and Log default to time.Now, crypto/rand and a discarding
	// logger.
	Clock func() time.Time
	Rand  io.Reader
	Log   *slog.Logger
}

// Agent keeps a node's SVID.
type Agent struct {
	cfg Config
}

// New checks cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Broker == "":
		return nil, errors.New("nodeagent: the broker address is required")
	case cfg.Dir == "":
		return nil, errors.New("nodeagent: the SVID directory is required")
	case cfg.Bootstrap == nil || cfg.Bootstrap.Empty():
		return nil, errors.New("nodeagent: a bootstrap trust bundle is required to verify the broker")
	}
	if cfg.RenewAt == 0 {
		cfg.RenewAt = 0.5
	}
	if cfg.RenewAt <= 0 || cfg.RenewAt >= 1 {
		return nil, fmt.Errorf("nodeagent: renew-at %v must be between 0 and 1", cfg.RenewAt)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg}, nil
}

// Current returns the SVID in the directory if it is still valid.
func (a *Agent) Current() (*x509svid.SVID, bool) {
	svid, _, err := svidfile.Load(a.cfg.Dir)
	if err != nil || !a.cfg.Clock().Before(svid.Certificates[0].NotAfter) {
		return nil, false
	}
	return svid, true
}

// Ensure makes sure the directory holds a valid SVID: it keeps one that is
// valid, and attests with the bootstrap evidence otherwise.
func (a *Agent) Ensure(ctx context.Context) (*x509svid.SVID, error) {
	if svid, ok := a.Current(); ok {
		return svid, nil
	}
	return a.Attest(ctx)
}

// Attest presents the bootstrap evidence and stores the SVID it gets.
func (a *Agent) Attest(ctx context.Context) (*x509svid.SVID, error) {
	if a.cfg.Evidence == nil {
		return nil, errors.New("nodeagent: no valid SVID in the directory and no attestation evidence configured")
	}
	key, csr, err := a.newKey()
	if err != nil {
		return nil, err
	}
	req := &credbrokerv1.AttestNodeRequest{Csr: csr}
	if err := a.cfg.Evidence(ctx, req); err != nil {
		return nil, err
	}
	authorizer, err := a.authorizer(a.cfg.Bootstrap.TrustDomain())
	if err != nil {
		return nil, err
	}
	creds := grpccredentials.TLSClientCredentials(a.cfg.Bootstrap, authorizer)
	resp, err := a.call(ctx, creds, func(ctx context.Context, c credbrokerv1.NodeServiceClient) (*credbrokerv1.NodeSVID, error) {
		r, err := c.AttestNode(ctx, req)
		return r.GetSvid(), err
	})
	if err != nil {
		return nil, err
	}
	return a.store(resp, key)
}

// Renew presents the current SVID and a CSR for a new key, and stores the
// renewed SVID.
func (a *Agent) Renew(ctx context.Context) (*x509svid.SVID, error) {
	current, bundle, err := svidfile.Load(a.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: %w", err)
	}
	key, csr, err := a.newKey()
	if err != nil {
		return nil, err
	}
	authorizer, err := a.authorizer(current.ID.TrustDomain())
	if err != nil {
		return nil, err
	}
	creds := grpccredentials.MTLSClientCredentials(current, bundle, authorizer)
	resp, err := a.call(ctx, creds, func(ctx context.Context, c credbrokerv1.NodeServiceClient) (*credbrokerv1.NodeSVID, error) {
		r, err := c.RenewNodeSVID(ctx, &credbrokerv1.RenewNodeSVIDRequest{Csr: csr})
		return r.GetSvid(), err
	})
	if err != nil {
		return nil, err
	}
	renewed, err := a.store(resp, key)
	if err != nil {
		return nil, err
	}
	if renewed.ID != current.ID {
		return nil, fmt.Errorf("nodeagent: the broker renewed %s as %s", current.ID, renewed.ID)
	}
	return renewed, nil
}

// NextRenewal is when svid should be renewed: RenewAt of its lifetime, give
// or take 10 % of it.
func (a *Agent) NextRenewal(svid *x509svid.SVID) time.Time {
	leaf := svid.Certificates[0]
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	jitter := time.Duration(0)
	if span := int64(life / 5); span > 0 {
		if n, err := rand.Int(a.cfg.Rand, big.NewInt(span)); err == nil {
			jitter = time.Duration(n.Int64()) - life/10
		}
	}
	return leaf.NotBefore.Add(time.Duration(float64(life)*a.cfg.RenewAt) + jitter)
}

// Run keeps the SVID: it ensures one exists, then renews it at NextRenewal,
// retrying failures with jittered backoff while the SVID is valid and re-attesting
// with the bootstrap evidence once it has expired. wait blocks until the
// given time (or ctx ends); tests pass one that returns at once.
func (a *Agent) Run(ctx context.Context, wait func(ctx context.Context, until time.Time) error) error {
	svid, err := a.Ensure(ctx)
	if err != nil {
		return err
	}
	retry := backoff.Policy{Min: MinRetry, Max: MaxRetry, Rand: a.uniform}
	failures := 0
	next := a.NextRenewal(svid)
	for {
		if err := wait(ctx, next); err != nil {
			return nil
		}
		renewed, err := a.Renew(ctx)
		if err == nil {
			svid, failures = renewed, 0
			next = a.NextRenewal(svid)
			a.cfg.Log.Info("node SVID renewed", slog.String("spiffe_id", svid.ID.String()), slog.Time("expires", svid.Certificates[0].NotAfter))
			continue
		}
		if brokerclient.Reason(err) == credbrokerv1.ErrorReason_NODE_EVICTED {
			// Final: the broker refuses this node everywhere, re-attesting included.
			return fmt.Errorf("nodeagent: the broker evicted this node; replace it or join it under a new name: %w", err)
		}
		a.cfg.Log.Warn("node SVID renewal failed", slog.String("error", err.Error()))
		if !a.cfg.Clock().Before(svid.Certificates[0].NotAfter) {
			if svid, err = a.Attest(ctx); err != nil {
				return fmt.Errorf("nodeagent: the SVID expired and attesting again failed: %w", err)
			}
			next = a.NextRenewal(svid)
			continue
		}
		failures++
		next = a.cfg.Clock().Add(retry.Delay(failures))
	}
}

// MinRetry and MaxRetry bound the wait between failed renewals: it doubles
// from MinRetry up to MaxRetry, and its upper half is random (package
// backoff), so the nodes of a fleet that lost the broker together do not
// retry together.
const (
	MinRetry = time.Second
	MaxRetry = time.Minute
)

// uniform draws a number in [0, 1) from cfg.Rand for the retry jitter; if
// the source fails it returns the midpoint (the wait is then unjittered, as
// NextRenewal's is).
func (a *Agent) uniform() float64 {
	const scale = 1 << 53
	n, err := rand.Int(a.cfg.Rand, big.NewInt(scale))
	if err != nil {
		return 0.5
	}
	return float64(n.Int64()) / scale
}

func (a *Agent) authorizer(td spiffeid.TrustDomain) (tlsconfig.Authorizer, error) {
	if a.cfg.BrokerID == "" {
		return tlsconfig.AuthorizeMemberOf(td), nil
	}
	id, err := spiffeid.FromString(a.cfg.BrokerID)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: broker SPIFFE ID %q: %w", a.cfg.BrokerID, err)
	}
	return tlsconfig.AuthorizeID(id), nil
}

// callTimeout bounds one call to the broker.
const callTimeout = 30 * time.Second

func (a *Agent) call(ctx context.Context, creds credentials.TransportCredentials, fn func(context.Context, credbrokerv1.NodeServiceClient) (*credbrokerv1.NodeSVID, error)) (*credbrokerv1.NodeSVID, error) {
	conn, err := grpc.NewClient("passthrough:///"+a.cfg.Broker, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("nodeagent: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	s, err := fn(ctx, credbrokerv1.NewNodeServiceClient(conn))
	if err != nil {
		return nil, brokerError{err}
	}
	return s, nil
}

// brokerError is a broker refusal, described for people; errors.As and
// status.Code still see the gRPC status.
type brokerError struct{ err error }

func (e brokerError) Error() string { return "nodeagent: " + brokerclient.Describe(e.err) }
func (e brokerError) Unwrap() error { return e.err }

func (a *Agent) newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), a.cfg.Rand)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: generating a key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(a.cfg.Rand, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: making a CSR: %w", err)
	}
	return key, csr, nil
}

// store checks the SVID the broker returned against the key it is for and
// writes the directory.
func (a *Agent) store(s *credbrokerv1.NodeSVID, key *ecdsa.PrivateKey) (*x509svid.SVID, error) {
	var chain, roots []*x509.Certificate
	for _, der := range s.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("nodeagent: the broker sent a bad certificate: %w", err)
		}
		chain = append(chain, c)
	}
	for _, der := range s.GetBundle() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("nodeagent: the broker sent a bad bundle certificate: %w", err)
		}
		roots = append(roots, c)
	}
	if len(chain) == 0 || len(roots) == 0 {
		return nil, errors.New("nodeagent: the broker sent no SVID or no bundle")
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, fmt.Errorf("nodeagent: the broker sent a certificate that is not an X.509-SVID: %w", err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	bundle := x509bundle.FromX509Authorities(id.TrustDomain(), roots)
	// The SVID must verify against the bundle it comes with, as every peer
	// will check it.
	if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(a.cfg.Clock())); err != nil {
		return nil, fmt.Errorf("nodeagent: the SVID from the broker does not verify against its bundle: %w", err)
	}
	if err := svidfile.Write(a.cfg.Dir, svid, bundle); err != nil {
		return nil, err
	}
	return svid, nil
}
