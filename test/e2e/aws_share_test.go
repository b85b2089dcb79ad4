package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestConcurrentIdenticalRequestsShareOneAssumeRole: 200 requests at once
// through the real broker make exactly one AssumeRole at MinIO (counted by a
// pass-through front), and each hand-out is still its own audited decision.
func TestConcurrentIdenticalRequestsShareOneAssumeRole(t *testing.T) {
	t.Parallel()
	var assumeRoles atomic.Int64
	b := startAWSBrokerVia(t, countingFront(t, &assumeRoles))
	conn, err := brokerclient.Dial(b.grpcAddr, filepath.Join(b.dataDir, "dev", "controller"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := credbrokerv1.NewBrokerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const n = 200
	keys := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := client.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "capa", Cluster: clusterA})
			errs[i], keys[i] = err, resp.GetCredential().GetAws().GetAccessKeyId()
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if keys[i] != keys[0] {
			t.Fatalf("request %d got key %s, request 0 %s", i, keys[i], keys[0])
		}
	}
	if got := assumeRoles.Load(); got != 1 {
		t.Fatalf("%d AssumeRole calls reached STS for %d identical requests, want 1", got, n)
	}

	r := b.ctl(t, "-o", "json", "issuances", "list", "--limit", "1000")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatal(err)
	}
	reused := 0
	for _, is := range list {
		if is["upstream_ref"] != keys[0] {
			t.Errorf("issuance %v names key %v", is["issuance_id"], is["upstream_ref"])
		}
		if is["reused"] == true {
			reused++
		}
	}
	if len(list) != n || reused != n-1 {
		t.Errorf("%d issuances on record (%d reused), want %d (%d reused)", len(list), reused, n, n-1)
	}
	if r := b.ctl(t, "audit", "verify"); r.code != 0 {
		t.Errorf("audit verify: %s%s", r.stdout, r.stderr)
	}
	if m := metrics(t, b.broker); !strings.Contains(m, `credbroker_credentials_reused_total{profile="capa"} 199`) {
		t.Errorf("metrics do not count the 199 reused hand-outs:\n%s", grepLines(m, "credbroker_"))
	}
}

// countingFront returns a front for startAWSBrokerVia: a pass-through to
// MinIO that counts the AssumeRole calls reaching it in n.
func countingFront(t *testing.T, n *atomic.Int64) func(minioURL string) string {
	return func(minioURL string) string {
		u, _ := url.Parse(minioURL)
		proxy := httputil.NewSingleHostReverseProxy(u)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			if form, _ := url.ParseQuery(string(body)); form.Get("Action") == "AssumeRole" {
				n.Add(1)
			}
			proxy.ServeHTTP(w, r) // Host header kept: MinIO's SigV4 check passes
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
}

// metrics returns the broker's /metrics page.
func metrics(t *testing.T, b *broker) string {
	t.Helper()
	_, body := getText(t, "http://"+b.http+"/metrics")
	return body
}

// getText GETs url and returns the status code and the body.
func getText(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
