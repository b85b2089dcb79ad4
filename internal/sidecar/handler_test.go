package sidecar

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const testToken = "tok-123"

// serveHandler serves one credential "capa" on a real loopback listener,
// with a clock at the real time (the AWS SDK compares expiry with it).
func serveHandler(t *testing.T) (*fakeBroker, *fakeClock, *httptest.Server) {
	t.Helper()
	b, client := startBroker(t)
	clk := newFakeClock(time.Now().UTC().Truncate(time.Second))
	r := newTestRefresher(t, clk, client)
	m := NewMetrics(clk)
	m.Watch(r)
	r.observe = m.Observe
	h, err := NewHandler(testToken, []*Refresher{r}, m.Handler())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return b, clk, srv
}

func get(t *testing.T, url string, auth ...string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func TestHandlerResponses(t *testing.T) {
	b, clk, srv := serveHandler(t)
	exp := clk.Now().Add(time.Hour)
	b.give("AKIA1", exp)
	url := srv.URL + CredentialsPath + "capa"

	for _, tc := range []struct {
		name string
		url  string
		auth []string
		code int
		err  string
	}{
		{"missing token", url, nil, 401, "MissingAuthorization"},
		{"empty token", url, []string{""}, 401, "MissingAuthorization"},
		{"wrong token", url, []string{"tok-124"}, 403, "InvalidAuthorization"},
		{"bearer prefix", url, []string{"Bearer " + testToken}, 403, "InvalidAuthorization"},
		{"two headers", url, []string{testToken, "x"}, 403, "InvalidAuthorization"},
		{"unknown name, bad token", srv.URL + CredentialsPath + "nope", nil, 401, "MissingAuthorization"},
		{"unknown name", srv.URL + CredentialsPath + "nope", []string{testToken}, 404, "NotFound"},
	} {
		code, hdr, body := get(t, tc.url, tc.auth...)
		var e errorResponse
		if err := json.Unmarshal([]byte(body), &e); err != nil || code != tc.code || e.Code != tc.err || e.Message == "" {
			t.Errorf("%s: %d %s, want %d with code %s", tc.name, code, body, tc.code, tc.err)
		}
		if hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", tc.name, hdr.Get("Content-Type"))
		}
	}
	if b.calls.Load() != 0 {
		t.Errorf("rejected requests reached the broker (%d calls)", b.calls.Load())
	}

	code, hdr, body := get(t, url, testToken)
	if code != 200 || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("200 case: %d %v", code, hdr)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"AccessKeyId": "AKIA1", "SecretAccessKey": "secret-AKIA1", "Token": "token-AKIA1", "Expiration": exp.Format(time.RFC3339)}
	if len(got) != len(want) {
		t.Errorf("body = %s, want exactly %v", body, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if code, _, body := get(t, srv.URL+"/healthz"); code != 200 {
		t.Errorf("healthz = %d %s", code, body)
	}

	// Expired and the broker down: 503, and healthz names the credential.
	b.fail(status.Error(codes.Unavailable, "broker down"))
	clk.Set(exp)
	code, _, body = get(t, url, testToken)
	if code != 503 || !strings.Contains(body, `"code":"CredentialUnavailable"`) || strings.Contains(body, "AKIA1") {
		t.Errorf("expired: %d %s", code, body)
	}
	if code, _, body := get(t, srv.URL+"/healthz"); code != 503 || !strings.Contains(body, "capa") || !strings.Contains(body, "unavailable") {
		t.Errorf("healthz = %d %s", code, body)
	}

	_, _, metrics := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`credbroker_sidecar_refreshes_total{credential="capa",result="success"} 1`,
		`credbroker_sidecar_refreshes_total{credential="capa",result="unavailable"} 1`,
		`credbroker_sidecar_credential_expiry_seconds{credential="capa"} 0`,
		`go_goroutines`, `process_`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(metrics, "secret-") || strings.Contains(metrics, "token-AKIA1") {
		t.Error("metrics expose a secret")
	}
}

func TestHandlerRejectsDuplicatesAndEmptyToken(t *testing.T) {
	_, client := startBroker(t)
	r := newTestRefresher(t, newFakeClock(t0), client)
	if _, err := NewHandler("", []*Refresher{r}, nil); err == nil {
		t.Error("empty token accepted")
	}
	if _, err := NewHandler("t", []*Refresher{r, r}, nil); err == nil {
		t.Error("duplicate names accepted")
	}
}

// clearAWSEnv keeps the developer's AWS configuration out of the SDK test.
func clearAWSEnv(t *testing.T) {
	dir := t.TempDir()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_REGION", "us-east-1")
}

// TestAWSSDKDefaultChainRetrieves uses the real AWS SDK v2 default chain,
// configured only by the environment a controller container gets.
func TestAWSSDKDefaultChainRetrieves(t *testing.T) {
	b, clk, srv := serveHandler(t)
	exp := clk.Now().Add(time.Hour)
	b.give("AKIASDK", exp)
	clearAWSEnv(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.URL+CredentialsPath+"capa")
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tokenFile)

	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if creds.AccessKeyID != "AKIASDK" || creds.SecretAccessKey != "secret-AKIASDK" || creds.SessionToken != "token-AKIASDK" ||
		// The SDK's cache moves Expires up to 5 minutes earlier.
		!creds.CanExpire || creds.Expires.After(exp) || creds.Expires.Before(exp.Add(-5*time.Minute)) {
		t.Errorf("SDK got %s / expires %v (can expire %v)", creds.AccessKeyID, creds.Expires, creds.CanExpire)
	}
}

func TestAWSSDKSurfacesErrors(t *testing.T) {
	b, _, srv := serveHandler(t)
	b.fail(status.Error(codes.PermissionDenied, "no policy rule matches"))
	for _, tc := range []struct{ token, want string }{
		{"wrong", "InvalidAuthorization"},
		{testToken, "CredentialUnavailable"},
	} {
		p := endpointcreds.New(srv.URL+CredentialsPath+"capa", func(o *endpointcreds.Options) {
			o.AuthorizationToken = tc.token
			o.Retryer = aws.NopRetryer{}
		})
		_, err := p.Retrieve(t.Context())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("token %q: err = %v, want %s", tc.token, err, tc.want)
		}
		if tc.token == testToken && (err == nil || !strings.Contains(err.Error(), "permission denied")) {
			t.Errorf("the broker's reason is not surfaced: %v", err)
		}
	}
}

// TestServedLifetimeBringsTheSDKBack: with a served lifetime the endpoint
// tells the SDK an earlier expiry than the credential's (never a later
// one), so that the SDK's cache asks again long before the credential
// expires; the credential is the same.
func TestServedLifetimeBringsTheSDKBack(t *testing.T) {
	b, client := startBroker(t)
	clk := newFakeClock(time.Now().UTC().Truncate(time.Second))
	r := newTestRefresher(t, clk, client)
	h, err := NewHandler(testToken, []*Refresher{r}, nil, WithServedLifetime(6*time.Minute, clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	b.give("AKIASERVED", clk.Now().Add(time.Hour))
	clearAWSEnv(t)
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.URL+CredentialsPath+"capa")
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", testToken)
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The SDK's cache, 5 minutes ahead of the expiry it is told, asks again
	// a minute later instead of 55 minutes later.
	if want := clk.Now().Add(time.Minute); creds.AccessKeyID != "AKIASERVED" || !creds.Expires.Equal(want) {
		t.Fatalf("SDK got %s expiring (for its cache) %v, want %v", creds.AccessKeyID, creds.Expires, want)
	}
	// A credential expiring sooner than the cap is told its own expiry.
	b.give("AKIASHORT", clk.Now().Add(3*time.Minute+30*time.Second))
	if _, err := r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	p := endpointcreds.New(srv.URL+CredentialsPath+"capa", func(o *endpointcreds.Options) { o.AuthorizationToken = testToken })
	creds, err = p.Retrieve(t.Context())
	if err != nil || !creds.Expires.Equal(clk.Now().Add(3*time.Minute+30*time.Second)) {
		t.Fatalf("short credential expires %v (%v), want its own expiry", creds.Expires, err)
	}
	if _, err := NewHandler(testToken, []*Refresher{r}, nil, WithServedLifetime(-time.Second, clk.Now)); err == nil {
		t.Error("a negative served lifetime was accepted")
	}
}
