package miniotest

import (
	"context"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// RootCredentials returns the server's root credentials, which may do
// anything on it, including AssumeRole.
func (s *Server) RootCredentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(s.RootUser, s.RootPassword, "")
}

// S3 returns an S3 client for the server that signs with creds: path-style
// addressing (MinIO has no per-bucket host names here), BaseEndpoint set to
// Endpoint, and the server's region.
func (s *Server) S3(t testing.TB, creds aws.CredentialsProvider) *s3.Client {
	t.Helper()
	return s.s3Client(creds, nil)
}

// STS returns an STS client for the server that signs with creds; use
// RootCredentials for AssumeRole, or aws.AnonymousCredentials{} for
// AssumeRoleWithWebIdentity, which is not signed.
func (s *Server) STS(t testing.TB, creds aws.CredentialsProvider) *sts.Client {
	t.Helper()
	return s.stsClient(creds, nil)
}

// CreateBucket creates the bucket name as root, failing the test on error.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	_, err := s.S3(t, s.RootCredentials()).CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(name)})
	if err != nil {
		t.Fatalf("miniotest: create bucket %q: %v", name, err)
	}
}

func (s *Server) s3Client(creds aws.CredentialsProvider, retryer aws.Retryer) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       s.Region,
		Credentials:  creds,
		UsePathStyle: true,
		Retryer:      retryer,
	})
}

func (s *Server) stsClient(creds aws.CredentialsProvider, retryer aws.Retryer) *sts.Client {
	return sts.New(sts.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       s.Region,
		Credentials:  creds,
		Retryer:      retryer,
	})
}

// probeIAM checks once, without retries, that root may AssumeRole and that
// the temporary credentials are honoured. MinIO loads IAM in the background
// after its HTTP server is live; until then STS answers
// STSIAMNotInitialized.
func (s *Server) probeIAM(ctx context.Context) error {
	out, err := s.stsClient(s.RootCredentials(), aws.NopRetryer{}).AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn:         aws.String("arn:xxx:xxx:xxx:xxxx"), // MinIO ignores it; the SDK requires one
		RoleSessionName: aws.String("miniotest-ready"),
		DurationSeconds: aws.Int32(900),
	})
	if err != nil {
		return fmt.Errorf("assume role: %w", err)
	}
	c := out.Credentials
	creds := credentials.NewStaticCredentialsProvider(*c.AccessKeyId, *c.SecretAccessKey, *c.SessionToken)
	if _, err := s.s3Client(creds, aws.NopRetryer{}).ListBuckets(ctx, &s3.ListBucketsInput{}); err != nil {
		return fmt.Errorf("list buckets with temporary credentials: %w", err)
	}
	return nil
}
