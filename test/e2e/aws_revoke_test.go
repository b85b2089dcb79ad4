package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/test/iamfront"
)

const demoController = "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller"

// TestAWSRevocationReachesTheRole: with the real binaries, a credential
// minted at MinIO's STS is revoked through credbrokerctl; -o aws-policy
// prints the deny for its session (by the issuance id the broker sent STS as
// a session tag), and the broker puts the same document on the profile's
// role through the real SDK's IAM client (recorded by an IAM front); an
// identity revocation joins it; lifting both deletes the policy; each write
// is on record.
func TestAWSRevocationReachesTheRole(t *testing.T) {
	t.Parallel()
	front := iamfront.Start()
	defer front.Close()
	b := startAWSBrokerIAM(t, nil, front.URL())
	creds, err := b.sdkConfig(t, clusterA).Credentials.Retrieve(context.Background())
	if err != nil {
		t.Fatalf("the SDK's credential chain: %v", err)
	}
	r := b.ctl(t, "-o", "json", "issuances", "list")
	var list []struct {
		IssuanceID  string `json:"issuance_id"`
		UpstreamRef string `json:"upstream_ref"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || list[0].UpstreamRef != creds.AccessKeyID {
		t.Fatalf("issuances list: %q (%v)", r.stdout, err)
	}
	issuance := list[0].IssuanceID
	session := iamfront.Session{SourceIdentity: awssts.SourceIdentity(demoController), IssuedAt: time.Now().Add(-time.Minute),
		Tags: map[string]string{awssts.TagIssuanceID: issuance, awssts.TagSPIFFEID: demoController, awssts.TagClusterNamespace: "team-a", awssts.TagClusterName: "alpha"}}

	r = b.ctl(t, "revoke", "issuance", issuance, "--reason", "leaked", "-o", "aws-policy")
	if r.code != 0 {
		t.Fatalf("revoke: %s%s", r.stdout, r.stderr)
	}
	printed := r.stdout
	if d, err := iamfront.Denies(printed, session); err != nil || !d {
		t.Fatalf("the printed policy does not deny the revoked session (%v):\n%s", err, printed)
	}
	waitForRolePolicy(t, front, compactJSON(t, printed))

	if r := b.ctl(t, "revoke", "identity", demoController, "--reason", "pod compromised"); r.code != 0 || !strings.Contains(r.stdout, "aws: the broker is adding its deny") {
		t.Fatalf("revoke identity: %d %s%s", r.code, r.stdout, r.stderr)
	}
	r = b.ctl(t, "revoke", "list", "-o", "aws-policy")
	if r.code != 0 || strings.Count(r.stdout, "Deny") != 2 {
		t.Fatalf("revoke list -o aws-policy: %s%s", r.stdout, r.stderr)
	}
	doc := waitForRolePolicy(t, front, compactJSON(t, r.stdout))
	other := session
	other.Tags = map[string]string{awssts.TagIssuanceID: "0190f0a0-0000-7000-8000-0000000000ff"}
	if d, _ := iamfront.Denies(doc, other); !d {
		t.Fatalf("another session of the revoked identity is not denied:\n%s", doc)
	}

	for _, rv := range revocationIDs(t, b) {
		if r := b.ctl(t, "revoke", "lift", rv); r.code != 0 {
			t.Fatalf("lift: %s%s", r.stdout, r.stderr)
		}
	}
	waitForRolePolicy(t, front, "")
	// The front holds the change as soon as IAM is called; the broker puts
	// the outcome on record once the call has answered, then logs it.
	b.stderr.waitFor(t, `msg="aws revocation policy applied" role=arn:aws:iam::123456789012:role/capa-controller policy=credbroker-revocations action=delete`, 60*time.Second)
	if calls := front.Calls(); calls[len(calls)-1].Action != "DeleteRolePolicy" {
		t.Fatalf("last IAM call %+v, want DeleteRolePolicy", calls[len(calls)-1])
	}
	r = b.ctl(t, "audit", "export")
	if !strings.Contains(r.stdout, "aws_revocation_applied: put credbroker-revocations on role arn:aws:iam::123456789012:role/capa-controller") ||
		!strings.Contains(r.stdout, "aws_revocation_applied: delete") {
		t.Errorf("the policy writes are not on record:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, creds.SecretAccessKey) || strings.Contains(b.stderr.String(), creds.SecretAccessKey) {
		t.Error("a secret key reached the audit trail or the log")
	}
}

// waitForRolePolicy waits until the capa role's revocation policy is want
// ("" for none) and returns it.
func waitForRolePolicy(t *testing.T, front *iamfront.Front, want string) string {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		doc, _ := front.Policy("capa-controller", "credbroker-revocations")
		if doc == want {
			return doc
		}
		select {
		case <-front.Changed():
		case <-deadline:
			t.Fatalf("the role's policy is\n%s\nwant\n%s\ncalls %+v", doc, want, front.Calls())
		}
	}
}

func compactJSON(t *testing.T, doc string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(doc)); err != nil {
		t.Fatalf("%v: %q", err, doc)
	}
	return b.String()
}

func revocationIDs(t *testing.T, b *awsBroker) []string {
	t.Helper()
	r := b.ctl(t, "-o", "json", "revoke", "list")
	var list []struct {
		ID string `json:"revocation_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("revoke list: %q (%v)", r.stdout, err)
	}
	var out []string
	for _, rv := range list {
		out = append(out, rv.ID)
	}
	return out
}
