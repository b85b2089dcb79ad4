// Package crash proves that the broker's durability promises survive being
// killed: it drives concurrent issuance through the real `credbroker`
// binary, SIGKILLs it at random moments many times over, restarts it on the
// same data directory each time, and then checks, through the admin API,
// that every credential a client received is on record, that the audit
// chain verifies, and that no quota was ever over-spent across the
// restarts.
//
// The run is seeded: a failure names its seed, and CREDBROKER_CRASH_SEED
// replays the same choices (which identity and cluster each request uses,
// after how many decisions each kill comes). The interleaving with the
// broker's own scheduling is of course not replayed.
package crash

import (
	"testing"

	"github.com/credbroker/credbroker/test/testproc"
)

// binDir holds the freshly built credbroker and credbrokerctl.
var binDir string

func TestMain(m *testing.M) {
	testproc.MainWithBinaries(m, &binDir,
		"github.com/credbroker/credbroker/cmd/credbroker", "github.com/credbroker/credbroker/cmd/credbrokerctl")
}
