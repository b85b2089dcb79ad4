package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
)

// waitFrom waits up to timeout for s to appear in the output written after
// the first from bytes, woken by each write (no polling), and returns the
// output's length once it has.
func (l *lockedBuffer) waitFrom(t *testing.T, from int, s string, timeout time.Duration) int {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		if i := strings.Index(l.b.String()[from:], s); i >= 0 {
			n := l.b.Len()
			l.mu.Unlock()
			return n
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%q did not appear within %v in:\n%s", s, timeout, l.String()[from:])
		}
	}
}

func (l *lockedBuffer) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// endpointAnswer is one answer of the sidecar's credentials endpoint.
type endpointAnswer struct {
	status int
	cred   containerCred
	code   string
	msg    string
}

func ask(t *testing.T, url, token string) endpointAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := endpointAnswer{status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &a.cred); err != nil {
			t.Fatal(err)
		}
		return a
	}
	var e struct{ Code, Message string }
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("HTTP %d with a body the SDKs cannot read: %q", resp.StatusCode, body)
	}
	a.code, a.msg = e.Code, e.Message
	return a
}

var refreshedRE = regexp.MustCompile(`msg=refreshed credential=(\S+) access_key_id=(\S+) issuance_id=(\S+)`)

// issuanceOfServed returns the issuance id the sidecar's log gives for the
// credential with access key id key.
func issuanceOfServed(t *testing.T, s *sidecarProc, key string) string {
	t.Helper()
	for _, m := range refreshedRE.FindAllStringSubmatch(s.stderr.String(), -1) {
		if m[2] == key {
			return m[3]
		}
	}
	t.Fatalf("the sidecar never logged the issuance of %s:\n%s", key, s.stderr.String())
	return ""
}

// TestSidecarStopsServingRevokedCredentials drives the real broker binary,
// the real sidecar binary and the AWS SDK for Go v2's default credential
// chain (container credentials provider) against MinIO's STS: revoking one
// issuance replaces only that credential; revoking the sidecar's identity
// makes the endpoint refuse at once, with a 403 the SDK shows naming the
// revocation; lifting it serves a fresh credential again. The sidecar learns
// of each from its revocation watch: the test waits on the sidecar's log
// lines, never on time.
func TestSidecarStopsServingRevokedCredentials(t *testing.T) {
	b := startAWSBroker(t)
	s := startSidecar(t, b, filepath.Join(b.dataDir, "dev", "controller"), "--credential", "beta=capa@team-b/beta")
	const watchTimeout = 2 * time.Minute // hang guard only
	s.stderr.waitFor(t, `msg="watching revocations" issuances=2`, watchTimeout)
	betaURL := "http://" + s.addr + "/v1/credentials/beta"

	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", s.url())
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", s.tokenFile)
	// sdk is a fresh SDK configuration, as a new controller process would
	// load it (the SDK caches a credential it retrieved until near expiry).
	sdk := func() (string, error) {
		cfg, err := awsconfig.LoadDefaultConfig(context.Background(),
			awsconfig.WithSharedConfigFiles([]string{filepath.Join(t.TempDir(), "none")}),
			awsconfig.WithSharedCredentialsFiles([]string{filepath.Join(t.TempDir(), "none")}),
			awsconfig.WithRegion(b.minio.Region))
		if err != nil {
			t.Fatal(err)
		}
		c, err := cfg.Credentials.Retrieve(context.Background())
		if err == nil {
			if code := b.put(t, cfg.Credentials, prefixA); code != "" {
				t.Errorf("the served credential does not work at S3: %s", code)
			}
		}
		return c.AccessKeyID, err
	}
	first, err := sdk()
	if err != nil {
		t.Fatalf("the SDK's chain through the sidecar: %v", err)
	}
	beta := ask(t, betaURL, s.token)
	if beta.status != http.StatusOK {
		t.Fatalf("beta: HTTP %d %s", beta.status, beta.msg)
	}

	// One issuance revoked: that credential is dropped and replaced by a
	// fresh one; the other is untouched.
	mark := s.stderr.len()
	if r := b.ctl(t, "revoke", "issuance", issuanceOfServed(t, s, beta.cred.AccessKeyID), "--reason", "leaked in a CI log"); r.code != 0 {
		t.Fatalf("revoke issuance: %s%s", r.stdout, r.stderr)
	}
	mark = s.stderr.waitFrom(t, mark, `msg="credential revoked; no longer served" credential=beta`, watchTimeout)
	if a := ask(t, betaURL, s.token); a.status != http.StatusOK || a.cred.AccessKeyID == beta.cred.AccessKeyID {
		t.Fatalf("beta after its issuance was revoked: HTTP %d %s, key %s (revoked %s)", a.status, a.msg, a.cred.AccessKeyID, beta.cred.AccessKeyID)
	}
	if a := ask(t, s.url(), s.token); a.status != http.StatusOK || a.cred.AccessKeyID != first {
		t.Fatalf("default after another issuance was revoked: HTTP %d %s, key %s, want %s still", a.status, a.msg, a.cred.AccessKeyID, first)
	}

	// The identity revoked: the sidecar stops serving every credential.
	r := b.ctl(t, "-o", "json", "revoke", "identity", "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller", "--reason", "pod compromised")
	var rev struct {
		Revocation struct {
			RevocationID string `json:"revocation_id"`
		} `json:"revocation"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rev); err != nil || rev.Revocation.RevocationID == "" {
		t.Fatalf("revoke identity: %q %q (%v)", r.stdout, r.stderr, err)
	}
	id := rev.Revocation.RevocationID
	s.stderr.waitFrom(t, mark, `msg="credential revoked; no longer served" credential=default revocation_id=`+id, watchTimeout)
	mark = s.stderr.waitFrom(t, mark, `msg="credential revoked; no longer served" credential=beta revocation_id=`+id, watchTimeout)
	for _, url := range []string{s.url(), betaURL} {
		a := ask(t, url, s.token)
		if a.status != http.StatusForbidden || a.code != "CredentialRevoked" || !strings.Contains(a.msg, id) || !strings.Contains(a.msg, "pod compromised") {
			t.Fatalf("%s after the identity was revoked: HTTP %d %s %q", url, a.status, a.code, a.msg)
		}
	}
	_, err = sdk()
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "CredentialRevoked" || !strings.Contains(err.Error(), id) {
		t.Fatalf("the SDK after the revocation: %v; want CredentialRevoked naming revocation %s", err, id)
	}
	// The identity's own requests are refused naming the revocation.
	cp := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"), "--profile", "capa", "--cluster", clusterA, "--format", "aws")
	if cp.code == 0 || !strings.Contains(cp.stderr, id) || !strings.Contains(cp.stderr, "[REVOKED]") {
		t.Fatalf("a request of the revoked identity: exit %d, %q", cp.code, cp.stderr)
	}

	// Lifted: the sidecar is told, mints afresh, and serves again.
	if r := b.ctl(t, "revoke", "lift", id); r.code != 0 {
		t.Fatalf("revoke lift: %s%s", r.stdout, r.stderr)
	}
	s.stderr.waitFrom(t, mark, `msg=refreshed credential=default`, watchTimeout)
	after, err := sdk()
	if err != nil || after == first {
		t.Fatalf("the SDK after the lift: key %s (revoked %s), %v", after, first, err)
	}
}

// TestCredentialProcessChecksItsCacheForRevocation: the real
// credbroker-credential-process with --cache-file against the real broker
// and MinIO's STS: a cached credential is printed again while nothing
// revokes it, not once its issuance is revoked (a new one is printed), and
// not once the identity is revoked (the run fails naming the revocation).
func TestCredentialProcessChecksItsCacheForRevocation(t *testing.T) {
	t.Parallel()
	b := startAWSBroker(t)
	cacheFile := filepath.Join(t.TempDir(), "cache", "capa.json")
	cp := func() result {
		t.Helper()
		return runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"),
			"--profile", "capa", "--cluster", clusterA, "--format", "json", "--cache-file", cacheFile)
	}
	key := func(r result) (string, string) {
		t.Helper()
		var c struct {
			IssuanceID  string `json:"issuance_id"`
			AccessKeyID string `json:"access_key_id"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &c) != nil || c.AccessKeyID == "" {
			t.Fatalf("credential process: exit %d, %q %q", r.code, r.stdout, r.stderr)
		}
		return c.IssuanceID, c.AccessKeyID
	}
	issuance, first := key(cp())
	if _, again := key(cp()); again != first {
		t.Fatalf("second run printed %s, want the cached %s", again, first)
	}
	if r := b.ctl(t, "revoke", "issuance", issuance, "--reason", "leaked in a CI log"); r.code != 0 {
		t.Fatalf("revoke issuance: %s%s", r.stdout, r.stderr)
	}
	r := cp()
	if _, fresh := key(r); fresh == first || !strings.Contains(r.stderr, "revoked") {
		t.Fatalf("after the issuance was revoked: printed %s (revoked %s), stderr %q", fresh, first, r.stderr)
	}
	rr := b.ctl(t, "-o", "json", "revoke", "identity", "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller", "--reason", "pod compromised")
	var rev struct {
		Revocation struct {
			RevocationID string `json:"revocation_id"`
		} `json:"revocation"`
	}
	if err := json.Unmarshal([]byte(rr.stdout), &rev); err != nil || rev.Revocation.RevocationID == "" {
		t.Fatalf("revoke identity: %q %q (%v)", rr.stdout, rr.stderr, err)
	}
	if r := cp(); r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, rev.Revocation.RevocationID) || !strings.Contains(r.stderr, "[REVOKED]") {
		t.Fatalf("after the identity was revoked: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
