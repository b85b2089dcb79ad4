package vaulttest

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"go.uber.org/goleak"

	"github.com/credbroker/credbroker/test/testproc"
)

// TestMain fails the package when a test leaves goroutines behind: a
// process waiter, a probe, or an HTTP connection the cleanup did not close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartServesHealthyUnsealedVaultWithRandomRootToken(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	s := Start(t)
	started := time.Since(begin)

	c := s.Client(t)
	h, err := c.Sys().HealthWithContext(t.Context())
	if err != nil {
		t.Fatalf("sys/health: %v", err)
	}
	if !h.Initialized || h.Sealed || h.Standby || h.Version != "1.21.4" {
		t.Errorf("sys/health = %+v, want initialized, unsealed, active, version 1.21.4", h)
	}
	self, err := c.Auth().Token().LookupSelfWithContext(t.Context())
	if err != nil {
		t.Fatalf("lookup-self as root: %v", err)
	}
	if pols, _ := self.TokenPolicies(); len(pols) != 1 || pols[0] != "root" {
		t.Errorf("root token policies %v, want [root]", pols)
	}
	if !strings.HasPrefix(s.RootToken, "root-") || len(s.RootToken) != len("root-")+40 {
		t.Errorf("RootToken %q is not the harness's random token", s.RootToken)
	}
	if other := Start(t); other.RootToken == s.RootToken || other.Addr == s.Addr {
		t.Errorf("two servers share root token or address: %s, %s", s.Addr, other.Addr)
	}

	begin = time.Now()
	s.Stop(t)
	t.Logf("vault started (healthy) in %s, stopped in %s", started.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
}

func TestStopRefusesConnectionsAndIsNotAFailure(t *testing.T) {
	t.Parallel()
	s := Start(t)
	c := s.Client(t)
	s.Stop(t)
	_, err := c.Logical().ReadWithContext(t.Context(), "secret/data/anything")
	if !isConnRefused(err) {
		t.Fatalf("read after Stop: %v, want connection refused", err)
	}
	// The cleanup registered by Start must accept a deliberate stop; if it
	// did not, this test would fail after returning.
}

func isConnRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func TestWithTLSServesHTTPSVerifiedByItsCA(t *testing.T) {
	t.Parallel()
	s := Start(t, WithTLS())
	if !strings.HasPrefix(s.Addr, "https://127.0.0.1:") || !strings.Contains(string(s.CACertPEM), "BEGIN CERTIFICATE") {
		t.Fatalf("Addr %q, CACertPEM %d bytes; want https and a PEM CA", s.Addr, len(s.CACertPEM))
	}
	if _, err := s.Client(t).Sys().HealthWithContext(t.Context()); err != nil {
		t.Fatalf("sys/health over TLS with the CA: %v", err)
	}
	// Without the CA the certificate must not verify.
	resp, err := http.Get(s.Addr + "/v1/sys/health")
	if err == nil {
		resp.Body.Close()
		t.Fatal("GET with the system roots succeeded; want a certificate error")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("GET with the system roots: %v, want a certificate error", err)
	}
}

func TestOutputIsRedacted(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.Stop(t)
	out := s.proc.Output()
	m := unsealKeyLine.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, s.RootToken) {
		t.Fatalf("vault's banner has no unseal key or root token; the redaction below proves nothing:\n%s", s.redact(out))
	}
	red := s.redact(out)
	for name, secret := range map[string]string{"root token": s.RootToken, "unseal key": m[1]} {
		if strings.Contains(red, secret) {
			t.Errorf("redacted output still holds the %s", name)
		}
	}
	if !strings.Contains(red, "Unseal Key: REDACTED") || !strings.Contains(red, "Root Token: REDACTED") {
		t.Errorf("redacted output does not say what it removed:\n%s", red)
	}
}

func TestClientIgnoresVaultEnvironment(t *testing.T) {
	s := Start(t)
	t.Setenv("VAULT_TOKEN", "not-the-root-token")
	t.Setenv("VAULT_NAMESPACE", "elsewhere")
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
	if _, err := s.Client(t).Auth().Token().LookupSelfWithContext(t.Context()); err != nil {
		t.Fatalf("lookup-self with VAULT_* set in the environment: %v", err)
	}
}

func TestStartWithoutBinaryFailsAndSaysHowToGetIt(t *testing.T) {
	testproc.CheckFailsWithoutBinary(t, EnvBinary, func(tb testing.TB) { Start(tb) }, "make vault")
}

func TestStartRetriesWhenAPortWasTaken(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pick := func() (string, error) {
		picks++
		if picks == 1 {
			return taken.Addr().String(), nil // as if another process bound it after the pick
		}
		return freePort()
	}

	s := start(t, pick)
	if picks != 2 {
		t.Errorf("ports picked %d times, want 2 (one collision, one retry)", picks)
	}
	if s.Addr == "http://"+taken.Addr().String() {
		t.Errorf("Addr %s is the taken port", s.Addr)
	}
	if _, err := s.Client(t).Sys().HealthWithContext(t.Context()); err != nil {
		t.Fatalf("sys/health after the retry: %v", err)
	}
}

func TestStartFailsWithRedactedOutputWhenVaultCannotStart(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	r := testproc.RunFatal(t, func(tb testing.TB) {
		start(tb, func() (string, error) { return taken.Addr().String(), nil })
	})
	if !strings.Contains(r.FatalMessage(), "address already in use") {
		t.Errorf("Start failed with %q, want vault's output saying the address is in use", r.FatalMessage())
	}
	if strings.Contains(r.FatalMessage(), "Root Token: root-") {
		t.Errorf("failure message holds a root token: %q", r.FatalMessage())
	}
}

// isStatus reports whether err is Vault's answer with HTTP status code.
func isStatus(err error, code int) bool {
	var re *vaultapi.ResponseError
	return errors.As(err, &re) && re.StatusCode == code
}
