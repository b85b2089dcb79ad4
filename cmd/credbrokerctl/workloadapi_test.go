package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/test/spiffetest"
)

// TestAdminIdentityFromWorkloadAPI: with --broker, credbrokerctl takes the
// admin's SVID from a real Workload API on a unix socket (flag or
// SPIFFE_ENDPOINT_SOCKET, --spiffe-id choosing among several) and uses the
// admin API of a real broker over mTLS.
func TestAdminIdentityFromWorkloadAPI(t *testing.T) {
	b := startDevBroker(t)
	addr := b.addr
	admin, controller := filepath.Join(b.dir, "dev", "admin"), filepath.Join(b.dir, "dev", "controller")
	// The controller first: the agent's default is not an admin.
	agent, err := spiffetest.ServeSVIDDirs(t.TempDir(), controller, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	adminID := "spiffe://dev.credbroker.test/credbroker/admin"
	env := map[string]string{"SPIFFE_ENDPOINT_SOCKET": agent.Addr()}

	for name, r := range map[string]result{
		"flag":        cli(t, nil, "--broker", addr, "--workload-api-socket", agent.Addr(), "--spiffe-id", adminID, "audit", "verify"),
		"environment": cli(t, env, "--broker", addr, "--spiffe-id", adminID, "audit", "verify"),
		"svid dir":    cli(t, env, "--broker", addr, "--svid-dir", admin, "audit", "verify"),
	} {
		if r.code != 0 || !strings.Contains(r.stdout, "audit chain OK") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", name, r.code, r.stdout, r.stderr)
		}
	}
	// The agent's first SVID is the controller's: not an admin.
	if r := cli(t, env, "--broker", addr, "audit", "verify"); r.code != 1 || !strings.Contains(r.stderr, "not an admin identity") {
		t.Errorf("the agent's default identity: exit %d, %q", r.code, r.stderr)
	}
	for name, tc := range map[string]struct {
		env  map[string]string
		args []string
		want string
	}{
		"both flags":           {nil, []string{"--broker", addr, "--svid-dir", admin, "--workload-api-socket", agent.Addr()}, "not both"},
		"no identity":          {nil, []string{"--broker", addr}, "an identity is required"},
		"identity, no broker":  {nil, []string{"--workload-api-socket", agent.Addr()}, "--workload-api-socket goes with --broker"},
		"spiffe-id with a dir": {nil, []string{"--broker", addr, "--svid-dir", admin, "--spiffe-id", adminID}, "--spiffe-id"},
	} {
		if r := cli(t, tc.env, append(tc.args, "audit", "verify")...); r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, %q; want 2 and %q", name, r.code, r.stderr, tc.want)
		}
	}
}
