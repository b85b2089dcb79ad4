package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/fakeclock"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--svid-dir", "d", "--profile", "p"}, "--broker is required"},
		{[]string{"--broker", "b", "--profile", "p"}, "an identity is required"},
		{[]string{"--broker", "b", "--profile", "p", "--svid-dir", "d", "--workload-api-socket", "unix:///s"}, "not both"},
		{[]string{"--broker", "b", "--profile", "p", "--svid-dir", "d", "--spiffe-id", "spiffe://td/x"}, "--spiffe-id"},
		{[]string{"--broker", "b", "--svid-dir", "d"}, "--profile is required"},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "--format", "yaml"}, `--format "yaml"`},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "extra"}, "unexpected arguments"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "--cache-min-remaining", "-1m"}, "--cache-min-remaining must not be negative"},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "--cluster", "Team_A/prod"}, `--cluster: cluster "Team_A/prod": want NAMESPACE/NAME`},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "--cluster", "prod"}, `--cluster: cluster "prod": want NAMESPACE/NAME`},
	} {
		var out, errb bytes.Buffer
		t.Setenv("CREDBROKER_ADDR", "")
		t.Setenv("CREDBROKER_SVID_DIR", "")
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
		if code := run(context.Background(), tc.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) || out.Len() != 0 ||
			!strings.HasPrefix(errb.String(), "credbroker-credential-process: ") || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("run(%q) = %d, stderr %q; want 2 and one line with %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "--cache-file PATH") ||
		!strings.Contains(errb.String(), "-cache-min-remaining duration") || !strings.Contains(errb.String(), "(default 10m0s)") {
		t.Errorf("--help: exit %d, %q", code, errb.String())
	}
}

func TestMissingSVIDDirFailsClearly(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--broker", "127.0.0.1:1", "--svid-dir", t.TempDir() + "/nope", "--profile", "p"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "svid.pem") || out.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestRenderAWS(t *testing.T) {
	exp := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := &credbrokerv1.Credential{Profile: "capa", ExpiresAt: timestamppb.New(exp), Kind: &credbrokerv1.Credential_Aws{Aws: &credbrokerv1.AWSCredentials{
		AccessKeyId: "ASIAEXAMPLE", SecretAccessKey: "secret", SessionToken: "session",
	}}}
	b, err := render(c, "aws")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Version":1,"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret","SessionToken":"session","Expiration":"2026-11-23T12:00:00Z"}` + "\n"
	if string(b) != want {
		t.Fatalf("aws format:\n got %s\nwant %s", b, want)
	}
}

func TestRenderJSONToken(t *testing.T) {
	exp := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := &credbrokerv1.Credential{IssuanceId: "id1", Profile: "dev-token", Issuer: "local", ExpiresAt: timestamppb.New(exp),
		Kind: &credbrokerv1.Credential_Token{Token: &credbrokerv1.Token{Token: "tok", TokenType: "JWT"}}}
	b, err := render(c, "json")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["token"] != "tok" || got["expiration"] != "2026-11-23T12:00:00Z" || got["issuance_id"] != "id1" {
		t.Fatalf("json format = %s", b)
	}
	if _, err := render(c, "aws"); err == nil || !strings.Contains(err.Error(), "use --format json") {
		t.Fatalf("aws format of a token: %v", err)
	}
}

// fakeBroker stands in for the broker in cache tests: each call issues a
// new 15-minute AWS credential (or a token), numbered, at the fake clock.
type fakeBroker struct {
	clock *fakeclock.Clock
	calls int
	token bool
	err   error
	got   []options
}

func (f *fakeBroker) issue(_ context.Context, o options) (*credbrokerv1.Credential, error) {
	f.calls++
	f.got = append(f.got, o)
	if f.err != nil {
		return nil, f.err
	}
	c := &credbrokerv1.Credential{IssuanceId: fmt.Sprintf("id%d", f.calls), Issuer: "aws", Profile: o.profile, Cluster: o.cluster,
		ExpiresAt: timestamppb.New(f.clock.Now().Add(15 * time.Minute))}
	if f.token {
		c.Kind = &credbrokerv1.Credential_Token{Token: &credbrokerv1.Token{Token: fmt.Sprintf("tok%d", f.calls), TokenType: "JWT"}}
	} else {
		c.Kind = &credbrokerv1.Credential_Aws{Aws: &credbrokerv1.AWSCredentials{
			AccessKeyId: fmt.Sprintf("ASIA%d", f.calls), SecretAccessKey: fmt.Sprintf("S3CR3T%d", f.calls), SessionToken: fmt.Sprintf("S3SS10N%d", f.calls),
		}}
	}
	return c, nil
}

// secretRE matches the fake broker's secrets.
var secretRE = regexp.MustCompile(`S3CR3T|S3SS10N|tok\d`)

type invocation struct {
	code           int
	stdout, stderr string
}

func (f *fakeBroker) run(t *testing.T, args ...string) invocation {
	t.Helper()
	var out, errb bytes.Buffer
	code := command{stdout: &out, stderr: &errb, now: f.clock.Now, issue: f.issue}.run(context.Background(), args)
	if secretRE.MatchString(errb.String()) {
		t.Errorf("a secret reached stderr: %q", errb.String())
	}
	return invocation{code, out.String(), errb.String()}
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{clock: fakeclock.New(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))}
}

func cacheArgs(cacheFile string, extra ...string) []string {
	return append([]string{"--broker", "broker:8443", "--svid-dir", "/run/svid", "--profile", "capa", "--cluster", "team-a/alpha",
		"--format", "aws", "--cache-file", cacheFile}, extra...)
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s has mode %#o, want %#o", path, fi.Mode().Perm(), want)
	}
}

func TestCacheReusesCredentialUntilMinRemaining(t *testing.T) {
	f := newFakeBroker()
	dir := filepath.Join(t.TempDir(), "cache")
	file := filepath.Join(dir, "capa.json")

	first := f.run(t, cacheArgs(file)...)
	if first.code != 0 || f.calls != 1 || first.stderr != "" || !strings.Contains(first.stdout, `"AccessKeyId":"ASIA1"`) {
		t.Fatalf("first: %+v, %d broker calls", first, f.calls)
	}
	wantMode(t, dir, 0o700)
	wantMode(t, file, 0o600)
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("cache dir holds %v, want only the cache file", entries)
	}

	// Until more than the default 10 minutes are left, the same bytes come
	// from the cache, and the broker is not asked.
	f.clock.Advance(5*time.Minute - time.Second)
	if again := f.run(t, cacheArgs(file)...); again != first || f.calls != 1 {
		t.Fatalf("from cache: %+v, %d broker calls; want %+v", again, f.calls, first)
	}
	// The json format is served from the same cache entry.
	js := f.run(t, cacheArgs(file, "--format", "json")...)
	var got jsonOutput
	if err := json.Unmarshal([]byte(js.stdout), &got); err != nil || f.calls != 1 {
		t.Fatalf("json from cache: %+v (%v), %d broker calls", js, err, f.calls)
	}
	if !reflect.DeepEqual(got, jsonOutput{IssuanceID: "id1", Profile: "capa", Cluster: "team-a/alpha", Issuer: "aws", Expiration: "2026-11-23T12:15:00Z",
		AccessKeyID: "ASIA1", SecretAccessKey: "S3CR3T1", SessionToken: "S3SS10N1"}) {
		t.Errorf("json from cache = %+v", got)
	}

	// With exactly 10 minutes left the credential is inside the AWS CLI's
	// mandatory refresh window: a new one replaces it.
	f.clock.Advance(time.Second)
	if r := f.run(t, cacheArgs(file)...); r.code != 0 || f.calls != 2 || !strings.Contains(r.stdout, `"AccessKeyId":"ASIA2"`) {
		t.Fatalf("at 10m left: %+v, %d broker calls", r, f.calls)
	}
	if r := f.run(t, cacheArgs(file)...); !strings.Contains(r.stdout, `"AccessKeyId":"ASIA2"`) || f.calls != 2 {
		t.Fatalf("after the refresh: %+v, %d broker calls", r, f.calls)
	}

	// A smaller --cache-min-remaining keeps using it for longer.
	f.clock.Advance(10 * time.Minute)
	if r := f.run(t, cacheArgs(file, "--cache-min-remaining", "4m")...); !strings.Contains(r.stdout, `"AccessKeyId":"ASIA2"`) || f.calls != 2 {
		t.Fatalf("--cache-min-remaining 4m with 5m left: %+v, %d broker calls", r, f.calls)
	}
}

func TestCacheIsKeyedByRequest(t *testing.T) {
	f := newFakeBroker()
	file := filepath.Join(t.TempDir(), "capa.json")
	if r := f.run(t, cacheArgs(file)...); r.code != 0 {
		t.Fatal(r)
	}
	for _, extra := range [][]string{
		{"--broker", "other:8443"},
		{"--broker-id", "spiffe://example.org/broker"},
		{"--svid-dir", "/run/other-svid"},
		{"--profile", "capa-admin"},
		{"--cluster", "team-b/beta"},
		{"--ttl", "30m"},
		{"--audience", "sts.amazonaws.com"},
		nil, // back to the first request: its entry was overwritten
	} {
		before := f.calls
		r := f.run(t, cacheArgs(file, extra...)...)
		if r.code != 0 || f.calls != before+1 || r.stderr != "" {
			t.Fatalf("%q: %+v, broker calls %d -> %d; want a new credential", extra, r, before, f.calls)
		}
		// ... which is what the same request gets next.
		if again := f.run(t, cacheArgs(file, extra...)...); again != r || f.calls != before+1 {
			t.Fatalf("%q again: %+v, want %+v from the cache", extra, again, r)
		}
	}
}

func TestCacheFileOthersMayReadIsRefused(t *testing.T) {
	f := newFakeBroker()
	file := filepath.Join(t.TempDir(), "capa.json")
	f.run(t, cacheArgs(file)...)
	if err := os.Chmod(file, 0o640); err != nil {
		t.Fatal(err)
	}
	r := f.run(t, cacheArgs(file)...)
	if r.code != 0 || f.calls != 2 || !strings.Contains(r.stdout, "ASIA2") {
		t.Fatalf("loose cache file: %+v, %d broker calls; want it unread and a new credential", r, f.calls)
	}
	if !strings.HasPrefix(r.stderr, "credbroker-credential-process: warning: ") || !strings.Contains(r.stderr, "mode 0640") ||
		!strings.Contains(r.stderr, "group or others") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("stderr %q does not say why the cache was refused", r.stderr)
	}
	wantMode(t, file, 0o600) // replaced by an owner-only file
	if r := f.run(t, cacheArgs(file)...); r.stderr != "" || f.calls != 2 {
		t.Errorf("after the replacement: %+v, %d broker calls", r, f.calls)
	}
}

func TestUnusableCacheIsReportedAndReplaced(t *testing.T) {
	valid := func(t *testing.T, f *fakeBroker, file string) []byte {
		t.Helper()
		f.run(t, cacheArgs(file)...)
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, tc := range map[string]struct {
		corrupt func(t *testing.T, file string, valid []byte) []byte
		want    string
	}{
		"not JSON":  {func(t *testing.T, file string, _ []byte) []byte { return []byte("{\"secret_access_key\": secretX") }, "corrupted cache file"},
		"truncated": {func(t *testing.T, file string, valid []byte) []byte { return valid[:len(valid)/2] }, "corrupted cache file"},
		"wrong type": {func(t *testing.T, file string, valid []byte) []byte {
			return bytes.Replace(valid, []byte(`"version":1`), []byte(`"version":"1"`), 1)
		}, `field "version" has the wrong type`},
		"no secret": {func(t *testing.T, file string, valid []byte) []byte {
			return bytes.Replace(valid, []byte(`"secret_access_key":"S3CR3T1"`), []byte(`"secret_access_key":""`), 1)
		}, "incomplete credential"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeBroker()
			file := filepath.Join(t.TempDir(), "capa.json")
			b := tc.corrupt(t, file, valid(t, f, file))
			if err := os.WriteFile(file, b, 0o600); err != nil {
				t.Fatal(err)
			}
			r := f.run(t, cacheArgs(file)...)
			if r.code != 0 || f.calls != 2 || !strings.Contains(r.stdout, `"AccessKeyId":"ASIA2"`) {
				t.Fatalf("%+v, %d broker calls", r, f.calls)
			}
			if !strings.HasPrefix(r.stderr, "credbroker-credential-process: warning: ") || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "secretX") {
				t.Errorf("stderr %q, want a warning with %q", r.stderr, tc.want)
			}
			if again := f.run(t, cacheArgs(file)...); again.stderr != "" || f.calls != 2 || again.stdout != r.stdout {
				t.Errorf("the corrupted cache was not replaced: %+v, %d broker calls", again, f.calls)
			}
		})
	}
}

func TestCacheWriteFailureStillPrintsTheCredential(t *testing.T) {
	f := newFakeBroker()
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := f.run(t, cacheArgs(filepath.Join(notDir, "capa.json"))...)
	if r.code != 0 || !strings.Contains(r.stdout, `"AccessKeyId":"ASIA1"`) {
		t.Fatalf("%+v", r)
	}
	if !strings.Contains(r.stderr, "credbroker-credential-process: warning: credential not cached: ") || !strings.Contains(r.stderr, "not a directory") {
		t.Errorf("stderr %q", r.stderr)
	}

	// A directory where the file should be: unreadable and unwritable, both said.
	dirAsFile := t.TempDir()
	r = f.run(t, cacheArgs(dirAsFile)...)
	if r.code != 0 || !strings.Contains(r.stdout, `"AccessKeyId":"ASIA2"`) || !strings.Contains(r.stderr, "not a regular file") ||
		!strings.Contains(r.stderr, "credential not cached") || strings.Count(r.stderr, "\n") != 2 {
		t.Errorf("directory as cache file: %+v", r)
	}
}

func TestTokensAreNotCached(t *testing.T) {
	f := newFakeBroker()
	f.token = true
	file := filepath.Join(t.TempDir(), "token.json")
	args := []string{"--broker", "b:1", "--svid-dir", "d", "--profile", "dev-token", "--cache-file", file}
	for i := 1; i <= 2; i++ {
		r := f.run(t, args...)
		if r.code != 0 || f.calls != i || !strings.Contains(r.stdout, fmt.Sprintf(`"token":"tok%d"`, i)) || !strings.Contains(r.stderr, "only AWS credentials are cached") {
			t.Fatalf("token request %d: %+v, %d broker calls", i, r, f.calls)
		}
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("a token was cached: %v", err)
	}
}

func TestFailuresAreOneLine(t *testing.T) {
	f := newFakeBroker()
	file := filepath.Join(t.TempDir(), "capa.json")
	if err := os.WriteFile(file, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.err = errors.New("permission denied: no policy rule matches the caller")
	r := f.run(t, cacheArgs(file)...)
	if r.code != 1 || r.stdout != "" || r.stderr != "credbroker-credential-process: permission denied: no policy rule matches the caller\n" {
		t.Errorf("broker refusal with an unusable cache: %+v", r)
	}
	if b, _ := os.ReadFile(file); string(b) != "garbage" {
		t.Errorf("a failed request changed the cache file: %q", b)
	}

	// --format aws on a token profile.
	f.err, f.token = nil, true
	r = f.run(t, cacheArgs(file, "--profile", "dev-token")...)
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "credbroker-credential-process: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "use --format json") {
		t.Errorf("token profile in aws format: %+v", r)
	}

	// stdout closed under us.
	f.token = false
	var errb bytes.Buffer
	code := command{stdout: failingWriter{}, stderr: &errb, now: f.clock.Now, issue: f.issue}.run(context.Background(), cacheArgs(filepath.Join(t.TempDir(), "c.json")))
	if code != 1 || errb.String() != "credbroker-credential-process: writing the credential: broken pipe\n" {
		t.Errorf("stdout write failure: exit %d, stderr %q", code, errb.String())
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestExitStatusFollowsTheReason: a refusal that retrying cannot overcome
// exits 1, a temporary one 3, decided by the broker's ErrorInfo reason.
func TestExitStatusFollowsTheReason(t *testing.T) {
	refusal := func(code codes.Code, reason credbrokerv1.ErrorReason) error {
		st, err := status.New(code, "refused").WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: brokerclient.ErrorDomain})
		if err != nil {
			t.Fatal(err)
		}
		return brokerError{st.Err()}
	}
	for _, tc := range []struct {
		err  error
		code int
	}{
		{refusal(codes.PermissionDenied, credbrokerv1.ErrorReason_POLICY_DENIED), 1},
		{refusal(codes.InvalidArgument, credbrokerv1.ErrorReason_UNKNOWN_PROFILE), 1},
		{refusal(codes.PermissionDenied, credbrokerv1.ErrorReason_NODE_EVICTED), 1},
		{refusal(codes.ResourceExhausted, credbrokerv1.ErrorReason_QUOTA_EXHAUSTED), exitTemporary},
		{refusal(codes.ResourceExhausted, credbrokerv1.ErrorReason_RATE_LIMITED), exitTemporary},
		{refusal(codes.Unavailable, credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE), exitTemporary},
		{refusal(codes.FailedPrecondition, credbrokerv1.ErrorReason_APPROVAL_REQUIRED), exitTemporary},
		{brokerError{status.Error(codes.Unavailable, "connection refused")}, exitTemporary},
	} {
		f := newFakeBroker()
		f.err = tc.err
		r := f.run(t, "--broker", "b:1", "--svid-dir", t.TempDir(), "--profile", "capa")
		want := "[" + brokerclient.Reason(tc.err).String() + "]"
		if brokerclient.Reason(tc.err) == credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
			want = "unavailable"
		}
		if r.code != tc.code || !strings.Contains(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit %d naming %s", tc.err, r.code, r.stderr, tc.code, want)
		}
	}
}

// TestCachedCredentialIsCheckedForRevocation: a cached credential is handed
// out only when the broker says no revocation covers it; a revoked one is
// replaced by a new one from the broker, an unreachable broker leaves the
// cached one in use (with a warning), and a check that fails otherwise asks
// the broker afresh.
func TestCachedCredentialIsCheckedForRevocation(t *testing.T) {
	f := newFakeBroker()
	file := filepath.Join(t.TempDir(), "capa.json")
	var checked []string
	var answer func() (string, error)
	run := func() invocation {
		t.Helper()
		var out, errb bytes.Buffer
		check := func(_ context.Context, _ options, id string) (string, error) {
			checked = append(checked, id)
			return answer()
		}
		code := command{stdout: &out, stderr: &errb, now: f.clock.Now, issue: f.issue, check: check}.run(context.Background(), cacheArgs(file))
		return invocation{code, out.String(), errb.String()}
	}
	answer = func() (string, error) { return "", nil }
	if r := run(); r.code != 0 || len(checked) != 0 || f.calls != 1 {
		t.Fatalf("first (nothing cached, nothing to check): %+v, checked %v", r, checked)
	}
	if r := run(); r.code != 0 || !strings.Contains(r.stdout, "ASIA1") || !slices.Equal(checked, []string{"id1"}) || f.calls != 1 {
		t.Fatalf("cached, not revoked: %+v, checked %v, %d calls", r, checked, f.calls)
	}
	answer = func() (string, error) { return "revocation rev-1 by admin: leaked", nil }
	r := run()
	if r.code != 0 || !strings.Contains(r.stdout, "ASIA2") || f.calls != 2 || !strings.Contains(r.stderr, "rev-1") {
		t.Fatalf("cached, revoked: %+v, %d calls; want a new credential and a warning naming the revocation", r, f.calls)
	}
	// Revoked while the broker refuses a new one: the revoked credential is
	// not left in the cache file.
	answer = func() (string, error) { return "revocation rev-2 by admin: pod compromised", nil }
	f.err = status.Error(codes.FailedPrecondition, "identity revoked")
	if r := run(); r.code != 1 || r.stdout != "" {
		t.Fatalf("cached, revoked, refused: %+v", r)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the revoked credential is still in the cache file: %v", err)
	}
	f.err = nil
	if r := run(); r.code != 0 || !strings.Contains(r.stdout, "ASIA4") { // ASIA3 was the refused call
		t.Fatalf("after the lift: %+v", r)
	}
	answer = func() (string, error) { return "", status.Error(codes.Unavailable, "connection refused") }
	if r := run(); r.code != 0 || !strings.Contains(r.stdout, "ASIA4") || !strings.Contains(r.stderr, "could not check") {
		t.Fatalf("broker unreachable: %+v, %d calls; want the cached credential with a warning", r, f.calls)
	}
	answer = func() (string, error) { return "", status.Error(codes.ResourceExhausted, "too many watches") }
	if r := run(); r.code != 0 || !strings.Contains(r.stdout, "ASIA5") {
		t.Fatalf("check refused: %+v, %d calls; want a new credential", r, f.calls)
	}
}

// approvalRefusal is the broker's APPROVAL_REQUIRED refusal of approval id.
func approvalRefusal(t *testing.T, id string) error {
	t.Helper()
	st, err := status.New(codes.FailedPrecondition, "profile \"capa\" needs the approval of 2 distinct admins other than the requester; approval "+id+
		" has 0 of 2. Ask an admin to run: credbrokerctl approvals approve "+id).WithDetails(&errdetails.ErrorInfo{
		Reason: "APPROVAL_REQUIRED", Domain: "credbroker.dev", Metadata: map[string]string{"approval_id": id}})
	if err != nil {
		t.Fatal(err)
	}
	return brokerError{st.Err()}
}

// TestWaitForApproval: without --wait-approval a request waiting for
// approval fails at once with exit 3 and says who can approve how; with it,
// the request is repeated (backoff on the injected clock) until it is
// served, and the wait is announced once; a wait that runs out exits 3.
func TestWaitForApproval(t *testing.T) {
	f := newFakeBroker()
	refusal := approvalRefusal(t, "ap-1")
	pending := 3
	issueFn := func(ctx context.Context, o options) (*credbrokerv1.Credential, error) {
		if pending > 0 {
			pending--
			f.calls++
			return nil, refusal
		}
		return f.issue(ctx, o)
	}
	var slept []time.Duration
	sleep := func(_ context.Context, d time.Duration) error {
		slept = append(slept, d)
		f.clock.Advance(d)
		return nil
	}
	runWith := func(args ...string) invocation {
		var out, errb bytes.Buffer
		code := command{stdout: &out, stderr: &errb, now: f.clock.Now, issue: issueFn, sleep: sleep}.run(context.Background(), args)
		return invocation{code, out.String(), errb.String()}
	}
	base := []string{"--broker", "broker:8443", "--svid-dir", "/run/svid", "--profile", "capa", "--format", "aws"}

	got := runWith(base...)
	if got.code != exitTemporary || !strings.Contains(got.stderr, "credbrokerctl approvals approve ap-1") || !strings.Contains(got.stderr, "[APPROVAL_REQUIRED]") {
		t.Fatalf("without waiting: %+v; want exit 3 and how to approve", got)
	}
	pending = 3
	got = runWith(append(base, "--wait-approval", "10m")...)
	if got.code != 0 || !strings.Contains(got.stdout, `"AccessKeyId"`) {
		t.Fatalf("waiting: %+v; want the credential once approved", got)
	}
	if n := strings.Count(got.stderr, "waiting until"); n != 1 || !strings.Contains(got.stderr, "approval ap-1") {
		t.Fatalf("stderr %q: want one line saying what it waits for", got.stderr)
	}
	if len(slept) != 3 || slept[0] < time.Second || slept[2] <= slept[0]/2 {
		t.Fatalf("waits %v; want three backoff waits", slept)
	}
	pending, slept = 1000, nil
	got = runWith(append(base, "--wait-approval", "1m")...)
	if got.code != exitTemporary || !strings.Contains(got.stderr, "[APPROVAL_REQUIRED]") {
		t.Fatalf("wait ran out: %+v; want exit 3 with the refusal", got)
	}
	var total time.Duration
	for _, d := range slept {
		total += d
	}
	if total != time.Minute {
		t.Fatalf("waited %s in all, want exactly the 1m asked for", total)
	}
}
