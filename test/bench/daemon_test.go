package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/devenv"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/testproc"
)

// The daemon side of the benchmark runs the real `credbroker` binary as an
// operator does: `credbroker serve` with a configuration file, info-level
// logs written to a file, metrics scraped from /metrics, the audit log in
// its data directory; clients reach it over loopback TCP from other
// processes through a few connections.

// The identities of P7 and of the growth figure, beside controllerID (the
// load of P1, P3, P5).
var (
	floodID   = spiffeid.RequireFromPath(td, "/ns/bench/sa/flood")
	steadyID  = spiffeid.RequireFromPath(td, "/ns/bench/sa/steady")
	refuserID = spiffeid.RequireFromPath(td, "/ns/bench/sa/refuser")
)

// daemonHarness describes the broker binary to testproc.
var daemonHarness = testproc.Harness{
	Package:      "bench",
	Server:       "credbroker",
	Command:      "credbroker",
	PortTaken:    "address already in use",
	ReadyTimeout: time.Minute,
}

// buildDaemon builds the credbroker binary from this module into a
// temporary directory and returns its path.
func buildDaemon(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/credbroker/credbroker/cmd/credbroker")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("bench: go build credbroker: %v\n%s", err, out)
	}
	return filepath.Join(dir, "credbroker")
}

// world is the trust domain the daemons run in: the dev CA every daemon's
// data directory shares, and SVIDs for the clients.
type world struct {
	ca    *ca.CA
	caDir string // where ca is saved
	// svidDirs hold the identities' X.509-SVIDs for client processes.
	svidDirs map[spiffeid.ID]string
	svids    map[spiffeid.ID]*x509svid.SVID
}

// newWorld creates the CA in the first data directory and the clients'
// SVIDs under dir.
func newWorld(tb testing.TB, dir string) *world {
	tb.Helper()
	env, err := devenv.Prepare(filepath.Join(dir, "ca-home"), td)
	if err != nil {
		tb.Fatal(err)
	}
	w := &world{ca: env.CA, caDir: filepath.Join(dir, "ca-home", "dev", "ca"), svidDirs: map[spiffeid.ID]string{}, svids: map[spiffeid.ID]*x509svid.SVID{}}
	for _, id := range []spiffeid.ID{controllerID, floodID, steadyID, refuserID} {
		svid, err := w.ca.MintX509SVID(id, devenv.SVIDTTL)
		if err != nil {
			tb.Fatal(err)
		}
		d := filepath.Join(dir, "svid", strings.ReplaceAll(id.Path(), "/", "_"))
		if err := svidfile.Write(d, svid, w.ca.X509Bundle()); err != nil {
			tb.Fatal(err)
		}
		w.svidDirs[id], w.svids[id] = d, svid
	}
	return w
}

// dataDir makes a data directory for a daemon that runs on the world's dev
// CA: `serve --dev` loads the CA from DATA_DIR/dev/ca.
func (w *world) dataDir(tb testing.TB, parent, name string) string {
	tb.Helper()
	d := filepath.Join(parent, name)
	if err := w.ca.Save(filepath.Join(d, "dev", "ca")); err != nil {
		tb.Fatal(err)
	}
	return d
}

// daemonConfig is the configuration every daemon of the benchmark runs on:
// the in-process fixture's profile and policy, the local JWT issuer, and
// limits, the YAML of the top-level `limits` key.
func daemonConfig(limits string) string {
	return fmt.Sprintf(`trust_domain: %s
log_level: info
jwt_svid_audiences: [credbroker]
admin:
  spiffe_ids: [spiffe://%[1]s/credbroker/admin]
issuers:
  local:
    type: jwt
profiles:
  capa-token:
    issuer: local
    default_ttl: 5m
    max_ttl: 15m
    audiences: [capa-token, sts.amazonaws.com]
    cluster: required
policy:
  - id: spiffe://%[1]s/ns/*/sa/capa-controller-manager
    profiles: ["*"]
    clusters: ["capi-*/*"]
  - id: spiffe://%[1]s/ns/bench/sa/*
    profiles: [capa-token]
    clusters: ["capi-*/*"]
%s`, td, limits)
}

// daemon is one running credbroker process.
type daemon struct {
	proc     *testproc.Process
	cmd      *exec.Cmd // the started attempt: its pid is the daemon's (sh execs it)
	dataDir  string
	grpcAddr string
	httpAddr string
	// logFile receives the daemon's logs (stderr), as a service manager
	// would keep them.
	logFile string
}

// startDaemon runs `credbroker serve --dev --config` on dataDir until the
// end of the benchmark. Its stderr (the logs) goes to a file: at thousands
// of requests a second they are too many to hold in memory.
func startDaemon(tb testing.TB, bin, dataDir, config string) *daemon {
	tb.Helper()
	cfgPath := filepath.Join(dataDir, "bench.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	d := &daemon{dataDir: dataDir, logFile: filepath.Join(dataDir, "credbroker.log")}
	env := testproc.Environ([]string{"CREDBROKER_", "GODEBUG="})
	// Registered first, so it runs after the process is stopped.
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("credbroker log (%s), its end:\n%s", d.logFile, tail(d.logFile, 4096))
		}
	})
	d.proc = daemonHarness.Start(tb, bin, func() (testproc.Attempt, error) {
		addrs, err := testproc.FreePorts(2)
		if err != nil {
			return testproc.Attempt{}, err
		}
		d.grpcAddr, d.httpAddr = addrs[0], addrs[1]
		cmd := exec.Command("/bin/sh", "-c", `exec "$@" 2>>"$0"`, d.logFile,
			bin, "serve", "--dev", "--config", cfgPath, "--data-dir", dataDir,
			"--listen", d.grpcAddr, "--http-listen", d.httpAddr)
		cmd.Env = env
		d.cmd = cmd
		return testproc.Attempt{Cmd: cmd, Ready: func(ctx context.Context) error {
			_, err := httpGet(ctx, "http://"+d.httpAddr+"/healthz")
			return err
		}}, nil
	})
	return d
}

// tail returns the last n bytes of a file.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// issuerURL is the daemon's JWT issuer URL, which its tokens carry.
func (d *daemon) issuerURL() string { return "http://" + d.httpAddr }

// admin connects to the daemon's admin socket, as credbrokerctl does.
func (d *daemon) admin(tb testing.TB) credbrokerv1.AdminServiceClient {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(d.dataDir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return credbrokerv1.NewAdminServiceClient(conn)
}

// auditRecords returns how many records the daemon's audit chain holds, by
// verifying it through the admin API.
func (d *daemon) auditRecords(ctx context.Context, adm credbrokerv1.AdminServiceClient) (uint64, error) {
	stream, err := adm.VerifyAudit(ctx, &credbrokerv1.VerifyAuditRequest{})
	if err != nil {
		return 0, err
	}
	// Progress messages come first; the last message is the result.
	resp, err := stream.Recv()
	for err == nil && resp.GetResult() == nil {
		resp, err = stream.Recv()
	}
	if err != nil {
		return 0, err
	}
	if r := resp.GetResult(); !r.GetOk() {
		return 0, fmt.Errorf("bench: audit chain does not verify: %s", r.GetFirstBreak().GetProblem())
	}
	return resp.GetResult().GetRecords(), nil
}

// newRecords is what an export of the records after some seq found.
type newRecords struct {
	// byCaller counts the records by caller; decisions counts one
	// caller's by decision.
	byCaller  map[string]int64
	decisions map[string]int64
	// bytes is the size of that caller's records in their stored
	// (canonical JSON) form, which index entries and bbolt's pages come on
	// top of.
	bytes int64
}

// recordsAfter reads the records after seq through the admin API's export,
// page by page; caller is the identity whose records it details.
func recordsAfter(ctx context.Context, adm credbrokerv1.AdminServiceClient, seq uint64, caller string) (newRecords, error) {
	const pageSize = 10000 // the broker's maximum
	req := &credbrokerv1.ExportAuditRequest{Start: &credbrokerv1.ExportAuditRequest_AfterSeq{AfterSeq: seq}, PageSize: pageSize}
	nr := newRecords{byCaller: map[string]int64{}, decisions: map[string]int64{}}
	for {
		stream, err := adm.ExportAudit(ctx, req)
		if err != nil {
			return newRecords{}, err
		}
		n := 0
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return newRecords{}, err
			}
			n++
			req.PageToken = resp.GetNextPageToken()
			r := resp.GetRecord()
			nr.byCaller[r.GetCaller()]++
			if r.GetCaller() == caller {
				nr.decisions[strings.ToLower(strings.TrimPrefix(r.GetDecision().String(), "DECISION_"))]++
				nr.bytes += int64(len(resp.GetCanonicalJson()))
			}
		}
		if n < pageSize {
			return nr, nil // a short page: the chain's head
		}
	}
}

// dbSize is the size of the daemon's database file in bytes.
func (d *daemon) dbSize() (int64, error) {
	fi, err := os.Stat(filepath.Join(d.dataDir, "credbroker.db"))
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// startEcho runs the echo server in its own process, on the world's server
// SVID, with tokens as large as the daemon's (issuerURL, subject), and
// returns its address and process.
func startEcho(tb testing.TB, w *world, dir, issuerURL string) (string, *exec.Cmd) {
	tb.Helper()
	svid, err := w.ca.MintX509SVID(serverID, devenv.SVIDTTL)
	if err != nil {
		tb.Fatal(err)
	}
	svidDir := filepath.Join(dir, "echo")
	if err := svidfile.Write(svidDir, svid, w.ca.X509Bundle()); err != nil {
		tb.Fatal(err)
	}
	return startRole(tb, roleEcho, func(addr string) any {
		return echoSpec{Listen: addr, SVIDDir: svidDir, KeyFile: filepath.Join(dir, "echo-jwt.pem"),
			IssuerURL: issuerURL, Subject: controllerID.String()}
	})
}

// startBrokerProcess runs a broker assembled as in-process (assembleBroker)
// in its own process, with the audit on or off, and returns its address and
// process.
func startBrokerProcess(tb testing.TB, w *world, dir, issuerURL string, auditOn bool) (string, *exec.Cmd) {
	tb.Helper()
	name := "broker-audit-off"
	if auditOn {
		name = "broker-audit-on"
	}
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		tb.Fatal(err)
	}
	return startRole(tb, roleBroker, func(addr string) any {
		return brokerSpec{Listen: addr, CADir: w.caDir, KeyFile: filepath.Join(d, "jwt.pem"), IssuerURL: issuerURL,
			DataDir: d, Audit: auditOn, LogFile: filepath.Join(d, "broker.log")}
	})
}

// startRole runs this test binary as role, a server on a loopback address,
// until the end of the benchmark; spec makes its settings for the address.
func startRole(tb testing.TB, role string, spec func(addr string) any) (string, *exec.Cmd) {
	tb.Helper()
	bin, err := rolePath()
	if err != nil {
		tb.Fatal(err)
	}
	var (
		addr    string
		started *exec.Cmd
	)
	h := testproc.Harness{Package: "bench", Server: role, Command: "bench.test", PortTaken: "address already in use"}
	h.Start(tb, bin, func() (testproc.Attempt, error) {
		addrs, err := testproc.FreePorts(1)
		if err != nil {
			return testproc.Attempt{}, err
		}
		addr = addrs[0]
		js, err := json.Marshal(spec(addr))
		if err != nil {
			return testproc.Attempt{}, err
		}
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = testproc.Environ([]string{"CREDBROKER_", "GODEBUG="}, roleEnv+"="+role, roleSpecEnv+"="+string(js))
		started = cmd
		return testproc.Attempt{Cmd: cmd, Ready: func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}}, nil
	})
	return addr, started
}

// processCPU returns the user and system CPU time a running process has
// used, from /proc (Linux; clock ticks of 1/100 s, as on every Linux
// architecture Go supports). nil or an unreadable process yields 0.
func processCPU(cmd *exec.Cmd) time.Duration {
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0
	}
	f := strings.Fields(s[i+2:]) // from field 3, state
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// flood runs a flooding identity in its own process and returns what it
// saw once it stopped by itself.
func flood(ctx context.Context, s floodSpec) (floodResult, error) {
	bin, err := rolePath()
	if err != nil {
		return floodResult{}, err
	}
	spec, err := json.Marshal(s)
	if err != nil {
		return floodResult{}, err
	}
	cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
	cmd.Env = testproc.Environ([]string{"CREDBROKER_", "GODEBUG="}, roleEnv+"="+roleFlood, roleSpecEnv+"="+string(spec))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return floodResult{}, fmt.Errorf("bench: flood process: %v: %s", err, stderr.String())
	}
	var res floodResult
	if err := json.Unmarshal(out, &res); err != nil {
		return floodResult{}, fmt.Errorf("bench: flood process output %q: %v", out, err)
	}
	return res, nil
}

// mtlsTarget connects connsPerVariant times to addr as svid.
func (w *world) mtlsTarget(tb testing.TB, addr string, svid *x509svid.SVID) *target {
	tb.Helper()
	return dial(tb, addr, grpccredentials.MTLSClientCredentials(svid, w.ca.X509Bundle(), tlsconfig.AuthorizeID(serverID)))
}

// tlsTarget connects connsPerVariant times to addr without a client
// certificate, for callers that bring a bearer token.
func (w *world) tlsTarget(tb testing.TB, addr string) *target {
	tb.Helper()
	return dial(tb, addr, grpccredentials.TLSClientCredentials(w.ca.X509Bundle(), tlsconfig.AuthorizeID(serverID)))
}

// dial opens connsPerVariant connections to addr, closed at cleanup.
func dial(tb testing.TB, addr string, creds credentials.TransportCredentials) *target {
	tb.Helper()
	t := &target{}
	for range connsPerVariant {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { conn.Close() })
		t.conns = append(t.conns, conn)
	}
	return t
}

// scraper reads /metrics of every daemon at an interval, as Prometheus
// does, so that the metrics' cost on the daemon counts.
type scraper struct {
	once    sync.Once
	mu      sync.Mutex
	urls    []string
	stop    chan struct{}
	done    chan struct{}
	scrapes int
	errs    int
}

func newScraper(interval time.Duration) *scraper {
	s := &scraper{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			s.mu.Lock()
			urls := append([]string(nil), s.urls...)
			s.mu.Unlock()
			for _, u := range urls {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := httpGet(ctx, u)
				cancel()
				s.mu.Lock()
				s.scrapes++
				if err != nil {
					s.errs++
				}
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *scraper) add(d *daemon) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.urls = append(s.urls, "http://"+d.httpAddr+"/metrics")
}

// close stops scraping and says how many scrapes failed.
func (s *scraper) close() (scrapes, errs int) {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return s.scrapes, s.errs
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// No keep-alive: an idle connection would outlive the benchmark.
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
