package testproc

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// The helper server is this test binary run again with envMode set: a tiny
// stand-in for MinIO or Vault whose behaviour each test picks.
const (
	envMode   = "TESTPROC_HELPER"        // serve, late, stubborn, fail or hang
	envAddr   = "TESTPROC_HELPER_ADDR"   // where serve and stubborn listen
	envSecret = "TESTPROC_HELPER_SECRET" // printed, to prove redaction
)

// TestMain runs the helper server when envMode is set, and otherwise the
// tests, failing them when one leaves goroutines behind (a process waiter
// or a probe).
func TestMain(m *testing.M) {
	if mode := os.Getenv(envMode); mode != "" {
		os.Exit(helper(mode))
	}
	goleak.VerifyTestMain(m)
}

// helper runs the helper server and returns its exit code.
//   - serve: listens on envAddr, answers GET /ready with 200 and exits with
//     code 3 on GET /exit; SIGTERM ends it normally.
//   - late: serve, but says "setup done" only when GET /ready is asked a
//     second time, as a server that answers before it has finished starting.
//   - stubborn: serve, but SIGTERM only makes it say "got SIGTERM".
//   - fail: prints its secret and exits with code 2 at once.
//   - hang: prints its secret and never listens.
func helper(mode string) int {
	fmt.Printf("helper: starting, secret=%s\n", os.Getenv(envSecret))
	switch mode {
	case "fail":
		fmt.Fprintln(os.Stderr, "helper: giving up")
		return 2
	case "hang":
		select {}
	case "stubborn":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		go func() {
			for range term {
				fmt.Println("helper: got SIGTERM, staying up")
			}
		}()
	}
	l, err := net.Listen("tcp", os.Getenv(envAddr))
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper: %v\n", err) // says "address already in use"
		return 1
	}
	mux := http.NewServeMux()
	readies := 0
	mux.HandleFunc("GET /ready", func(http.ResponseWriter, *http.Request) {
		if readies++; mode == "late" && readies == 2 {
			fmt.Println("helper: setup done")
		}
	})
	mux.HandleFunc("GET /exit", func(http.ResponseWriter, *http.Request) { os.Exit(3) })
	_ = http.Serve(l, mux)
	return 1
}
