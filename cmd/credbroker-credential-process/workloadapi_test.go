package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/credbroker/credbroker/internal/daemon"
	"github.com/credbroker/credbroker/test/spiffetest"
)

// devBroker runs `credbroker serve --dev` in this process and returns its
// gRPC address and data directory; it stops when the test ends.
func devBroker(t *testing.T) (addr, dataDir string) {
	t.Helper()
	dataDir = t.TempDir()
	logs := &servingLog{serving: make(chan string, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{Dev: true, DataDir: dataDir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Stdout: io.Discard, Stderr: logs})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker: %v", err)
		}
	})
	select {
	case addr = <-logs.serving:
	case err := <-done:
		t.Fatalf("broker: %v", err)
	}
	return addr, dataDir
}

var servingRE = regexp.MustCompile(`msg=serving grpc=(\S+)`)

type servingLog struct {
	mu      sync.Mutex
	serving chan string
}

func (s *servingLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := servingRE.FindSubmatch(p); m != nil {
		s.serving <- string(m[1])
	}
	return len(p), nil
}

// TestIdentityFromWorkloadAPI: the credential process takes its SVID from a
// real Workload API on a unix socket (flag or SPIFFE_ENDPOINT_SOCKET), picks
// it by --spiffe-id when the agent serves several, and gets a credential
// from a real broker.
func TestIdentityFromWorkloadAPI(t *testing.T) {
	addr, dataDir := devBroker(t)
	controller, admin := filepath.Join(dataDir, "dev", "controller"), filepath.Join(dataDir, "dev", "admin")
	// The admin first: the agent's default is not the identity the policy
	// grants dev-token to.
	agent, err := spiffetest.ServeSVIDDirs(t.TempDir(), admin, controller)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	t.Setenv("CREDBROKER_SVID_DIR", "")

	request := func(env string, args ...string) (int, string, string) {
		t.Helper()
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", env)
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"--broker", addr, "--profile", "dev-token", "--format", "json"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	controllerID := "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller"
	for name, args := range map[string][]string{
		"flag":        {"--workload-api-socket", agent.Addr(), "--spiffe-id", controllerID},
		"environment": {"--spiffe-id", controllerID},
	} {
		code, out, errb := request(agent.Addr(), args...)
		var cred struct{ Token, Expiration string }
		if code != 0 || json.Unmarshal([]byte(out), &cred) != nil || cred.Token == "" || cred.Expiration == "" {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q", name, code, out, errb)
		}
	}
	// The agent's default SVID is the admin's, which may not have dev-token.
	if code, _, errb := request(agent.Addr()); code != 1 || !strings.Contains(errb, "[POLICY_DENIED]") {
		t.Errorf("the agent's default identity: exit %d, %q; want a policy refusal", code, errb)
	}
	// An ID the agent does not serve: the reason, one line.
	code, _, errb := request(agent.Addr(), "--spiffe-id", "spiffe://dev.credbroker.test/nobody")
	if code != 1 || !strings.Contains(errb, "not spiffe://dev.credbroker.test/nobody") || strings.Count(errb, "\n") != 1 {
		t.Errorf("unknown --spiffe-id: exit %d, %q", code, errb)
	}
	// --svid-dir wins over the environment; both flags are an error.
	if code, out, errb := request(agent.Addr(), "--svid-dir", controller); code != 0 || !strings.Contains(out, `"token"`) {
		t.Errorf("--svid-dir with SPIFFE_ENDPOINT_SOCKET set: exit %d, %q", code, errb)
	}
	if code, _, errb := request("", "--svid-dir", controller, "--workload-api-socket", agent.Addr()); code != 2 || !strings.Contains(errb, "not both") {
		t.Errorf("both flags: exit %d, %q", code, errb)
	}
}
