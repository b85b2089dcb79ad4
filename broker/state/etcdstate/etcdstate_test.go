package etcdstate_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
	"github.com/credbroker/credbroker/broker/state/statetest"
	"github.com/credbroker/credbroker/test/etcdtest"
)

// endpointsEnv hands the shared etcd's endpoints to the conformance suite's
// crash child (this binary, run again), which must reach the same etcd as
// its parent.
const endpointsEnv = "CREDBROKER_ETCDSTATE_ENDPOINTS"

// shared is the one-member etcd the conformance suite runs against; every
// subtest keeps its state under its own prefix.
var shared []string

func TestMain(m *testing.M) {
	if eps, ok := os.LookupEnv(endpointsEnv); ok {
		shared = strings.Split(eps, ",")
		os.Exit(m.Run())
	}
	os.Exit(runWithEtcd(m))
}

func runWithEtcd(m *testing.M) int {
	dir, err := os.MkdirTemp("", "etcdstate-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	c, err := etcdtest.Start(dir, 1)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	shared = c.Endpoints()
	os.Setenv(endpointsEnv, strings.Join(shared, ","))
	code := m.Run()
	c.Close()
	if code == 0 {
		// A multi-member etcd's peer HTTP connections (its members ask each
		// other for their versions over keep-alive HTTP) outlive
		// embed.Close: the server keeps its round tripper's idle
		// connections. The Store speaks gRPC only, so ignoring net/http's
		// connection goroutines hides nothing of its own.
		if err := goleak.Find(
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
			goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// prefixFor names the state a directory stands for: the suite's reopen and
// crash tests find it again by the same directory, also from a child
// process.
func prefixFor(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return "/statetest/" + hex.EncodeToString(sum[:8]) + "/"
}

// openOn opens a Store on endpoints under dir's prefix, closed when the test
// ends.
func openOn(t testing.TB, endpoints []string, dir string) *etcdstate.Store {
	t.Helper()
	s, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: endpoints, Options: etcdstate.Options{Prefix: prefixFor(dir)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// harness runs the suite against the members of one cluster: Open on the
// first, replica i on member i+1 (round the cluster).
func harness(endpoints []string) statetest.Harness {
	return statetest.Harness{
		Open: func(t testing.TB, dir string) state.Store { return openOn(t, endpoints[:1], dir) },
		Replicas: func(t testing.TB, dir string, n int) []state.Store {
			out := make([]state.Store, n)
			for i := range out {
				out[i] = openOn(t, []string{endpoints[(i+1)%len(endpoints)]}, dir)
			}
			return out
		},
	}
}

func TestConformance(t *testing.T) {
	statetest.Run(t, harness(shared))
}

// TestAcrossMembers runs on a three-member cluster: the suite's races with
// each replica's client on a different member, so that spends and consumes
// race through different members' raft proposals (no quota is double
// spent, no join token or approval consumed twice); and revocations made
// through one member reaching the watches on the others.
func TestAcrossMembers(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, 3)
	statetest.RunRaces(t, harness(c.Endpoints()))
	t.Run("revocation-propagation", func(t *testing.T) { testRevocationReachesEveryReplica(t, c.Endpoints()) })
}
