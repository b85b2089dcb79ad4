// Package ha proves the promises of a replicated broker with real
// processes: three `credbroker serve` processes, each with its own
// configuration file, data directory, listeners and audit chain, share
// their state in a three-member etcd on loopback (test/etcdtest: embedded
// members behind proxies that the test stops, restarts and cuts). Workloads
// reach them over gRPC with X.509-SVIDs on real sockets, the admin through
// `credbrokerctl` on each process's admin socket, as an operator would.
//
// The broker's own packages prove the same promises in-process
// (internal/daemon's replica tests, etcdstate's conformance suite), faster
// to run while developing; this package proves that the binaries, wired by
// their configuration files alone, keep them, and that a SIGKILLed process
// loses nothing the others answered.
package ha

import (
	"testing"

	"github.com/credbroker/credbroker/test/testproc"
)

// binDir holds the freshly built credbroker, credbrokerctl and
// credbroker-sidecar (a node's agent).
var binDir string

func TestMain(m *testing.M) {
	testproc.MainWithBinaries(m, &binDir, "github.com/credbroker/credbroker/cmd/credbroker",
		"github.com/credbroker/credbroker/cmd/credbrokerctl", "github.com/credbroker/credbroker/cmd/credbroker-sidecar")
}
