package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/devenv"
	"github.com/credbroker/credbroker/internal/svidfile"
	"github.com/credbroker/credbroker/issuers/jwt"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// The benchmark runs some of its parts as processes of its own test binary,
// so that they do not share a Go runtime with the server they measure or
// with each other: the echo server that the broker daemon is compared with,
// the flooding identity of P7, and the broker assembled as in-process but
// served from a process of its own, with the audit on or off (P2). roleEnv names the part; its settings are
// JSON in roleSpecEnv.
const (
	roleEnv     = "CREDBROKER_BENCH_ROLE"
	roleSpecEnv = "CREDBROKER_BENCH_ROLE_SPEC"
	roleEcho    = "echo"
	roleFlood   = "flood"
	roleBroker  = "broker"
)

func TestMain(m *testing.M) {
	switch role := os.Getenv(roleEnv); role {
	case "":
		// The fleet's three-member etcd: its members ask each other for
		// their versions over keep-alive HTTP, and those connections outlive
		// the members (embed.Close leaves its round tripper's idle
		// connections); the broker speaks gRPC only, so ignoring net/http's
		// connection goroutines hides nothing of its own.
		goleak.VerifyTestMain(m,
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
			goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"))
	case roleEcho, roleFlood, roleBroker:
		if err := runRole(role, os.Getenv(roleSpecEnv)); err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "bench: unknown %s=%q\n", roleEnv, role)
		os.Exit(2)
	}
}

func runRole(role, spec string) error {
	switch role {
	case roleEcho:
		var s echoSpec
		if err := json.Unmarshal([]byte(spec), &s); err != nil {
			return err
		}
		return runEcho(s)
	case roleBroker:
		var s brokerSpec
		if err := json.Unmarshal([]byte(spec), &s); err != nil {
			return err
		}
		return runBroker(s)
	default:
		var s floodSpec
		if err := json.Unmarshal([]byte(spec), &s); err != nil {
			return err
		}
		res, err := runFlood(s)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	}
}

// echoSpec configures the echo server process.
type echoSpec struct {
	Listen string // loopback address to serve on
	// SVIDDir holds the server's X.509-SVID (svidfile layout).
	SVIDDir string
	// KeyFile is the ES256 signing key (created when missing).
	KeyFile string
	// IssuerURL and Subject make its tokens the same size as the
	// broker's: the daemon's issuer URL and the clients' SPIFFE ID.
	IssuerURL, Subject string
}

// runEcho serves the bare echo server (see echoService) with the same TLS
// 1.3 settings as the broker, until SIGTERM or SIGINT.
func runEcho(s echoSpec) error {
	svid, _, err := svidfile.Load(s.SVIDDir)
	if err != nil {
		return err
	}
	tlsConf := tlsconfig.TLSServerConfig(svid)
	tlsConf.ClientAuth = tls.RequestClientCert
	issuer, err := jwt.New(jwt.Config{IssuerURL: s.IssuerURL, KeyFile: s.KeyFile})
	if err != nil {
		return err
	}
	srv := newEchoServer(tlsConf, issuer, s.Subject)
	lis, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); srv.Stop() }()
	return srv.Serve(lis)
}

// brokerSpec configures a broker process (assembleBroker).
type brokerSpec struct {
	Listen string
	// CADir holds the trust domain's CA (ca.Save layout): the server's SVID
	// is minted from it, the clients' are verified against it.
	CADir string
	// KeyFile and IssuerURL configure the JWT issuer, as for echoSpec.
	KeyFile, IssuerURL string
	// DataDir holds the audit log's bbolt file when Audit is set; without
	// it the broker records nothing (discardAudit).
	DataDir string
	Audit   bool
	// LogFile receives the info-level JSON logs.
	LogFile string
}

// runBroker serves a broker assembled as in-process (assembleBroker) until
// SIGTERM or SIGINT.
func runBroker(s brokerSpec) error {
	authority, err := ca.Load(s.CADir)
	if err != nil {
		return err
	}
	svid, err := authority.MintX509SVID(serverID, devenv.SVIDTTL)
	if err != nil {
		return err
	}
	tlsConf := tlsconfig.TLSServerConfig(svid)
	tlsConf.ClientAuth = tls.RequestClientCert
	issuer, err := jwt.New(jwt.Config{IssuerURL: s.IssuerURL, KeyFile: s.KeyFile})
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(s.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	logger := slog.New(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	lim, err := limits.New(limits.Config{})
	if err != nil {
		return err
	}
	var (
		ledger broker.Ledger      = discardAudit{}
		log    broker.AuditLog    = discardAudit{}
		reader broker.AuditReader // none: no admin is admitted
	)
	if s.Audit {
		db, err := boltstate.OpenDB(filepath.Join(s.DataDir, "credbroker.db"))
		if err != nil {
			return err
		}
		defer db.Close()
		al, err := audit.Open(db)
		if err != nil {
			return err
		}
		defer al.Close()
		st, err := boltstate.New(db)
		if err != nil {
			return err
		}
		if ledger, err = st.Ledger(al); err != nil {
			return err
		}
		log = al
	}
	srv, err := assembleBroker(authority, issuer, tlsConf, lim, ledger, log, reader, logger)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); srv.Stop() }()
	return srv.Serve(lis)
}

// floodSpec configures a flooding identity: Clients closed-loop callers over
// Conns connections, each sending Request until Duration has passed or Max
// calls were made in all.
type floodSpec struct {
	Addr     string
	SVIDDir  string
	Profile  string
	Cluster  string
	Clients  int
	Conns    int
	Duration time.Duration
	Max      int64
}

// floodResult is what a flood did: answers by gRPC code name.
type floodResult struct {
	Codes   map[string]int64 `json:"codes"`
	Elapsed time.Duration    `json:"elapsed"`
}

// runFlood sends IssueCredential as fast as the broker answers, as one
// authenticated identity, and counts the answers. It stops by itself.
func runFlood(s floodSpec) (floodResult, error) {
	if s.Clients < 1 || s.Conns < 1 || s.Duration <= 0 || s.Max < 1 {
		return floodResult{}, fmt.Errorf("flood: bad spec %+v", s)
	}
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range s.Conns {
		c, err := brokerclient.Dial(s.Addr, s.SVIDDir, "")
		if err != nil {
			return floodResult{}, err
		}
		conns = append(conns, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Duration+30*time.Second)
	defer cancel()
	var (
		mu    sync.Mutex
		codes = map[string]int64{}
		sent  atomic.Int64
		wg    sync.WaitGroup
	)
	deadline := time.Now().Add(s.Duration)
	start := time.Now()
	for w := range s.Clients {
		client := credbrokerv1.NewBrokerServiceClient(conns[w%len(conns)])
		wg.Go(func() {
			local := map[string]int64{}
			for time.Now().Before(deadline) && sent.Add(1) <= s.Max {
				_, err := client.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: s.Profile, Cluster: s.Cluster})
				local[status.Code(err).String()]++
				if ctx.Err() != nil {
					break
				}
			}
			mu.Lock()
			for k, v := range local {
				codes[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return floodResult{}, errors.New("flood: the broker stopped answering")
	}
	return floodResult{Codes: codes, Elapsed: time.Since(start)}, nil
}

// rolePath is the test binary, run again for a role.
func rolePath() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}
