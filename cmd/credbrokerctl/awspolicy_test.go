package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/test/iamfront"
)

// awsDevConfig is the dev broker with an AWS STS profile besides dev-token,
// whose role's deny policy the broker keeps through the IAM endpoint %s.
// No STS call is made: identity and cluster revocations need none, and the
// broker's AWS credentials come from the environment.
const awsDevConfig = `trust_domain: dev.credbroker.test
admin:
  spiffe_ids: [spiffe://dev.credbroker.test/credbroker/admin]
issuers:
  local: {type: jwt}
  aws:
    type: aws_sts
    aws_sts: {region: us-east-1, endpoint: "http://127.0.0.1:1", credentials: default, iam_endpoint: "%s"}
profiles:
  dev-token: {issuer: local, default_ttl: 5m, max_ttl: 15m, cluster: optional}
  capa:
    issuer: aws
    max_ttl: 1h
    cluster: none
    aws:
      role_arn: "arn:aws:iam::123456789012:role/capa-controller"
      revocation: {apply: true}
policy:
  - id: spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller
    profiles: [dev-token, capa]
`

// sessionOf is the request context of an STS session the broker minted for
// caller (and cluster ns/name, if any) at issued.
func sessionOf(t *testing.T, caller, cluster string, issued time.Time) iamfront.Session {
	t.Helper()
	return iamfront.SessionOf(t, caller, cluster, "0190f0a0-0000-7000-8000-0000000000aa", issued)
}

func wantDenied(t *testing.T, doc string, s iamfront.Session, want bool) {
	t.Helper()
	got, err := iamfront.Denies(doc, s)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("session %+v: denied = %v, want %v\n%s", s, got, want, doc)
	}
}

// TestRevokePrintsTheAWSDenyPolicy: revoke identity|cluster -o aws-policy
// prints, alone on stdout, the broker's deny document for that revocation,
// which passes the session policy checker and denies the sessions it covers
// issued before the revocation, not later ones nor others; revoke list -o
// aws-policy prints the one for everything in effect; other commands refuse
// the format.
func TestRevokePrintsTheAWSDenyPolicy(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	cfg := filepath.Join(t.TempDir(), "aws.yaml")
	front := iamfront.Start()
	defer front.Close()
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(awsDevConfig, front.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startDevBrokerWith(t, cfg)
	before := time.Now().Add(-time.Minute)
	later := time.Now().Add(time.Hour)

	// The table output says where the broker applies it.
	r := ctl(t, b.socket, "revoke", "cluster", "team-z/gone")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "aws: the broker is adding its deny to policy credbroker-revocations of role arn:aws:iam::123456789012:role/capa-controller") {
		t.Errorf("revoke table output says nothing of AWS:\n%s", r.stdout)
	}
	for _, rv := range ctlJSON[[]revocationJSON](t, b.socket, "revoke", "list") {
		wantCode(t, ctl(t, b.socket, "revoke", "lift", rv.RevocationID), 0)
	}

	r = ctl(t, b.socket, "revoke", "identity", devController, "--reason", "pod compromised", "-o", "aws-policy")
	wantCode(t, r, 0)
	if err := awssts.CheckPolicyDocument(r.stdout); err != nil {
		t.Fatalf("identity policy: %v\n%s", err, r.stdout)
	}
	if !strings.Contains(r.stderr, "revoked identity "+devController) || !strings.Contains(r.stderr, "1 revocations") {
		t.Errorf("stderr: %s", r.stderr)
	}
	wantDenied(t, r.stdout, sessionOf(t, devController, "", before), true)
	wantDenied(t, r.stdout, sessionOf(t, devController, "", later), false)
	wantDenied(t, r.stdout, sessionOf(t, "spiffe://dev.credbroker.test/ns/capi-system/sa/other", "", before), false)

	r = ctl(t, b.socket, "revoke", "cluster", "team-a/prod", "-o", "aws-policy")
	wantCode(t, r, 0)
	wantDenied(t, r.stdout, sessionOf(t, "spiffe://dev.credbroker.test/ns/capi-system/sa/other", "team-a/prod", before), true)
	wantDenied(t, r.stdout, sessionOf(t, devController, "", before), false) // this document is the cluster's alone

	r = ctl(t, b.socket, "revoke", "list", "-o", "aws-policy")
	wantCode(t, r, 0)
	if err := awssts.CheckPolicyDocument(r.stdout); err != nil {
		t.Fatalf("list policy: %v\n%s", err, r.stdout)
	}
	wantDenied(t, r.stdout, sessionOf(t, devController, "", before), true)
	wantDenied(t, r.stdout, sessionOf(t, "spiffe://dev.credbroker.test/ns/capi-system/sa/other", "team-a/prod", before), true)
	wantDenied(t, r.stdout, sessionOf(t, "spiffe://dev.credbroker.test/ns/capi-system/sa/other", "team-b/prod", before), false)

	// The broker keeps the same document on the role itself.
	for {
		doc, ok := front.Policy("capa-controller", "credbroker-revocations")
		if ok && compact(t, doc) == compact(t, r.stdout) {
			break
		}
		select {
		case <-front.Changed():
		case <-time.After(30 * time.Second):
			t.Fatalf("the role's policy never became the listed one; calls %+v", front.Calls())
		}
	}
	// The applier records its status right after IAM answers: ask until
	// it has.
	for deadline := time.Now().Add(30 * time.Second); ; {
		r = ctl(t, b.socket, "revoke", "list", "-o", "aws-policy")
		if strings.Contains(r.stderr, "role arn:aws:iam::123456789012:role/capa-controller policy credbroker-revocations: in sync; 2 revocations") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status on stderr: %s", r.stderr)
		}
	}

	for _, args := range [][]string{{"issuances", "list"}, {"revoke", "lift", "x"}, {"clusters", "list"}} {
		if r := ctl(t, b.socket, append(args, "-o", "aws-policy")...); r.code != 2 || !strings.Contains(r.stderr, "only for revoke") {
			t.Errorf("%v -o aws-policy: code %d, %s", args, r.code, r.stderr)
		}
	}
}

// TestRevokeAWSPolicyWithoutAWS: on a broker with no AWS STS issuer the
// revocation is made and said so, with no document; revoke list -o
// aws-policy is refused as misconfigured.
func TestRevokeAWSPolicyWithoutAWS(t *testing.T) {
	b := startDevBroker(t)
	r := ctl(t, b.socket, "revoke", "cluster", "team-a/prod", "-o", "aws-policy")
	wantCode(t, r, 0)
	if r.stdout != "" || !strings.Contains(r.stderr, "revoked cluster team-a/prod") || !strings.Contains(r.stderr, "no AWS deny policy") {
		t.Errorf("stdout %q, stderr %q", r.stdout, r.stderr)
	}
	if r := ctl(t, b.socket, "revoke", "list", "-o", "aws-policy"); r.code == 0 || !strings.Contains(r.stderr, "no AWS STS issuer") {
		t.Errorf("revoke list -o aws-policy without AWS: code %d, %s", r.code, r.stderr)
	}
}

func compact(t *testing.T, doc string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
