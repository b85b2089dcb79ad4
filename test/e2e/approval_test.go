package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/credbroker/credbroker/test/miniotest"
)

// startApprovalBroker is a dev broker whose profile capa (MinIO STS, as in
// startAWSBroker) needs two approvals within an hour, with two local token
// profiles that need approval too: break-glass (the admin identity may ask
// for it) and short (a 5s window, to watch one expire).
func startApprovalBroker(t *testing.T) *awsBroker {
	t.Helper()
	m := miniotest.Start(t)
	m.CreateBucket(t, bucket)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "approval.yaml")
	yaml := fmt.Sprintf(`trust_domain: dev.credbroker.test
admin:
  spiffe_ids: [spiffe://dev.credbroker.test/credbroker/admin]
  unix_uids: [%d]
issuers:
  local: {type: jwt}
  aws:
    type: aws_sts
    aws_sts: {region: %s, endpoint: %s, credentials: default}
profiles:
  capa:
    issuer: aws
    default_ttl: 15m
    max_ttl: 1h
    cluster: required
    approval: {approvers: 2, window: 1h}
    aws:
      role_arn: arn:aws:iam::123456789012:role/capa-controller
      session_policy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: ["s3:GetObject", "s3:PutObject"]
            Resource: ["arn:aws:s3:::capi/${cluster.namespace}/${cluster.name}/*"]
  break-glass: {issuer: local, max_ttl: 15m, cluster: none, approval: {approvers: 2, window: 1h}}
  short: {issuer: local, max_ttl: 15m, cluster: none, approval: {approvers: 2, window: 5s}}
policy:
  - id: spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller
    profiles: [capa]
    clusters: ["*"]
  - id: spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller
    profiles: [break-glass, short]
  - id: spiffe://dev.credbroker.test/credbroker/admin
    profiles: [break-glass]
`, os.Getuid(), m.Region, m.Endpoint)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runTool(t, "credbroker", "check-config", cfg); r.code != 0 {
		t.Fatalf("check-config: %s%s", r.stdout, r.stderr)
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"AWS_ACCESS_KEY_ID=" + m.RootUser, "AWS_SECRET_ACCESS_KEY=" + m.RootPassword,
		"AWS_EC2_METADATA_DISABLED=true",
	}
	return &awsBroker{broker: startBrokerWith(t, filepath.Join(dir, "data"), env, "--config", cfg), minio: m}
}

var approvalIDRE = regexp.MustCompile(`approval_id=(\S+)`)

// ask runs credential-process as svid ("controller" or "admin") for
// profile (and cluster A for capa).
func (b *awsBroker) ask(t *testing.T, svid, profile string) result {
	t.Helper()
	args := []string{"--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", svid), "--profile", profile, "--format", "json"}
	if profile == "capa" {
		args = append(args, "--cluster", clusterA)
	}
	return runTool(t, "credbroker-credential-process", args...)
}

// waiting checks that r is credential-process waiting for approval (exit
// 3, the approval named with the command to approve it) and returns the id.
func waiting(t *testing.T, r result) string {
	t.Helper()
	m := regexp.MustCompile(`credbrokerctl approvals approve ([0-9a-f-]+)`).FindStringSubmatch(r.stderr)
	if r.code != 3 || m == nil || !strings.Contains(r.stderr, "[APPROVAL_REQUIRED]") {
		t.Fatalf("credential-process: exit %d, %q; want exit 3 naming the approval and how to approve it", r.code, r.stderr)
	}
	return m[1]
}

// adminCtl runs credbrokerctl with the admin SVID over mTLS: the other
// admin principal besides the socket's uid.
func (b *awsBroker) adminCtl(t *testing.T, args ...string) result {
	t.Helper()
	return runTool(t, "credbrokerctl", append([]string{"--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "admin")}, args...)...)
}

// approval reads one approval as JSON.
func (b *awsBroker) approval(t *testing.T, id string) map[string]any {
	t.Helper()
	r := b.ctl(t, "-o", "json", "approvals", "show", id)
	var out struct{ Approval map[string]any }
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("approvals show %s: exit %d %q %q", id, r.code, r.stdout, r.stderr)
	}
	return out.Approval
}

// TestTwoPersonApprovalEndToEnd: with the real binaries, the sidecar and
// credential-process are blocked with one approval id and say who can
// approve how; one admin approving twice counts once; the requester cannot
// approve its own request; a second admin (the other principal) grants it
// and the sidecar, retrying on its own, serves the credential, which works
// at MinIO; the approval is used once; a denial is told to the requester; a
// short window expires; credential-process --wait-approval waits for a
// grant and prints the credential; every step is on record.
func TestTwoPersonApprovalEndToEnd(t *testing.T) {
	t.Parallel()
	b := startApprovalBroker(t)
	s := startSidecar(t, b, filepath.Join(b.dataDir, "dev", "controller"))
	s.stderr.waitFor(t, "waiting for two-person approval", 30*time.Second)
	m := approvalIDRE.FindStringSubmatch(s.stderr.String())
	if m == nil {
		t.Fatalf("the sidecar does not name the approval:\n%s", s.stderr.String())
	}
	id := m[1]
	if !strings.Contains(s.stderr.String(), "credbrokerctl approvals approve "+id) {
		t.Fatalf("the sidecar does not say how to approve:\n%s", s.stderr.String())
	}
	if code, _ := fetch(t, s.url(), s.token); code != 503 {
		t.Fatalf("sidecar before approval: %d, want 503", code)
	}
	// The identical request from credential-process waits for the same one.
	if got := waiting(t, b.ask(t, "controller", "capa")); got != id {
		t.Fatalf("credential-process waits for %s, the sidecar for %s", got, id)
	}

	if r := b.ctl(t, "approvals", "approve", id); r.code != 0 || !strings.Contains(r.stdout, "needs 1 more") {
		t.Fatalf("first approval: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := b.ctl(t, "approvals", "approve", id); r.code != 0 || !strings.Contains(r.stdout, "approved "+id+" already") {
		t.Fatalf("the same admin again: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if a := b.approval(t, id); a["status"] != "APPROVAL_STATUS_PENDING" || len(a["approvals"].([]any)) != 1 {
		t.Fatalf("after one admin approved twice: %v", a)
	}
	if r := b.adminCtl(t, "approvals", "approve", id); r.code != 0 || !strings.Contains(r.stdout, "granted") {
		t.Fatalf("second admin: exit %d %q %q", r.code, r.stdout, r.stderr)
	}

	// The sidecar, retrying with backoff, gets and serves the credential.
	s.stderr.waitFor(t, "msg=refreshed", 90*time.Second)
	code, c := fetch(t, s.url(), s.token)
	if code != 200 || c.AccessKeyID == "" {
		t.Fatalf("sidecar after approval: %d %+v", code, c)
	}
	creds := credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.Token)
	if got := b.put(t, aws.NewCredentialsCache(creds), prefixA); got != "" {
		t.Fatalf("the approved credential at MinIO: %s", got)
	}
	a := b.approval(t, id)
	if a["status"] != "APPROVAL_STATUS_CONSUMED" || a["consumed_by"] == "" {
		t.Fatalf("after the sidecar's request: %v; want consumed", a)
	}
	// Single use: the identical request needs a new approval.
	next := waiting(t, b.ask(t, "controller", "capa"))
	if next == id {
		t.Fatal("the used approval was offered again")
	}

	// A denial is told to the requester, with who and why.
	if r := b.ctl(t, "approvals", "deny", next, "--reason", "no change ticket"); r.code != 0 {
		t.Fatalf("deny: %q %q", r.stdout, r.stderr)
	}
	if r := b.ask(t, "controller", "capa"); r.code != 1 || !strings.Contains(r.stderr, "[APPROVAL_DENIED]") || !strings.Contains(r.stderr, "no change ticket") {
		t.Fatalf("after the denial: exit %d %q", r.code, r.stderr)
	}

	// The requester cannot approve its own request, even as an admin.
	own := waiting(t, b.ask(t, "admin", "break-glass"))
	if r := b.adminCtl(t, "approvals", "approve", own); r.code == 0 || !strings.Contains(r.stderr, "never approve its own request") {
		t.Fatalf("self-approval: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if a := b.approval(t, own); len(a["approvals"].([]any)) != 0 {
		t.Fatalf("self-approval counted: %v", a)
	}

	// A 5s window: once it has passed the approval is expired and can no
	// longer be approved; the identical request opens a new one.
	short := waiting(t, b.ask(t, "controller", "short"))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for b.approval(t, short)["status"] != "APPROVAL_STATUS_EXPIRED" {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("approval %s not expired 30s into its 5s window: %v", short, b.approval(t, short))
		}
	}
	if r := b.ctl(t, "approvals", "approve", short); r.code == 0 || !strings.Contains(r.stderr, "expired") {
		t.Fatalf("approving an expired approval: exit %d %q", r.code, r.stderr)
	}
	if again := waiting(t, b.ask(t, "controller", "short")); again == short {
		t.Fatal("the expired approval was offered again")
	}

	// credential-process --wait-approval keeps asking, says once what it
	// waits for, and prints the credential once the approval is granted.
	wait := exec.Command(filepath.Join(binDir, "credbroker-credential-process"), "--broker", b.grpcAddr,
		"--svid-dir", filepath.Join(b.dataDir, "dev", "controller"), "--profile", "break-glass", "--format", "json", "--wait-approval", "2m")
	var waitOut bytes.Buffer
	waitErr := &lockedBuffer{}
	wait.Stdout, wait.Stderr = &waitOut, waitErr
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	waitErr.waitFor(t, "waiting until", 30*time.Second)
	m = regexp.MustCompile(`for approval ([0-9a-f-]+)`).FindStringSubmatch(waitErr.String())
	if m == nil {
		t.Fatalf("credential-process --wait-approval: %q", waitErr.String())
	}
	if r := b.ctl(t, "approvals", "approve", m[1]); r.code != 0 {
		t.Fatalf("approve %s: %q", m[1], r.stderr)
	}
	if r := b.adminCtl(t, "approvals", "approve", m[1]); r.code != 0 {
		t.Fatalf("approve %s: %q", m[1], r.stderr)
	}
	if err := wait.Wait(); err != nil || !strings.Contains(waitOut.String(), `"token"`) || strings.Count(waitErr.String(), "waiting until") != 1 {
		t.Fatalf("credential-process --wait-approval: %v, stdout %q, stderr %q", err, waitOut.String(), waitErr.String())
	}

	// Every step is on record, naming the principals; the chain verifies.
	r := b.ctl(t, "audit", "export")
	var steps []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var rec struct {
			IssuanceID string `json:"issuance_id"`
			Caller     string `json:"caller"`
			Decision   string `json:"decision"`
			Reason     string `json:"reason"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		if rec.IssuanceID == id || strings.Contains(rec.Reason, "approval "+id+" consumed") {
			steps = append(steps, rec.Decision+" "+rec.Caller)
		}
	}
	uid := fmt.Sprintf("unix:uid=%d", os.Getuid())
	want := []string{
		"approval_requested spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller",
		"approval_approved " + uid,
		"approval_approved spiffe://dev.credbroker.test/credbroker/admin",
		"approval_granted spiffe://dev.credbroker.test/credbroker/admin",
		"intent spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller",
		"issued spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller",
	}
	if strings.Join(steps, "\n") != strings.Join(want, "\n") {
		t.Fatalf("approval %s on record:\n%s\nwant:\n%s", id, strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(r.stdout, `"decision":"approval_denied"`) {
		t.Fatal("the denial is not on record")
	}
	if r := b.ctl(t, "audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify: %s%s", r.stdout, r.stderr)
	}
}
