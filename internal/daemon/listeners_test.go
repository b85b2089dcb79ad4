package daemon

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/internal/ca"
)

// TestServerTLSConfig: the broker presents its current SVID, speaks only
// TLS 1.3, and asks for a client certificate without requiring or verifying
// one in the handshake (the Gate verifies it per request).
func TestServerTLSConfig(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("tls.test")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tr := &trust{}
	tr.svid.Store(svid)
	c := serverTLSConfig(tr)
	if c.MinVersion != tls.VersionTLS13 || c.ClientAuth != tls.RequestClientCert || c.InsecureSkipVerify || c.VerifyPeerCertificate != nil {
		t.Fatalf("config = MinVersion %x, ClientAuth %v, InsecureSkipVerify %v, VerifyPeerCertificate set %v",
			c.MinVersion, c.ClientAuth, c.InsecureSkipVerify, c.VerifyPeerCertificate != nil)
	}
	cert, err := c.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Certificate) != len(svid.Certificates) || !cert.Leaf.Equal(svid.Certificates[0]) || cert.PrivateKey != svid.PrivateKey {
		t.Fatal("GetCertificate does not serve the SVID from the source")
	}
	// A rotation in the source is served on the next handshake.
	next, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tr.svid.Store(next)
	if cert, err := c.GetCertificate(&tls.ClientHelloInfo{}); err != nil || !cert.Leaf.Equal(next.Certificates[0]) {
		t.Fatalf("after rotation: %v", err)
	}
}

// TestHTTPHeadersAreBounded: the HTTP listener (health, metrics, discovery)
// refuses a request whose headers exceed broker.MaxHeaderBytes (with
// net/http's slack) with 431, and goes on serving.
func TestHTTPHeadersAreBounded(t *testing.T) {
	dir := t.TempDir()
	_, _, cfg := productionIdentity(t, dir)
	d := startDaemon(t, dir, cfg+`
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
`)
	defer d.stop(t)
	req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, "http://"+d.httpAddr+"/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Padding", strings.Repeat("a", 2*broker.MaxHeaderBytes+4096))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized headers: HTTP %d, want 431", resp.StatusCode)
	}
	if h := httpGet(t, "http://"+d.httpAddr+"/healthz"); h != "ok\n" {
		t.Fatalf("healthz after an oversized request = %q", h)
	}
}
