package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/credbroker/credbroker/test/miniotest"
)

// awsBroker is a broker whose "capa" profile mints credentials at a real
// MinIO STS, with one prefix per workload cluster in one bucket.
type awsBroker struct {
	*broker
	minio *miniotest.Server
}

const (
	clusterA = "team-a/alpha"
	bucket   = "capi"
	prefixA  = "team-a/alpha/"
	prefixB  = "team-b/beta/"
)

func startAWSBroker(t *testing.T) *awsBroker {
	t.Helper()
	return startAWSBrokerVia(t, nil)
}

// startAWSBrokerVia is startAWSBroker with the broker's STS endpoint in front
// of MinIO's chosen by front (nil: MinIO itself).
func startAWSBrokerVia(t *testing.T, front func(minioURL string) string) *awsBroker {
	t.Helper()
	return startAWSBrokerIAM(t, front, "")
}

// startAWSBrokerIAM is startAWSBrokerVia with, when iamEndpoint is set,
// the capa profile's revocations kept on its role by the broker through
// that IAM endpoint (aws.revocation.apply).
func startAWSBrokerIAM(t *testing.T, front func(minioURL string) string, iamEndpoint string) *awsBroker {
	t.Helper()
	return startAWSBrokerConf(t, front, iamEndpoint, "", "")
}

// startAWSBrokerConf is startAWSBrokerIAM with issuerExtra added to the
// aws issuer's configuration (indented under it) and extra at the end of
// the file.
func startAWSBrokerConf(t *testing.T, front func(minioURL string) string, iamEndpoint, issuerExtra, extra string) *awsBroker {
	t.Helper()
	m := miniotest.Start(t)
	m.CreateBucket(t, bucket)
	stsEndpoint := m.Endpoint
	if front != nil {
		stsEndpoint = front(m.Endpoint)
	}
	var iamLine, applyLine string
	if iamEndpoint != "" {
		iamLine = "\n      iam_endpoint: " + iamEndpoint
		applyLine = "\n      revocation: {apply: true}"
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "aws.yaml")
	yaml := fmt.Sprintf(`trust_domain: dev.credbroker.test
admin:
  spiffe_ids: [spiffe://dev.credbroker.test/credbroker/admin]
issuers:
  aws:
    type: aws_sts
    aws_sts:
      region: %s
      endpoint: %s
      credentials: default%s%s
profiles:
  capa:
    issuer: aws
    default_ttl: 15m
    max_ttl: 1h
    cluster: required
    aws:
      role_arn: arn:aws:iam::123456789012:role/capa-controller%s
      session_policy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: ["s3:GetObject", "s3:PutObject"]
            Resource: ["arn:aws:s3:::capi/${cluster.namespace}/${cluster.name}/*"]
          - Effect: Allow
            Action: ["s3:ListBucket"]
            Resource: ["arn:aws:s3:::capi"]
            Condition:
              StringLike:
                "s3:prefix": ["${cluster.namespace}/${cluster.name}/*"]
policy:
  - id: spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller
    profiles: [capa]
    clusters: ["*"]
%s`, m.Region, stsEndpoint, iamLine, issuerExtra, applyLine, extra)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runTool(t, "credbroker", "check-config", cfg); r.code != 0 {
		t.Fatalf("check-config: %s%s", r.stdout, r.stderr)
	}
	// The broker's own AWS credentials come from the SDK's default chain:
	// here, the environment. Nothing else from this process leaks in.
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"AWS_ACCESS_KEY_ID=" + m.RootUser, "AWS_SECRET_ACCESS_KEY=" + m.RootPassword,
		"AWS_EC2_METADATA_DISABLED=true",
	}
	return &awsBroker{broker: startBrokerWith(t, filepath.Join(dir, "data"), env, "--config", cfg), minio: m}
}

// sdkConfig is what an unmodified AWS SDK program gets from its standard
// credential chain with only an AWS config file that runs
// credbroker-credential-process.
func (b *awsBroker) sdkConfig(t *testing.T, cluster string) aws.Config {
	t.Helper()
	file := filepath.Join(t.TempDir(), "config")
	line := fmt.Sprintf("%s --broker %s --svid-dir %s --profile capa --cluster %s --format aws",
		filepath.Join(binDir, "credbroker-credential-process"), b.grpcAddr, filepath.Join(b.dataDir, "dev", "controller"), cluster)
	if err := os.WriteFile(file, []byte("[profile capa]\ncredential_process = "+line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := awsconfig.LoadDefaultConfig(context.Background(),
		awsconfig.WithSharedConfigFiles([]string{file}),
		awsconfig.WithSharedCredentialsFiles([]string{filepath.Join(t.TempDir(), "none")}),
		awsconfig.WithSharedConfigProfile("capa"),
		awsconfig.WithRegion(b.minio.Region))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (b *awsBroker) put(t *testing.T, creds aws.CredentialsProvider, prefix string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := b.minio.S3(t, creds).PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "kubeconfig"), Body: strings.NewReader("x")})
	if err == nil {
		return ""
	}
	var api smithy.APIError
	if !errors.As(err, &api) {
		t.Fatalf("put to %s: %v", prefix, err)
	}
	return api.ErrorCode()
}

func TestAWSCredentialsThroughTheBrokerAreClusterScoped(t *testing.T) {
	t.Parallel()
	b := startAWSBroker(t)
	cfg := b.sdkConfig(t, clusterA)
	creds, err := cfg.Credentials.Retrieve(context.Background())
	if err != nil {
		t.Fatalf("the SDK's credential chain: %v", err)
	}
	if !creds.CanExpire || time.Until(creds.Expires) > 15*time.Minute || time.Until(creds.Expires) < 14*time.Minute {
		t.Errorf("credential expires %v, want the profile's 15m", creds.Expires)
	}
	if code := b.put(t, cfg.Credentials, prefixA); code != "" {
		t.Errorf("cluster A's credential on cluster A's bucket: %s", code)
	}
	if code := b.put(t, cfg.Credentials, prefixB); code != "AccessDenied" {
		t.Errorf("cluster A's credential on cluster B's bucket: %q, want AccessDenied", code)
	}

	// An operator goes from the AccessKeyId (as CloudTrail shows it) to the issuance.
	r := b.ctl(t, "-o", "json", "issuances", "list")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("issuances list = %q (%v)", r.stdout, err)
	}
	if list[0]["upstream_ref"] != creds.AccessKeyID || list[0]["source_identity"] != "ns.capi-system.sa.demo-controller@dev.credbroker.test" {
		t.Errorf("issuance = %v, want the AccessKeyId %s and the SourceIdentity", list[0], creds.AccessKeyID)
	}

	// A second request within the first half of the lifetime is the same
	// credential, handed out again and audited as such.
	again := b.sdkConfig(t, clusterA)
	creds2, err := again.Credentials.Retrieve(context.Background())
	if err != nil || creds2.AccessKeyID != creds.AccessKeyID {
		t.Fatalf("second request: %v, %v", creds2.AccessKeyID, err)
	}
	if r := b.ctl(t, "audit", "tail", "-n", "1"); !strings.Contains(r.stdout, "reused=true") || !strings.Contains(r.stdout, "ref="+creds.AccessKeyID) {
		t.Errorf("last audit record: %s", r.stdout)
	}

	// Without a cluster the profile refuses, saying why.
	r = runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"), "--profile", "capa", "--format", "aws")
	if r.code != 1 || !strings.Contains(r.stderr, "requires a cluster") {
		t.Errorf("no cluster: exit %d, %q", r.code, r.stderr)
	}
	r = runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"), "--profile", "capa", "--cluster", clusterA, "--ttl", "5m")
	if r.code != 1 || !strings.Contains(r.stderr, "[15m0s, 1h0m0s]") {
		t.Errorf("ttl below STS's minimum: exit %d, %q", r.code, r.stderr)
	}

	if r := b.ctl(t, "audit", "verify"); r.code != 0 {
		t.Errorf("audit verify: %s%s", r.stdout, r.stderr)
	}
	b.stop(t)
	logs := b.stdout.String() + b.stderr.String()
	assertNotOnDiskOrInLogs(t, b.dataDir, creds.SecretAccessKey, logs)
	assertNotOnDiskOrInLogs(t, b.dataDir, creds.SessionToken, logs)
}

// TestAWSCredentialExpiresWhenTheBrokerSaid waits out the shortest
// credential STS issues (15 minutes): MinIO's clock cannot be injected, and
// expiry is the one property that must be seen at the server that enforces
// it. `make test` leaves it to `make test-slow` (the Makefile's SLOW_TESTS);
// -short skips it.
func TestAWSCredentialExpiresWhenTheBrokerSaid(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 15-minute STS credential; make test-slow runs it")
	}
	t.Parallel()
	b := startAWSBroker(t)
	r := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"),
		"--profile", "capa", "--cluster", clusterA, "--format", "aws")
	if r.code != 0 {
		t.Fatalf("credential-process: %s", r.stderr)
	}
	var out struct {
		Version                                   int
		AccessKeyID                               string `json:"AccessKeyId"`
		SecretAccessKey, SessionToken, Expiration string
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Version != 1 {
		t.Fatalf("credential_process output %q: %v", r.stdout, err)
	}
	exp, err := time.Parse(time.RFC3339, out.Expiration)
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewStaticCredentialsProvider(out.AccessKeyID, out.SecretAccessKey, out.SessionToken)
	if code := b.put(t, creds, prefixA); code != "" {
		t.Fatalf("before expiry: %s", code)
	}
	// Expiration has one-second resolution; allow one more for clock reads.
	time.Sleep(time.Until(exp) + 2*time.Second)
	if code := b.put(t, creds, prefixA); code != "InvalidAccessKeyId" && code != "ExpiredToken" {
		t.Fatalf("after the expiry the broker announced (%s): %q, want the credential refused", out.Expiration, code)
	}
}

// TestRevocationDropsReusedAWSCredentials: a revoked issuance's AWS
// credential is never handed out again as a reused one (the next identical
// request gets a fresh credential from STS), a revoked cluster's requests
// are refused naming the revocation, and after the lift the credential
// cached before the revocation is not served either.
func TestRevocationDropsReusedAWSCredentials(t *testing.T) {
	t.Parallel()
	b := startAWSBroker(t)
	retrieve := func() aws.Credentials {
		t.Helper()
		creds, err := b.sdkConfig(t, clusterA).Credentials.Retrieve(context.Background())
		if err != nil {
			t.Fatalf("the SDK's credential chain: %v", err)
		}
		return creds
	}
	first := retrieve()
	if again := retrieve(); again.AccessKeyID != first.AccessKeyID {
		t.Fatalf("second request got %s, want %s reused", again.AccessKeyID, first.AccessKeyID)
	}
	// issuanceOf returns the id of the (reused or fresh) issuance of key.
	issuanceOf := func(key string, reused bool) string {
		t.Helper()
		r := b.ctl(t, "-o", "json", "issuances", "list")
		var list []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("issuances list = %q (%v)", r.stdout, err)
		}
		for _, is := range list {
			if is["upstream_ref"] == key && (is["reused"] == true) == reused {
				if v, ok := is["issuance_id"].(string); ok && v != "" {
					return v
				}
			}
		}
		t.Fatalf("no issuance of %s (reused %v) in %v", key, reused, list)
		return ""
	}
	issuance := issuanceOf(first.AccessKeyID, false)

	if r := b.ctl(t, "revoke", "issuance", issuance, "--reason", "leaked in a CI log"); r.code != 0 {
		t.Fatalf("revoke issuance: %s%s", r.stdout, r.stderr)
	}
	fresh := retrieve()
	if fresh.AccessKeyID == first.AccessKeyID {
		t.Fatal("the revoked credential was handed out again")
	}
	if r := b.ctl(t, "audit", "tail", "-n", "1"); strings.Contains(r.stdout, "reused=true") {
		t.Errorf("the request after the revocation is recorded as reused: %s", r.stdout)
	}
	// Revoking the issuance that was handed the credential again (reused)
	// takes the credential itself out of reuse too.
	if again := retrieve(); again.AccessKeyID != fresh.AccessKeyID {
		t.Fatalf("second request after the revocation got %s, want %s reused", again.AccessKeyID, fresh.AccessKeyID)
	}
	if r := b.ctl(t, "revoke", "issuance", issuanceOf(fresh.AccessKeyID, true)); r.code != 0 {
		t.Fatalf("revoke the reused issuance: %s%s", r.stdout, r.stderr)
	}
	cached := retrieve() // and kept for reuse until the cluster's revocation below
	if cached.AccessKeyID == fresh.AccessKeyID {
		t.Fatal("a credential whose reused issuance was revoked was handed out again")
	}

	r := b.ctl(t, "-o", "json", "revoke", "cluster", clusterA, "--reason", "incident 42")
	var rev struct {
		Revocation struct {
			RevocationID string `json:"revocation_id"`
		} `json:"revocation"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rev); err != nil || rev.Revocation.RevocationID == "" {
		t.Fatalf("revoke cluster: %q %q (%v)", r.stdout, r.stderr, err)
	}
	cp := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"), "--profile", "capa", "--cluster", clusterA, "--format", "aws")
	if cp.code == 0 || !strings.Contains(cp.stderr, rev.Revocation.RevocationID) || !strings.Contains(cp.stderr, "incident 42") {
		t.Fatalf("a revoked cluster's request: exit %d, %q", cp.code, cp.stderr)
	}
	if r := b.ctl(t, "revoke", "lift", rev.Revocation.RevocationID); r.code != 0 {
		t.Fatalf("revoke lift: %s%s", r.stdout, r.stderr)
	}
	if after := retrieve(); after.AccessKeyID == cached.AccessKeyID {
		t.Error("a credential cached before the cluster's revocation was served after it")
	}
	if r := b.ctl(t, "audit", "verify"); r.code != 0 {
		t.Errorf("audit verify: %s%s", r.stdout, r.stderr)
	}
}

// TestPolicyExplainShowsTheAWSRequest: credbrokerctl policy explain, against
// the real broker binary with an AWS STS profile, says the controller would
// get capa for its cluster, and prints what AssumeRole would carry — the
// role, the SourceIdentity and the session policy rendered for that
// cluster — without calling STS or spending anything; check-config says who
// may get what.
func TestPolicyExplainShowsTheAWSRequest(t *testing.T) {
	t.Parallel()
	b := startAWSBroker(t)
	r := b.ctl(t, "policy", "explain", "--id", "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller", "--profile", "capa", "--cluster", clusterA)
	if r.code != 0 {
		t.Fatalf("policy explain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"GRANTED", "upstream: arn:aws:iam::123456789012:role/capa-controller", "SourceIdentity: ns.capi-system.sa.demo-controller@dev.credbroker.test",
		"session policy (as sent):", `"Resource":["arn:aws:s3:::capi/team-a/alpha/*"]`, "tag credbroker:cluster-name: alpha",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("policy explain output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := b.ctl(t, "-o", "json", "issuances", "list"); strings.Contains(r.stdout, "issuance_id") {
		t.Errorf("explaining issued something:\n%s", r.stdout)
	}
	r = b.ctl(t, "policy", "explain", "--id", "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller", "--profile", "capa")
	if r.code != 1 || !strings.Contains(r.stdout, "REFUSED [INVALID_REQUEST]") {
		t.Errorf("without the required cluster: exit %d\n%s", r.code, r.stdout)
	}
}
