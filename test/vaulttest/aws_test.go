package vaulttest

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/credbroker/credbroker/test/miniotest"
	"github.com/credbroker/credbroker/test/testproc"
)

// putOnlyBucketA allows putting objects in bucket-a and nothing else.
const putOnlyBucketA = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject"],"Resource":["arn:aws:s3:::bucket-a/*"]}]}`

// TestAWSEngineAssumesRoleAtMinIOWithTheSessionPolicy proves the AWS helpers
// against the tests' real STS: Vault's assumed_role credentials come from
// MinIO's AssumeRole and are scoped by the role's policy document.
func TestAWSEngineAssumesRoleAtMinIOWithTheSessionPolicy(t *testing.T) {
	t.Parallel()
	m := miniotest.Start(t)
	m.CreateBucket(t, "bucket-a")
	m.CreateBucket(t, "bucket-b")
	s := Start(t)
	s.EnableAWSEngine(t, "aws", m.RootUser, m.RootPassword, STSProxy(t, m.Endpoint), m.Endpoint, m.Region)
	s.AWSRole(t, "aws", "bucket-a", AWSAssumedRole, []string{"arn:aws:iam::000000000000:role/ignored-by-minio"}, putOnlyBucketA)

	sec, err := s.Client(t).Logical().WriteWithContext(t.Context(), "aws/creds/bucket-a", map[string]any{"ttl": "15m"})
	if err != nil {
		t.Fatalf("aws/creds/bucket-a: %v", err)
	}
	key, _ := sec.Data["access_key"].(string)
	secret, _ := sec.Data["secret_key"].(string)
	session, _ := sec.Data["session_token"].(string)
	if key == "" || secret == "" || session == "" || sec.LeaseID == "" || sec.LeaseDuration < 899 || sec.LeaseDuration > 900 {
		t.Fatalf("aws/creds/bucket-a: lease %q for %ds, access key %q, secret/session present %t/%t; want all, 900s (899 when a second boundary passed)",
			sec.LeaseID, sec.LeaseDuration, key, secret != "", session != "")
	}
	c := m.S3(t, credentials.NewStaticCredentialsProvider(key, secret, session))
	put := func(bucket string) error {
		_, err := c.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("k"), Body: strings.NewReader("v")})
		return err
	}
	if err := put("bucket-a"); err != nil {
		t.Errorf("put to bucket-a with Vault's credentials: %v", err)
	}
	var apiErr smithy.APIError
	if err := put("bucket-b"); !errors.As(err, &apiErr) || apiErr.ErrorCode() != "AccessDenied" {
		t.Errorf("put to bucket-b with Vault's credentials: %v, want AccessDenied", err)
	}
}

func TestAWSRoleRejectsAnUnknownCredentialType(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.EnableAWSEngine(t, "aws", "AKIAEXAMPLE", "secret", "http://127.0.0.1:1", "http://127.0.0.1:1", "us-east-1")
	r := testproc.RunFatal(t, func(tb testing.TB) { s.AWSRole(tb, "aws", "r", "iam_user", nil, "") })
	if !strings.Contains(r.FatalMessage(), "credential type") {
		t.Errorf("AWSRole with iam_user failed with %q, want it refused", r.FatalMessage())
	}
	s.AWSRole(t, "aws", "fed", AWSFederationToken, nil, putOnlyBucketA)
	got, err := s.Client(t).Logical().ReadWithContext(t.Context(), "aws/roles/fed")
	if err != nil {
		t.Fatalf("read aws/roles/fed: %v", err)
	}
	if ct := got.Data["credential_type"]; ct != AWSFederationToken {
		t.Errorf("aws/roles/fed credential_type = %v, want %s", ct, AWSFederationToken)
	}
}

// TestAWSEngineNeedsSTSProxyInFrontOfMinIO pins the reason for STSProxy:
// without it Vault's GetCallerIdentity ping fails at MinIO. If MinIO ever
// implements the action, this fails and STSProxy can go.
func TestAWSEngineNeedsSTSProxyInFrontOfMinIO(t *testing.T) {
	t.Parallel()
	m := miniotest.Start(t)
	s := Start(t)
	s.EnableAWSEngine(t, "aws", m.RootUser, m.RootPassword, m.Endpoint, m.Endpoint, m.Region)
	s.AWSRole(t, "aws", "r", AWSAssumedRole, []string{"arn:aws:iam::000000000000:role/ignored-by-minio"}, putOnlyBucketA)
	_, err := s.Client(t).Logical().WriteWithContext(t.Context(), "aws/creds/r", map[string]any{"ttl": "15m"})
	if !isStatus(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "could not obtain sts client") {
		t.Fatalf("aws/creds/r straight at MinIO: %v, want 400 could not obtain sts client", err)
	}
}
