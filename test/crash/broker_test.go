package crash

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/testproc"
)

// harness describes the broker binary to testproc: its output is shown
// when the test fails (the broker never logs a credential).
var harness = testproc.Harness{
	Package:   "crash",
	Server:    "credbroker",
	Command:   "credbroker",
	PortTaken: "address already in use",
}

// identity is one workload the clients act as: its SPIFFE ID and X.509-SVID.
type identity struct {
	id   string
	svid *x509svid.SVID
}

// life is one run of the broker process, from its start on the shared data
// directory to its SIGKILL (or the end of the test).
type life struct {
	n        int
	proc     *testproc.Process
	grpcAddr string
	httpAddr string
	conns    []*grpc.ClientConn
	// clients[i] is connected as identities[i].
	clients []credbrokerv1.BrokerServiceClient

	// killing is set before the SIGKILL is sent: an error seen after that
	// is the crash's doing; one seen before is a failure of the broker.
	killing atomic.Bool
	// next is closed once the following life is serving (or the run ends).
	next chan struct{}

	// decisions counts answers that came from the broker's decision path
	// (issued or refused by a quota); reached closes when it hits target.
	decisions   atomic.Int64
	target      int64
	reached     chan struct{}
	reachedOnce sync.Once
}

// decided counts one decision and reports the target when it is reached.
func (l *life) decided() {
	if l.decisions.Add(1) >= l.target {
		l.reachedOnce.Do(func() { close(l.reached) })
	}
}

// startBroker starts `credbroker serve --dev --config cfg` on dataDir and
// connects one client per identity. target is the number of decisions after
// which this life is to be killed (0: at once).
func startBroker(t *testing.T, n int, dataDir, cfg string, env []string, ids []identity, bundle *x509bundle.Bundle, target int64) *life {
	t.Helper()
	l := &life{n: n, next: make(chan struct{}), target: target, reached: make(chan struct{})}
	if target <= 0 {
		l.reachedOnce.Do(func() { close(l.reached) })
	}
	l.proc = harness.Start(t, filepath.Join(binDir, "credbroker"), func() (testproc.Attempt, error) {
		addrs, err := testproc.FreePorts(2)
		if err != nil {
			return testproc.Attempt{}, err
		}
		l.grpcAddr, l.httpAddr = addrs[0], addrs[1]
		cmd := exec.Command(filepath.Join(binDir, "credbroker"), "serve", "--dev", "--config", cfg,
			"--data-dir", dataDir, "--listen", l.grpcAddr, "--http-listen", l.httpAddr)
		cmd.Env = env
		return testproc.Attempt{Cmd: cmd, Ready: func(ctx context.Context) error {
			_, err := httpGet(ctx, "http://"+l.httpAddr+"/healthz")
			return err
		}}, nil
	})
	for _, id := range ids {
		conn, err := brokerclient.DialSource(l.grpcAddr, id.svid, bundle, "")
		if err != nil {
			t.Fatalf("life %d: dial as %s: %v", n, id.id, err)
		}
		l.conns = append(l.conns, conn)
		l.clients = append(l.clients, credbrokerv1.NewBrokerServiceClient(conn))
	}
	return l
}

// killEarly starts the broker on dataDir and SIGKILLs it after delay,
// whether or not it is serving by then. The timer picks the moment of the
// crash; nothing waits on it for state. A broker that exits on its own
// first fails the test.
func killEarly(t *testing.T, dataDir, cfg string, env []string, delay time.Duration) {
	t.Helper()
	addrs, err := testproc.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "credbroker"), "serve", "--dev", "--config", cfg,
		"--data-dir", dataDir, "--listen", addrs[0], "--http-listen", addrs[1])
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	crash := time.NewTimer(delay)
	defer crash.Stop()
	select {
	case err := <-exited:
		t.Fatalf("the broker exited on its own %v into its start-up: %v\n%s", delay, err, out.String())
	case <-crash.C:
	}
	_ = cmd.Process.Kill()
	if err := <-exited; cmd.ProcessState.Exited() {
		// It finished exiting on its own just before the signal.
		t.Fatalf("the broker exited on its own during its start-up: %v\n%s", err, out.String())
	}
}

// kill SIGKILLs the broker and waits for it to be gone, then drops the
// clients' connections.
func (l *life) kill() {
	l.killing.Store(true)
	l.proc.Kill()
	l.closeConns()
}

func (l *life) closeConns() {
	for _, c := range l.conns {
		_ = c.Close()
	}
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// ctl runs credbrokerctl against the broker's admin socket and returns its
// stdout; a non-zero exit is an error carrying stderr.
func ctl(ctx context.Context, dataDir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "credbrokerctl"),
		append([]string{"--socket", filepath.Join(dataDir, "admin.sock"), "--timeout", "2m"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.Bytes(), fmt.Errorf("credbrokerctl %v: exit %d: %s%s", args, ee.ExitCode(), out.String(), errb.String())
		}
		return nil, err
	}
	return out.Bytes(), nil
}
