package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/internal/ca"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/vaulttest"
)

// tableParams is the shape of one BenchmarkTable run; see doc.go for the
// environment variables that set it.
type tableParams struct {
	load    load
	clients []int // closed-loop client counts of the throughput figures
	// flood is how long each phase of P7 and of the growth figure lasts.
	flood time.Duration
	// floodClients is how many callers the flooding identity runs.
	floodClients int
	// steadyRate is identity B's request rate in P7, below its limit.
	steadyRate float64
	// small and big are the record counts of P6's two databases; queries
	// is how many listings P6 times on each.
	small, big, queries int
	scrape              time.Duration
	jsonPath            string
	// cacheDir keeps P6's databases between runs (BENCH_DIR/cache; none
	// without BENCH_DIR).
	cacheDir string
}

func tableParamsFromEnv() (tableParams, error) {
	l, err := loadFromEnv()
	if err != nil {
		return tableParams{}, err
	}
	p := tableParams{
		load: l, clients: []int{256, 32}, flood: 10 * time.Second, floodClients: 32, steadyRate: 50,
		small: 1000, big: 1_000_000, queries: 1000, scrape: 5 * time.Second,
		jsonPath: filepath.Join(os.TempDir(), "credbroker-bench-results.json"),
	}
	if s := os.Getenv("BENCH_CLIENTS"); s != "" {
		p.clients = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return p, fmt.Errorf("bench: BENCH_CLIENTS=%q is not a list of positive integers", s)
			}
			p.clients = append(p.clients, n)
		}
	}
	for _, v := range []struct {
		name string
		to   *int
	}{{"BENCH_P6_SMALL", &p.small}, {"BENCH_P6_RECORDS", &p.big}, {"BENCH_P6_QUERIES", &p.queries}, {"BENCH_FLOOD_CLIENTS", &p.floodClients}} {
		if *v.to, err = envInt(v.name, *v.to); err != nil {
			return p, err
		}
	}
	if p.small < readerCount*readerRecords || p.big < p.small {
		return p, fmt.Errorf("bench: P6 needs %d <= BENCH_P6_SMALL (%d) <= BENCH_P6_RECORDS (%d)", readerCount*readerRecords, p.small, p.big)
	}
	if s := os.Getenv("BENCH_FLOOD"); s != "" {
		if p.flood, err = time.ParseDuration(s); err != nil || p.flood <= 0 {
			return p, fmt.Errorf("bench: BENCH_FLOOD=%q is not a positive duration", s)
		}
	}
	if s := os.Getenv("BENCH_STEADY_RATE"); s != "" {
		limit := config.DefaultIssueRequests.Rate
		if p.steadyRate, err = strconv.ParseFloat(s, 64); err != nil || p.steadyRate <= 0 || p.steadyRate >= limit {
			return p, fmt.Errorf("bench: BENCH_STEADY_RATE=%q must be above 0 and below the issue limit, %v/s", s, limit)
		}
	}
	if s := os.Getenv("BENCH_DIR"); s != "" {
		p.cacheDir = filepath.Join(s, "cache")
	}
	if s := os.Getenv("BENCH_JSON"); s != "" {
		p.jsonPath = s
	}
	return p, nil
}

// figure is one line of the table: a ratio and its goal.
type figure struct {
	Name  string  `json:"name"`
	Scope string  `json:"scope"` // "daemon", "own process" or "in-process"
	Value float64 `json:"value"`
	// Goal is the bound the value should meet; AtMost says which side.
	Goal   float64 `json:"goal"`
	AtMost bool    `json:"at_most,omitempty"`
	Met    bool    `json:"met"`
	// Measured says what the ratio is made of.
	Measured string `json:"measured"`
	// Missing, when set, says why the figure was not measured.
	Missing string `json:"missing,omitempty"`
}

func newFigure(name, scope string, num, den, goal float64, atMost bool, measured string) figure {
	f := figure{Name: name, Scope: scope, Goal: goal, AtMost: atMost, Measured: measured}
	if den <= 0 {
		f.Missing = "the denominator measured nothing"
		return f
	}
	f.Value = num / den
	f.Met = f.Value >= goal
	if atMost {
		f.Met = f.Value <= goal
	}
	return f
}

// goalText renders the goal, "≥ 0.70".
func (f figure) goalText() string {
	if f.AtMost {
		return fmt.Sprintf("≤ %.2f", f.Goal)
	}
	return fmt.Sprintf("≥ %.2f", f.Goal)
}

// verdictText says whether the goal was met, and by how much it was missed.
func (f figure) verdictText() string {
	switch {
	case f.Missing != "":
		return "not measured: " + f.Missing
	case f.Met:
		return "met"
	case f.AtMost:
		return fmt.Sprintf("MISSED: %.1fx the bound", f.Value/f.Goal)
	default:
		return fmt.Sprintf("MISSED: %.0f%% of the goal", 100*f.Value/f.Goal)
	}
}

// variantRow is one measured variant of a section: a server and its load.
type variantRow struct {
	Section  string  `json:"section"`
	Name     string  `json:"name"`
	Clients  int     `json:"clients"`
	QPS      float64 `json:"qps"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	Requests int     `json:"requests"`
	// ServerCPUus is the server process's CPU time per request, in
	// microseconds, where the server runs in a process of its own.
	ServerCPUus float64 `json:"server_cpu_us_per_request,omitempty"`
	// Codes counts answers that were refusals, by gRPC code, where the
	// variant expects them, over all its rounds (warm-up included).
	Codes map[string]int64 `json:"codes,omitempty"`
}

// report is what a run writes to JSON.
type report struct {
	Time     time.Time      `json:"time"`
	Commit   string         `json:"commit,omitempty"`
	Machine  machine        `json:"machine"`
	Params   map[string]any `json:"params"`
	Figures  []figure       `json:"figures"`
	Variants []variantRow   `json:"variants"`
	// Growth is the audit log's growth during the refusal flood.
	Growth growth `json:"audit_growth"`
	// Fleet is the fleet simulation (runFleet).
	Fleet *fleetReport `json:"fleet,omitempty"`
	// Elapsed is the run's wall time.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// machine is where the run happened and how busy it was.
type machine struct {
	CPUs       int    `json:"nproc"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model"`
	Memory     string `json:"memory"`
	LoadStart  string `json:"loadavg_start"`
	LoadEnd    string `json:"loadavg_end"`
	GoVersion  string `json:"go_version"`
}

func readMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(), LoadStart: loadavg()}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseFloat(strings.Fields(procField("/proc/meminfo", "MemTotal") + " 0")[0], 64); err == nil && kb > 0 {
		m.Memory = fmt.Sprintf("%.1f GiB", kb/(1<<20))
	}
	return m
}

// procField returns the value of the first "name: value" line of a /proc file.
func procField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// loadavg is the 1, 5 and 15 minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// growth is what one identity's refusal flood added to the audit log.
type growth struct {
	Duration time.Duration `json:"duration_ns"`
	// Window is the time between the two counts, which the bound is for.
	Window   time.Duration    `json:"window_ns"`
	Refusals map[string]int64 `json:"refusals"` // the flood's answers by code
	// Records are the flooding identity's new records; AllRecords every
	// new record in the window.
	Records    uint64 `json:"records"`
	AllRecords uint64 `json:"all_records"`
	// Decisions counts the flooding identity's new records by decision.
	Decisions map[string]int64 `json:"decisions"`
	// RecordBytes is the size of its new records as stored (canonical
	// JSON); Bytes is how much the database file grew (bbolt grows it in
	// steps, so a few records may add nothing).
	RecordBytes int64 `json:"record_bytes"`
	Bytes       int64 `json:"db_bytes"`
	// Bound is the most records the configured refusal-record limits let
	// one identity write in Window: burst + rate × Window.
	Bound uint64 `json:"bound_records"`
}

// stage is one timed variant: fn runs it for d with n clients. server,
// when known, is the server's process, whose CPU time per request is
// measured too.
type stage struct {
	name   string
	fn     func(n int, d time.Duration) (result, error)
	server *exec.Cmd
}

// interleave runs every stage for a warm-up round, then l.rounds rounds
// interleaved (a, b, c, a, b, c, ...) so that machine noise hits all alike,
// and returns each stage's medians.
func interleave(l load, n int, stages []stage) ([]summary, error) {
	results := make([][]result, len(stages))
	cpu := make([][]float64, len(stages))
	for i := -1; i < l.rounds; i++ {
		for k, s := range stages {
			d := l.round
			if i < 0 {
				d = l.warmup
			}
			runtime.GC()
			cpu0 := processCPU(s.server)
			r, err := s.fn(n, d)
			if err != nil {
				return nil, fmt.Errorf("%s, %d clients: %w", s.name, n, err)
			}
			if i >= 0 {
				results[k] = append(results[k], r)
				if r.requests > 0 {
					cpu[k] = append(cpu[k], float64(processCPU(s.server)-cpu0)/float64(time.Microsecond)/float64(r.requests))
				}
			}
		}
	}
	sums := make([]summary, len(stages))
	for k := range stages {
		sums[k] = summarize(results[k])
		sums[k].serverCPUus = median(cpu[k])
	}
	return sums, nil
}

// codeTally counts answers by gRPC code.
type codeTally struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *codeTally) add(code codes.Code) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int64{}
	}
	c.m[code.String()]++
}

func (c *codeTally) take() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.m
	c.m = nil
	return m
}

// BenchmarkTable is `make bench`: every figure of the benchmark table,
// measured side by side in one run, printed as a table and written to JSON
// (BENCH_JSON). It runs its stages once whatever b.N is; run it with
// -benchtime 1x. It fails only when the harness breaks (a server does not
// start, a request that must succeed fails), never on a missed goal.
func BenchmarkTable(b *testing.B) {
	p, err := tableParamsFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	fp, err := fleetParamsFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	rep := &report{Time: start.UTC(), Machine: readMachine(), Commit: gitCommit()}
	rep.Params = map[string]any{
		"clients": p.clients, "round": p.load.round.String(), "rounds": p.load.rounds, "warmup": p.load.warmup.String(),
		"conns_per_target": connsPerVariant, "flood": p.flood.String(), "flood_clients": p.floodClients,
		"steady_rate": p.steadyRate, "p6_small": p.small, "p6_big": p.big, "p6_queries": p.queries,
		"scrape_interval": p.scrape.String(),
		"fleet_clusters":  fp.clusters, "fleet_attempts": fp.attempts, "fleet_clients": fp.clients,
	}
	dir := dataDir(b)
	bin := buildDaemon(b)
	w := newWorld(b, dir)
	scr := newScraper(p.scrape)
	defer scr.close()

	daemonThroughput(b, p, w, bin, dir, scr, rep)
	inProcessThroughput(b, p, rep)
	listing(b, p, w, bin, dir, scr, rep)
	isolation(b, p, w, bin, dir, scr, rep)
	fleet := runFleet(b, fp)
	rep.Fleet = &fleet

	if scrapes, errs := scr.close(); errs > 0 {
		b.Fatalf("bench: %d of %d metrics scrapes failed", errs, scrapes)
	}
	rep.Machine.LoadEnd = loadavg()
	rep.Elapsed = time.Since(start)
	b.ReportMetric(0, "ns/op")
	printReport(os.Stdout, rep)
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(p.jsonPath, append(js, '\n'), 0o644); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("results written to %s\n\n", p.jsonPath)
}

// gitCommit names the commit measured, when the source is a git checkout.
func gitCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// daemonThroughput measures P1, P3 and P5 on the daemon: the echo server
// in its own process, the daemon issuing (audit on, the only way it runs),
// a Vault dev server's token create and the daemon refusing an invalid
// JWT-SVID, interleaved, at each client count.
func daemonThroughput(b *testing.B, p tableParams, w *world, bin, dir string, scr *scraper, rep *report) {
	b.Helper()
	// One identity makes all the load, far above the default per-identity
	// request limit; the limit is still taken on every call.
	d := startDaemon(b, bin, w.dataDir(b, dir, "throughput"), daemonConfig(`limits:
  requests:
    issue: {rate: 1000000000, burst: 1000000000}
`))
	scr.add(d)
	echoAddr, echoCmd := startEcho(b, w, dir, d.issuerURL())
	onAddr, onCmd := startBrokerProcess(b, w, dir, d.issuerURL(), true)
	offAddr, offCmd := startBrokerProcess(b, w, dir, d.issuerURL(), false)
	issuing := w.mtlsTarget(b, d.grpcAddr, w.svids[controllerID])
	echoTarget := w.mtlsTarget(b, echoAddr, w.svids[controllerID])
	onTarget := w.mtlsTarget(b, onAddr, w.svids[controllerID])
	offTarget := w.mtlsTarget(b, offAddr, w.svids[controllerID])

	// The invalid JWT-SVID: right trust domain, subject and audience, signed
	// by a key the bundle does not hold.
	rogue, err := ca.New(td)
	if err != nil {
		b.Fatal(err)
	}
	bad, err := rogue.MintJWTSVID(controllerID, []string{"credbroker"}, 10*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	refusing := w.tlsTarget(b, d.grpcAddr)
	var refusals codeTally
	refuse := func(n int, dur time.Duration) (result, error) {
		return roundFunc(n, dur, func(int) func(context.Context) error {
			client := refusing.client()
			return func(ctx context.Context) error {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+bad)
				_, err := client.IssueCredential(ctx, request())
				switch c := status.Code(err); c {
				case codes.Unauthenticated, codes.ResourceExhausted:
					refusals.add(c)
					return nil
				default:
					return fmt.Errorf("an invalid JWT-SVID got %v, want UNAUTHENTICATED or RESOURCE_EXHAUSTED", err)
				}
			}
		})
	}

	stages := []stage{
		{"echo process", func(n int, dur time.Duration) (result, error) { return round(echoTarget, n, dur) }, echoCmd},
		{"daemon issuing", func(n int, dur time.Duration) (result, error) { return round(issuing, n, dur) }, d.cmd},
		{"daemon refusing", refuse, d.cmd},
		{"broker process, audit on", func(n int, dur time.Duration) (result, error) { return round(onTarget, n, dur) }, onCmd},
		{"broker process, audit off", func(n int, dur time.Duration) (result, error) { return round(offTarget, n, dur) }, offCmd},
	}
	vaultMissing := ""
	if os.Getenv("CREDBROKER_VAULT") == "" {
		vaultMissing = "CREDBROKER_VAULT is unset (make bench builds Vault and sets it)"
	} else {
		stages = append(stages, stage{name: "vault token create", fn: vaultTokenCreate(b)})
	}
	for _, n := range p.clients {
		refusals.take()
		sums, err := interleave(p.load, n, stages)
		if err != nil {
			b.Fatal(err)
		}
		for k, s := range stages {
			section := "daemon"
			if s.server == onCmd || s.server == offCmd {
				section = "own process"
			}
			row := variantRow{Section: section, Name: s.name, Clients: n, QPS: sums[k].qps, P50ms: sums[k].p50ms, P99ms: sums[k].p99ms,
				Requests: sums[k].requests, ServerCPUus: sums[k].serverCPUus}
			if s.name == "daemon refusing" {
				row.Codes = refusals.take()
			}
			rep.Variants = append(rep.Variants, row)
		}
		echo, issue, refused, on, off := sums[0], sums[1], sums[2], sums[3], sums[4]
		goalP2 := targetP2
		if n < 256 {
			goalP2 = targetP2Low
		}
		rep.Figures = append(rep.Figures,
			newFigure(fmt.Sprintf("P1 issuance ÷ echo, %d clients", n), "daemon", issue.qps, echo.qps, targetP1, false,
				fmt.Sprintf("%.0f ÷ %.0f req/s", issue.qps, echo.qps)),
			newFigure(fmt.Sprintf("P5 refusal ÷ issuance, %d clients", n), "daemon", refused.qps, issue.qps, targetP5, false,
				fmt.Sprintf("%.0f ÷ %.0f req/s", refused.qps, issue.qps)),
			newFigure(fmt.Sprintf("P2 audit on ÷ audit off, %d clients", n), "own process", on.qps, off.qps, goalP2, false,
				fmt.Sprintf("%.0f ÷ %.0f req/s", on.qps, off.qps)))
		p3 := figure{Name: fmt.Sprintf("P3 local issuer ÷ Vault token create, %d clients", n), Scope: "daemon", Goal: targetP3, Missing: vaultMissing}
		if vaultMissing == "" {
			v := sums[5]
			p3 = newFigure(p3.Name, p3.Scope, issue.qps, v.qps, targetP3, false, fmt.Sprintf("%.0f ÷ %.0f req/s", issue.qps, v.qps))
		}
		rep.Figures = append(rep.Figures, p3)
	}
}

// vaultTokenCreate starts a Vault dev server with a token role and returns
// the stage that calls auth/token/create/ROLE with a token allowed to, as
// the broker's Vault issuer does. Vault speaks HTTP/1.1: each client gets
// a connection of its own, kept alive.
func vaultTokenCreate(b *testing.B) func(n int, d time.Duration) (result, error) {
	b.Helper()
	v := vaulttest.Start(b)
	v.WritePolicy(b, "credbroker", `path "auth/token/create/workload" { capabilities = ["create", "update"] }`)
	v.WritePolicy(b, "workload", `path "secret/data/workload/*" { capabilities = ["read"] }`)
	root := v.Client(b)
	if _, err := root.Logical().Write("auth/token/roles/workload", map[string]any{"allowed_policies": []string{"workload"}, "orphan": true}); err != nil {
		b.Fatal(err)
	}
	tok, err := root.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"credbroker"}, TTL: "1h"})
	if err != nil {
		b.Fatal(err)
	}
	token := tok.Auth.ClientToken
	return func(n int, d time.Duration) (result, error) {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = n, n
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: time.Minute}
		var setup error
		var once sync.Once
		r, err := roundFunc(n, d, func(int) func(context.Context) error {
			c, err := vaultapi.NewClient(&vaultapi.Config{Address: v.Addr, HttpClient: hc, MaxRetries: 0})
			if err != nil {
				once.Do(func() { setup = err })
				return func(context.Context) error { return err }
			}
			c.SetToken(token)
			return func(ctx context.Context) error {
				_, err := c.Auth().Token().CreateWithRoleWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"workload"}, TTL: "600s"}, "workload")
				return err
			}
		})
		if setup != nil {
			return r, setup
		}
		return r, err
	}
}

// inProcessThroughput measures P1 and P2 with the three servers of the
// in-process fixture (clients in the same process): the only place the
// audit can be switched off, so the only measure of P2.
func inProcessThroughput(b *testing.B, p tableParams, rep *report) {
	b.Helper()
	f := newFixture(b)
	labels := map[variant]string{echo: "echo (in-process)", auditOn: "broker audit on (in-process)", auditOff: "broker audit off (in-process)"}
	var stages []stage
	for _, v := range variants {
		stages = append(stages, stage{name: labels[v], fn: func(n int, d time.Duration) (result, error) { return round(f.targets[v], n, d) }})
	}
	issued := 0
	for _, n := range p.clients {
		sums, err := interleave(p.load, n, stages)
		if err != nil {
			b.Fatal(err)
		}
		for k, s := range stages {
			rep.Variants = append(rep.Variants, variantRow{Section: "in-process", Name: s.name, Clients: n,
				QPS: sums[k].qps, P50ms: sums[k].p50ms, P99ms: sums[k].p99ms, Requests: sums[k].requests})
		}
		echo, on, off := sums[0], sums[1], sums[2]
		issued += on.requests
		goalP2 := targetP2
		if n < 256 {
			goalP2 = targetP2Low
		}
		rep.Figures = append(rep.Figures,
			newFigure(fmt.Sprintf("P1 issuance ÷ echo, %d clients", n), "in-process", on.qps, echo.qps, targetP1, false,
				fmt.Sprintf("%.0f ÷ %.0f req/s", on.qps, echo.qps)),
			newFigure(fmt.Sprintf("P2 audit on ÷ audit off, %d clients", n), "in-process", on.qps, off.qps, goalP2, false,
				fmt.Sprintf("%.0f ÷ %.0f req/s", on.qps, off.qps)))
	}
	// Audit really was on: every measured issuance has its record.
	if seq, _ := f.audit.Head(); seq < uint64(issued) {
		b.Fatalf("audit-on log holds %d records for %d measured issuances", seq, issued)
	}
}

// listing measures P6: the p99 of `issuances list` by identity through the
// admin API (as credbrokerctl calls it), on a daemon whose database holds
// p.big records and on one that holds p.small, queried alternately.
func listing(b *testing.B, p tableParams, w *world, bin, dir string, scr *scraper, rep *report) {
	b.Helper()
	// The queries come faster than an operator's; the admin limit is raised
	// so that they are timed, not refused.
	cfg := daemonConfig(`limits:
  requests:
    admin: {rate: 1000000, burst: 1000000}
`)
	type side struct {
		n   int
		adm credbrokerv1.AdminServiceClient
		lat []time.Duration
	}
	sides := []*side{{n: p.small}, {n: p.big}}
	for k, s := range sides {
		dd := w.dataDir(b, dir, fmt.Sprintf("records-%d-%d", k, s.n))
		t0 := time.Now()
		hit, err := cachedRecords(p.cacheDir, filepath.Join(dd, "credbroker.db"), s.n)
		if err != nil {
			b.Fatal(err)
		}
		how := "written"
		if hit {
			how = "copied from " + p.cacheDir
		}
		fmt.Fprintf(os.Stderr, "bench: %d audit records %s in %v\n", s.n, how, time.Since(t0).Round(time.Millisecond))
		d := startDaemon(b, bin, dd, cfg)
		scr.add(d)
		s.adm = d.admin(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	warm := max(p.queries/10, readerCount)
	for i := -warm; i < p.queries; i++ {
		for _, s := range sides {
			caller := readerID((i + warm) % readerCount)
			t0 := time.Now()
			resp, err := s.adm.ListIssuances(ctx, &credbrokerv1.ListIssuancesRequest{Caller: caller})
			el := time.Since(t0)
			if err != nil {
				b.Fatalf("bench: issuances list on %d records: %v", s.n, err)
			}
			if got := len(resp.GetIssuances()); got != readerRecords {
				b.Fatalf("bench: issuances list of %s on %d records returned %d, want %d", caller, s.n, got, readerRecords)
			}
			if i >= 0 {
				s.lat = append(s.lat, el)
			}
		}
	}
	var p99 []float64
	for _, s := range sides {
		r := result{latency: s.lat, requests: len(s.lat)}
		slices.Sort(r.latency)
		rep.Variants = append(rep.Variants, variantRow{Section: "daemon", Name: fmt.Sprintf("issuances list, %d records", s.n),
			Clients: 1, P50ms: ms(r.percentile(50)), P99ms: ms(r.percentile(99)), Requests: r.requests})
		p99 = append(p99, ms(r.percentile(99)))
	}
	rep.Figures = append(rep.Figures, newFigure(fmt.Sprintf("P6 issuances list p99, %s ÷ %s records", count(p.big), count(p.small)), "daemon",
		p99[1], p99[0], targetP6, true, fmt.Sprintf("%.2f ÷ %.2f ms, %d queries each, %d records returned", p99[1], p99[0], p.queries, readerRecords)))
}

// count renders a record count briefly: 1k, 1M.
func count(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

// isolation measures P7 and the audit's growth on a daemon with the
// default limits: identity B sends steadyRate requests a second (below its
// limit), alone and then while identity A, in its own process, floods
// valid requests far past its own limit; then a third identity floods
// refusals (an unknown profile) alone, and the records and bytes the audit
// log gained are counted.
func isolation(b *testing.B, p tableParams, w *world, bin, dir string, scr *scraper, rep *report) {
	b.Helper()
	d := startDaemon(b, bin, w.dataDir(b, dir, "isolation"), daemonConfig("limits: {}\n"))
	scr.add(d)
	adm := d.admin(b)
	steady := w.mtlsTarget(b, d.grpcAddr, w.svids[steadyID])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Connect and warm up, well inside B's burst.
	for range 2 * connsPerVariant {
		if _, err := steady.client().IssueCredential(ctx, request()); err != nil {
			b.Fatal(err)
		}
	}
	alone, err := paced(steady, p.steadyRate, p.flood)
	if err != nil {
		b.Fatal(err)
	}
	spec := floodSpec{Addr: d.grpcAddr, SVIDDir: w.svidDirs[floodID], Profile: "capa-token", Cluster: "capi-prod/workload-1",
		Clients: p.floodClients, Conns: connsPerVariant, Duration: p.flood, Max: 100_000_000}
	var (
		flooded   result
		floodRes  floodResult
		floodErr  error
		pacedDone = make(chan error, 1)
	)
	go func() {
		var err error
		flooded, err = paced(steady, p.steadyRate, p.flood)
		pacedDone <- err
	}()
	floodRes, floodErr = flood(ctx, spec)
	if err := <-pacedDone; err != nil {
		b.Fatal(err)
	}
	if floodErr != nil {
		b.Fatal(floodErr)
	}
	for _, r := range []struct {
		name string
		r    result
	}{{"identity B alone", alone}, {"identity B while A floods", flooded}} {
		rep.Variants = append(rep.Variants, variantRow{Section: "daemon", Name: r.name, Clients: 1, QPS: r.r.qps(),
			P50ms: ms(r.r.percentile(50)), P99ms: ms(r.r.percentile(99)), Requests: r.r.requests})
	}
	rep.Variants = append(rep.Variants, variantRow{Section: "daemon", Name: "identity A flooding past its limit", Clients: p.floodClients,
		QPS: float64(sum(floodRes.Codes)) / floodRes.Elapsed.Seconds(), Requests: int(sum(floodRes.Codes)), Codes: floodRes.Codes})
	rep.Figures = append(rep.Figures, newFigure("P7 p99 of B while A floods ÷ B alone", "daemon",
		ms(flooded.percentile(99)), ms(alone.percentile(99)), targetP7, true,
		fmt.Sprintf("%.2f ÷ %.2f ms at %.0f req/s; A: %s", ms(flooded.percentile(99)), ms(alone.percentile(99)), p.steadyRate, codesText(floodRes.Codes))))

	// Growth: a third identity, whose refusal-record bucket is full (the
	// worst case), floods requests the policy refuses. The bound holds over
	// the whole window between the two counts.
	t0 := time.Now()
	recs0, err := d.auditRecords(ctx, adm)
	if err != nil {
		b.Fatal(err)
	}
	size0, err := d.dbSize()
	if err != nil {
		b.Fatal(err)
	}
	spec.SVIDDir, spec.Profile = w.svidDirs[refuserID], "no-such-profile"
	res, err := flood(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	if res.Codes[codes.OK.String()] > 0 {
		b.Fatalf("bench: requests for an unknown profile were granted: %v", res.Codes)
	}
	recs1, err := d.auditRecords(ctx, adm)
	if err != nil {
		b.Fatal(err)
	}
	window := time.Since(t0)
	size1, err := d.dbSize()
	if err != nil {
		b.Fatal(err)
	}
	nr, err := recordsAfter(ctx, adm, recs0, refuserID.String())
	if err != nil {
		b.Fatal(err)
	}
	if got := uint64(sum(nr.byCaller)); got < recs1-recs0 {
		b.Fatalf("bench: the export found %d new records, verification %d", got, recs1-recs0)
	}
	lim := config.DefaultIdentityRefusalRecords
	rep.Growth = growth{Duration: res.Elapsed, Window: window, Refusals: res.Codes,
		Records: uint64(nr.byCaller[refuserID.String()]), AllRecords: uint64(sum(nr.byCaller)),
		Decisions: nr.decisions, RecordBytes: nr.bytes, Bytes: size1 - size0, Bound: uint64(float64(lim.Burst) + lim.Rate*window.Seconds())}
	g := rep.Growth
	others := ""
	if g.AllRecords > g.Records {
		others = fmt.Sprintf("; %d records of other identities meanwhile (late summaries of P7's flood)", g.AllRecords-g.Records)
	}
	rep.Figures = append(rep.Figures, figure{
		Name: fmt.Sprintf("audit growth, one identity flooding refusals for %v", p.flood.Round(time.Second)), Scope: "daemon",
		Value: float64(g.Records), Goal: float64(g.Bound), AtMost: true, Met: g.Records <= g.Bound,
		Measured: fmt.Sprintf("%d records (%s), %d bytes of records, db file %+d bytes, for %d refusals (%s); bound %v + %v/s × %.1f s%s",
			g.Records, codesText(g.Decisions), g.RecordBytes, g.Bytes, sum(res.Codes), codesText(res.Codes), lim.Burst, lim.Rate, window.Seconds(), others),
	})
}

// paced sends rate requests a second from t for d, each on schedule in its
// own goroutine (open loop: a slow answer does not delay the next request,
// so slowness is not hidden), and returns their latencies. Any refusal is
// an error: B stays below its limit.
func paced(t *target, rate float64, d time.Duration) (result, error) {
	n := int(rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	lat := make([]time.Duration, n)
	var (
		wg      sync.WaitGroup
		failed  atomic.Pointer[error]
		ctx, cf = context.WithTimeout(context.Background(), d+time.Minute)
	)
	defer cf()
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		client := t.client()
		wg.Go(func() {
			t0 := time.Now()
			_, err := client.IssueCredential(ctx, request())
			lat[i] = time.Since(t0)
			if err != nil {
				err = fmt.Errorf("bench: a paced request below the limit failed: %w", err)
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	wg.Wait()
	r := result{elapsed: time.Since(start), latency: lat, requests: n}
	slices.Sort(r.latency)
	if e := failed.Load(); e != nil {
		return r, *e
	}
	return r, nil
}

func sum(m map[string]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// codesText renders answer counts, "OK 1500, ResourceExhausted 90211".
func codesText(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// printReport writes the run's tables.
func printReport(out *os.File, rep *report) {
	m := rep.Machine
	fmt.Fprintf(out, "\ncredbroker benchmark, %s, commit %s, %v\n", rep.Time.Format(time.RFC3339), rep.Commit, rep.Elapsed.Round(time.Second))
	fmt.Fprintf(out, "machine: %d CPUs (%s), %s, %s, GOMAXPROCS %d; load average %s at start, %s at end\n\n",
		m.CPUs, m.CPUModel, m.Memory, m.GoVersion, m.GOMAXPROCS, m.LoadStart, m.LoadEnd)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "section\tvariant\tclients\treq/s\tp50 ms\tp99 ms\trequests\tserver CPU µs/req\t")
	for _, v := range rep.Variants {
		qps, cpu := "-", "-"
		if v.QPS > 0 {
			qps = fmt.Sprintf("%.0f", v.QPS)
		}
		if v.ServerCPUus > 0 {
			cpu = fmt.Sprintf("%.0f", v.ServerCPUus)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%.2f\t%.2f\t%d\t%s\t%s\n", v.Section, v.Name, v.Clients, qps, v.P50ms, v.P99ms, v.Requests, cpu, codesText(v.Codes))
	}
	w.Flush()
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tscope\tvalue\tgoal\tverdict\tmeasured\t")
	for _, f := range rep.Figures {
		val, goal := fmt.Sprintf("%.2f", f.Value), f.goalText()
		if strings.HasPrefix(f.Name, "audit growth") {
			val, goal = fmt.Sprintf("%.0f records", f.Value), fmt.Sprintf("≤ %.0f records", f.Goal)
		}
		if f.Missing != "" {
			val = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Name, f.Scope, val, goal, f.verdictText(), f.Measured)
	}
	w.Flush()
	fmt.Fprintln(out)
	if rep.Fleet != nil {
		printFleet(out, *rep.Fleet)
	}
	printMarkdown(out, rep)
}

// printMarkdown writes the figures as the Markdown table README carries.
func printMarkdown(out *os.File, rep *report) {
	m := rep.Machine
	fmt.Fprintf(out, "Markdown (README):\n\nMeasured %s at commit %s on %d CPUs (%s), %s; load average %s at the start, %s at the end.\n\n",
		rep.Time.Format("2006-01-02 15:04 MST"), rep.Commit, m.CPUs, m.CPUModel, m.Memory, m.LoadStart, m.LoadEnd)
	fmt.Fprintln(out, "| figure | where | measured | goal | verdict | from |")
	fmt.Fprintln(out, "| --- | --- | --- | --- | --- | --- |")
	for _, f := range rep.Figures {
		val, goal := fmt.Sprintf("%.2f", f.Value), f.goalText()
		if strings.HasPrefix(f.Name, "audit growth") {
			val, goal = fmt.Sprintf("%.0f records", f.Value), fmt.Sprintf("≤ %.0f records", f.Goal)
		}
		if f.Missing != "" {
			val = "–"
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s |\n", f.Name, f.Scope, val, goal, f.verdictText(), f.Measured)
	}
	fmt.Fprintln(out)
}
