package awssts_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"go.yaml.in/yaml/v3"

	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/test/fakeclock"
	"github.com/credbroker/credbroker/test/miniotest"
)

const (
	caller    = "spiffe://example.test/ns/capi-system/sa/capa-controller-manager"
	clusterA  = "team-a/alpha"
	clusterB  = "team-b/beta"
	bucket    = "capi"
	prefixA   = "team-a/alpha/"
	prefixB   = "team-b/beta/"
	roleARN   = "arn:aws:iam::123456789012:role/capa-controller"
	ttl       = 15 * time.Minute
	policyDoc = `
Version: "2012-10-17"
Statement:
  - Sid: ClusterBucket
    Effect: Allow
    Action: ["s3:GetObject", "s3:PutObject"]
    Resource: ["arn:aws:s3:::capi/${cluster.namespace}/${cluster.name}/*"]
  - Sid: ClusterPrefixListing
    Effect: Allow
    Action: ["s3:ListBucket"]
    Resource: ["arn:aws:s3:::capi-shared"]
    Condition:
      StringLike:
        "s3:prefix": "${cluster.namespace}/${cluster.name}/*"
`
)

func compilePolicy(t *testing.T) *awssts.PolicyTemplate {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal([]byte(policyDoc), &doc); err != nil {
		t.Fatal(err)
	}
	tmpl, err := awssts.CompilePolicy(doc)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

// recorder is the SDK's HTTP client with every STS request's form kept, so
// tests see exactly what the broker sent (MinIO ignores some parameters,
// such as Tags and SourceIdentity, which AWS enforces).
type recorder struct {
	next  aws.HTTPClient
	mu    sync.Mutex
	forms []url.Values
}

func newRecorder() *recorder { return &recorder{next: awshttp.NewBuildableClient()} }

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.forms = append(r.forms, form)
	r.mu.Unlock()
	return r.next.Do(req)
}

func (r *recorder) calls(action string) []url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []url.Values
	for _, f := range r.forms {
		if f.Get("Action") == action {
			out = append(out, f)
		}
	}
	return out
}

type env struct {
	minio  *miniotest.Server
	rec    *recorder
	clock  *fakeclock.Clock
	issuer *awssts.Issuer
}

// newEnv starts MinIO with one prefix per cluster in one bucket and an issuer that
// assumes roles there with MinIO's root credentials (the broker's own
// credentials, as the default chain would provide them).
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{minio: miniotest.Start(t), rec: newRecorder(), clock: fakeclock.New(time.Now())}
	e.minio.CreateBucket(t, bucket)
	var err error
	e.issuer, err = awssts.New(context.Background(), awssts.Config{
		Region:              e.minio.Region,
		Endpoint:            e.minio.Endpoint,
		Credentials:         awssts.CredentialsDefault,
		CredentialsProvider: e.minio.RootCredentials(),
		HTTPClient:          e.rec,
		Clock:               e.clock.Now,
		Profiles:            map[string]awssts.Profile{"capa": {RoleARN: roleARN, Policy: compilePolicy(t)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var ids atomic.Int64

func request(cluster string) issuers.Request {
	return issuers.Request{IssuanceID: fmt.Sprintf("issuance-%d", ids.Add(1)), Subject: caller, Profile: "capa", Cluster: cluster, TTL: ttl}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// put writes one object with cred and returns the S3 error code, or "".
func put(t *testing.T, m *miniotest.Server, cred issuers.Credential, prefix string) string {
	t.Helper()
	c := cred.AWS
	client := m.S3(t, credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken))
	_, err := client.PutObject(ctxT(t), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "kubeconfig"), Body: strings.NewReader("x")})
	if err == nil {
		return ""
	}
	var api smithy.APIError
	if !errors.As(err, &api) {
		t.Fatalf("put to %s: %v", prefix, err)
	}
	return api.ErrorCode()
}

func TestCredentialIsScopedToItsCluster(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := time.Now()
	cred, err := e.issuer.Issue(ctxT(t), request(clusterA))
	if err != nil {
		t.Fatal(err)
	}
	if cred.Kind != issuers.KindAWS || cred.UpstreamRef != cred.AWS.AccessKeyID || cred.Reused {
		t.Fatalf("credential = %+v", cred)
	}
	if lo, hi := before.Add(ttl-5*time.Second), time.Now().Add(ttl+5*time.Second); cred.ExpiresAt.Before(lo) || cred.ExpiresAt.After(hi) {
		t.Errorf("expires at %v, want about %v from now", cred.ExpiresAt, ttl)
	}
	if code := put(t, e.minio, cred, prefixA); code != "" {
		t.Errorf("cluster A's credential on cluster A's bucket: %s", code)
	}
	if code := put(t, e.minio, cred, prefixB); code != "AccessDenied" {
		t.Errorf("cluster A's credential on cluster B's bucket: %q, want AccessDenied", code)
	}
}

func TestAssumeRoleRequestCarriesIdentityTagsAndPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	req := request(clusterA)
	cred, err := e.issuer.Issue(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	calls := e.rec.calls("AssumeRole")
	if len(calls) != 1 {
		t.Fatalf("%d AssumeRole calls", len(calls))
	}
	f := calls[0]
	want := map[string]string{
		"RoleArn":         roleARN,
		"DurationSeconds": "900",
		"SourceIdentity":  awssts.SourceIdentity(caller),
		"RoleSessionName": awssts.RoleSessionName(caller),
	}
	for k, v := range want {
		if f.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, f.Get(k), v)
		}
	}
	if cred.SourceIdentity != want["SourceIdentity"] || cred.SourceIdentity != "ns.capi-system.sa.capa-controller-manager@example.test" {
		t.Errorf("credential SourceIdentity = %q", cred.SourceIdentity)
	}
	tags := map[string]string{}
	for i := 1; f.Get(fmt.Sprintf("Tags.member.%d.Key", i)) != ""; i++ {
		tags[f.Get(fmt.Sprintf("Tags.member.%d.Key", i))] = f.Get(fmt.Sprintf("Tags.member.%d.Value", i))
	}
	wantTags := map[string]string{
		"credbroker:spiffe-id": caller, "credbroker:profile": "capa", "credbroker:cluster-namespace": "team-a",
		"credbroker:cluster-name": "alpha", "credbroker:issuance-id": req.IssuanceID,
	}
	if fmt.Sprint(tags) != fmt.Sprint(wantTags) {
		t.Errorf("session tags = %v, want %v", tags, wantTags)
	}
	var policy struct {
		Statement []struct {
			Resource  any
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(f.Get("Policy")), &policy); err != nil {
		t.Fatalf("Policy %q: %v", f.Get("Policy"), err)
	}
	if fmt.Sprint(policy.Statement[0].Resource) != "[arn:aws:s3:::capi/team-a/alpha/*]" {
		t.Errorf("resource = %v", policy.Statement[0].Resource)
	}
	if v := policy.Statement[1].Condition["StringLike"]["s3:prefix"]; v != "team-a/alpha/*" {
		t.Errorf("condition = %v: want cluster A's prefix", policy.Statement[1].Condition)
	}

	// Preview (policy explain) says exactly what was sent, without a call.
	pv, err := e.issuer.Preview(req)
	if err != nil {
		t.Fatal(err)
	}
	if pv.Target != f.Get("RoleArn") || pv.SessionPolicy != f.Get("Policy") || pv.Details["SourceIdentity"] != f.Get("SourceIdentity") ||
		pv.Details["RoleSessionName"] != f.Get("RoleSessionName") {
		t.Errorf("preview %+v\ndiffers from the AssumeRole sent: %v", pv, f)
	}
	for k, v := range wantTags {
		if pv.Details["tag "+k] != v {
			t.Errorf("preview tag %s = %q, want %q", k, pv.Details["tag "+k], v)
		}
	}
	if n := len(e.rec.calls("AssumeRole")); n != 1 {
		t.Errorf("preview called STS: %d AssumeRole calls", n)
	}
}

func TestIdenticalRequestsShareOneAssumeRoleUntilHalfLife(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 200
	creds := make([]issuers.Credential, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			creds[i], errs[i] = e.issuer.Issue(ctxT(t), request(clusterA))
		}()
	}
	close(start)
	wg.Wait()
	fresh := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if creds[i].AWS.AccessKeyID != creds[0].AWS.AccessKeyID {
			t.Fatalf("request %d got a different credential", i)
		}
		if !creds[i].Reused {
			fresh++
		}
	}
	if got := len(e.rec.calls("AssumeRole")); got != 1 {
		t.Fatalf("%d AssumeRole calls for %d identical requests, want 1", got, n)
	}
	if fresh != 1 {
		t.Errorf("%d credentials marked as freshly minted, want exactly 1", fresh)
	}

	// Another cluster is another credential.
	if c, err := e.issuer.Issue(ctxT(t), request(clusterB)); err != nil || c.Reused {
		t.Fatalf("cluster B: %+v, %v", c, err)
	}
	if got := len(e.rec.calls("AssumeRole")); got != 2 {
		t.Fatalf("%d AssumeRole calls after a second cluster, want 2", got)
	}

	// Just before half of the lifetime the credential is still handed out...
	half := creds[0].ExpiresAt.Sub(e.clock.Now()) / 2
	e.clock.Advance(half - time.Second)
	if c, err := e.issuer.Issue(ctxT(t), request(clusterA)); err != nil || !c.Reused || c.AWS.AccessKeyID != creds[0].AWS.AccessKeyID {
		t.Fatalf("before half-life: %+v, %v", c, err)
	}
	// ...and from half of it, the next request gets a fresh one.
	e.clock.Advance(2 * time.Second)
	c, err := e.issuer.Issue(ctxT(t), request(clusterA))
	if err != nil || c.Reused || c.AWS.AccessKeyID == creds[0].AWS.AccessKeyID {
		t.Fatalf("after half-life: %+v, %v", c, err)
	}
	if got := len(e.rec.calls("AssumeRole")); got != 3 {
		t.Fatalf("%d AssumeRole calls, want 3", got)
	}
	// A different TTL is a different credential: a request never gets one
	// that outlives what it asked for.
	longer := request(clusterA)
	longer.TTL = 20 * time.Minute
	if c, err := e.issuer.Issue(ctxT(t), longer); err != nil || c.Reused {
		t.Fatalf("longer TTL: %+v, %v", c, err)
	}
}

func TestWaiterGivingUpDoesNotCancelTheSharedCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.issuer.Issue(ctx, request(clusterA)); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
	// The call it started is not wasted: it completes and serves the next caller.
	c, err := e.issuer.Issue(ctxT(t), request(clusterA))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(e.rec.calls("AssumeRole")); got != 1 {
		t.Errorf("%d AssumeRole calls, want 1 (reused: %v)", got, c.Reused)
	}
}

func TestRequestsOutsideSTSLimitsAreRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for name, mutate := range map[string]func(*issuers.Request){
		"ttl below 15m":   func(r *issuers.Request) { r.TTL = 14 * time.Minute },
		"ttl above 12h":   func(r *issuers.Request) { r.TTL = 13 * time.Hour },
		"no cluster":      func(r *issuers.Request) { r.Cluster = "" },
		"unknown profile": func(r *issuers.Request) { r.Profile = "other" },
	} {
		t.Run(name, func(t *testing.T) {
			r := request(clusterA)
			mutate(&r)
			if _, err := e.issuer.Issue(ctxT(t), r); err == nil {
				t.Fatal("issued")
			}
		})
	}
	if got := len(e.rec.calls("AssumeRole")); got != 0 {
		t.Errorf("%d AssumeRole calls for invalid requests", got)
	}
}

// stsFront is a test adapter in front of MinIO's STS that answers the first
// `fail` requests with an STS error of its choosing and forwards the rest
// unchanged (Host header kept, so MinIO's SigV4 check passes). MinIO cannot
// be made to throttle, so this is how throttling is exercised.
type stsFront struct {
	code     string
	status   int
	fail     int
	requests atomic.Int64
	proxy    *httputil.ReverseProxy
}

func startFront(t *testing.T, target, code string, status, fail int) (*stsFront, string) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &stsFront{code: code, status: status, fail: fail, proxy: httputil.NewSingleHostReverseProxy(u)}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *stsFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if n := f.requests.Add(1); int(n) <= f.fail {
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(f.status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>%s</Code><Message>arn:aws:iam::123456789012:role/internal-detail</Message></Error><RequestId>r-%d</RequestId></ErrorResponse>`, f.code, n)
		return
	}
	f.proxy.ServeHTTP(w, r)
}

func issuerVia(t *testing.T, m *miniotest.Server, endpoint string, attempts int) *awssts.Issuer {
	t.Helper()
	iss, err := awssts.New(context.Background(), awssts.Config{
		Region: m.Region, Endpoint: endpoint, Credentials: awssts.CredentialsDefault,
		CredentialsProvider: m.RootCredentials(), MaxAttempts: attempts,
		Profiles: map[string]awssts.Profile{"capa": {RoleARN: roleARN, Policy: compilePolicy(t)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func TestThrottlingIsRetriedThenReportedWithARetryDelay(t *testing.T) {
	t.Parallel()
	m := miniotest.Start(t)

	// One throttled answer: the SDK's retryer absorbs it.
	front, endpoint := startFront(t, m.Endpoint, "Throttling", http.StatusBadRequest, 1)
	if _, err := issuerVia(t, m, endpoint, 3).Issue(ctxT(t), request(clusterA)); err != nil {
		t.Fatalf("after one throttle: %v", err)
	}
	if got := front.requests.Load(); got != 2 {
		t.Errorf("%d requests, want 2 (one retry)", got)
	}

	// Throttled throughout: every attempt is used, then Unavailable with a delay.
	front, endpoint = startFront(t, m.Endpoint, "Throttling", http.StatusBadRequest, 1000)
	_, err := issuerVia(t, m, endpoint, 3).Issue(ctxT(t), request(clusterA))
	var ie *issuers.Error
	if !errors.As(err, &ie) || !errors.Is(err, issuers.ErrUnavailable) || ie.Code != "Throttling" || ie.RetryAfter <= 0 {
		t.Fatalf("err = %v, want Unavailable/Throttling with a retry delay", err)
	}
	if got := front.requests.Load(); got != 3 {
		t.Errorf("%d requests, want 3 attempts", got)
	}
}

func TestSTSRefusalsAreClassified(t *testing.T) {
	t.Parallel()
	m := miniotest.Start(t)
	for code, kind := range map[string]error{
		"AccessDenied":            issuers.ErrRejected,
		"MalformedPolicyDocument": issuers.ErrMisconfigured,
		"PackedPolicyTooLarge":    issuers.ErrMisconfigured,
	} {
		t.Run(code, func(t *testing.T) {
			front, endpoint := startFront(t, m.Endpoint, code, http.StatusForbidden, 1000)
			_, err := issuerVia(t, m, endpoint, 3).Issue(ctxT(t), request(clusterA))
			var ie *issuers.Error
			if !errors.As(err, &ie) || !errors.Is(err, kind) || ie.Code != code {
				t.Fatalf("err = %v, want %v with code %s", err, kind, code)
			}
			if got := front.requests.Load(); got != 1 {
				t.Errorf("%d requests: a refusal must not be retried", got)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		endpoint := srv.URL
		srv.Close()
		_, err := issuerVia(t, m, endpoint, 1).Issue(ctxT(t), request(clusterA))
		if !errors.Is(err, issuers.ErrUnavailable) {
			t.Fatalf("err = %v, want Unavailable", err)
		}
	})
}

func TestBrokerWithoutAWSCredentialsFailsAtStart(t *testing.T) {
	t.Parallel()
	_, err := awssts.New(context.Background(), awssts.Config{
		Region: "us-east-1", Credentials: awssts.CredentialsDefault,
		CredentialsProvider: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{}, errors.New("no credentials in the chain")
		}),
	})
	if err == nil || !strings.Contains(err.Error(), "no AWS credentials of its own") {
		t.Fatalf("err = %v", err)
	}
}

// TestWebIdentityNeedsNoAWSKeys exchanges tokens from the broker's own OIDC
// issuer at MinIO's STS, which fetches the issuer's discovery document and
// JWKS like AWS IAM does.
func TestWebIdentityNeedsNoAWSKeys(t *testing.T) {
	t.Parallel()
	oidc := httptest.NewUnstartedServer(nil)
	issuerURL := "http://" + oidc.Listener.Addr().String()
	signer, err := jwt.New(jwt.Config{IssuerURL: issuerURL, KeyFile: filepath.Join(t.TempDir(), "key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	oidc.Config.Handler = signer.Handler()
	oidc.Start()
	t.Cleanup(oidc.Close)

	m := miniotest.Start(t, miniotest.WithOpenID(issuerURL+"/.well-known/openid-configuration", awssts.DefaultWebIdentityAud, "readwrite"))
	m.CreateBucket(t, bucket)
	rec := newRecorder()
	iss, err := awssts.New(context.Background(), awssts.Config{
		Region: m.Region, Endpoint: m.Endpoint, Credentials: awssts.CredentialsWebIdentity,
		WebIdentity: awssts.WebIdentity{Signer: signer},
		HTTPClient:  rec,
		Profiles:    map[string]awssts.Profile{"capa": {RoleARN: m.RoleARN(), Policy: compilePolicy(t)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	req := request(clusterA)
	cred, err := iss.Issue(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if code := put(t, m, cred, prefixA); code != "" {
		t.Errorf("own cluster: %s", code)
	}
	if code := put(t, m, cred, prefixB); code != "AccessDenied" {
		t.Errorf("other cluster: %q, want AccessDenied", code)
	}

	calls := rec.calls("AssumeRoleWithWebIdentity")
	if len(calls) != 1 {
		t.Fatalf("%d AssumeRoleWithWebIdentity calls", len(calls))
	}
	claims, err := jwt.Verify(signer.JWKS(), calls[0].Get("WebIdentityToken"))
	if err != nil {
		t.Fatal(err)
	}
	if claims["sub"] != caller || claims["aud"] != awssts.DefaultWebIdentityAud || claims["iss"] != issuerURL {
		t.Errorf("claims = %v", claims)
	}
	if claims["https://aws.amazon.com/source_identity"] != awssts.SourceIdentity(caller) {
		t.Errorf("source identity claim = %v", claims["https://aws.amazon.com/source_identity"])
	}
	tags, _ := claims["https://aws.amazon.com/tags"].(map[string]any)
	principal, _ := tags["principal_tags"].(map[string]any)
	if fmt.Sprint(principal["credbroker:cluster-name"]) != "[alpha]" || fmt.Sprint(principal["credbroker:issuance-id"]) != "["+req.IssuanceID+"]" {
		t.Errorf("tags claim = %v", tags)
	}
	if calls[0].Get("DurationSeconds") != "900" || !strings.Contains(calls[0].Get("Policy"), "capi/team-a/alpha/*") {
		t.Errorf("request = %v", calls[0])
	}
}

// TestForgetDropsRevokedCredentialsFromReuse: after Forget, a credential it
// covers is never handed out again; the next identical request makes a
// fresh AssumeRole call, and credentials it does not cover stay reused.
func TestForgetDropsRevokedCredentialsFromReuse(t *testing.T) {
	e := newEnv(t)
	first, err := e.issuer.Issue(ctxT(t), request(clusterA))
	if err != nil || first.Reused || first.OriginIssuanceID == "" {
		t.Fatalf("first: %+v, %v", first, err)
	}
	other, err := e.issuer.Issue(ctxT(t), request(clusterB))
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.issuer.Issue(ctxT(t), request(clusterA))
	if err != nil || !again.Reused || again.OriginIssuanceID != first.OriginIssuanceID {
		t.Fatalf("before Forget: %+v, %v; want the first credential reused", again, err)
	}
	var seen []issuers.Held
	n := e.issuer.Forget(func(h issuers.Held) bool {
		seen = append(seen, h)
		return h.IssuanceID == first.OriginIssuanceID
	})
	if n != 1 || len(seen) != 2 {
		t.Fatalf("Forget dropped %d of %d held (%+v), want 1 of 2", n, len(seen), seen)
	}
	for _, h := range seen {
		if h.Subject != caller || (h.Cluster != clusterA && h.Cluster != clusterB) {
			t.Fatalf("held credential described as %+v", h)
		}
	}
	fresh, err := e.issuer.Issue(ctxT(t), request(clusterA))
	if err != nil || fresh.Reused || fresh.AWS.AccessKeyID == first.AWS.AccessKeyID {
		t.Fatalf("after Forget: %+v, %v; want a fresh credential", fresh, err)
	}
	if c, err := e.issuer.Issue(ctxT(t), request(clusterB)); err != nil || !c.Reused || c.AWS.AccessKeyID != other.AWS.AccessKeyID {
		t.Fatalf("a credential Forget did not cover: %+v, %v; want it reused", c, err)
	}
	if got := len(e.rec.calls("AssumeRole")); got != 3 {
		t.Fatalf("%d AssumeRole calls, want 3", got)
	}
}
