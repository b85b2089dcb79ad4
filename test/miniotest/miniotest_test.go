package miniotest

import (
	"errors"
	"io"
	"net"

	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"

	"github.com/credbroker/credbroker/test/testproc"
)

// bucketAOnly is a session policy that allows putting and getting objects in
// bucket-a and nothing else.
const bucketAOnly = `{
  "Version": "2012-10-17",
  "Statement": [{
    "Effect": "Allow",
    "Action": ["s3:PutObject", "s3:GetObject"],
    "Resource": ["arn:aws:s3:::bucket-a/*"]
  }]
}`

func TestAssumeRoleSessionPolicyScopesS3(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.CreateBucket(t, "bucket-a")
	s.CreateBucket(t, "bucket-b")
	putObject(t, s.S3(t, s.RootCredentials()), "bucket-b", "root-object", "written by root")

	before := time.Now().Truncate(time.Second)
	out, err := s.STS(t, s.RootCredentials()).AssumeRole(t.Context(), &sts.AssumeRoleInput{
		RoleArn:         aws.String("arn:aws:iam::000000000000:role/ignored-by-minio"),
		RoleSessionName: aws.String("scope-test"),
		DurationSeconds: aws.Int32(900),
		Policy:          aws.String(bucketAOnly),
	})
	if err != nil {
		t.Fatalf("AssumeRole: %v", err)
	}
	after := time.Now()
	checkExpiration(t, out.Credentials, before, after, 900*time.Second)
	checkScope(t, s, out.Credentials)
}

func TestAssumeRoleRejectsDurationBelow900(t *testing.T) {
	t.Parallel()
	s := Start(t)
	_, err := s.STS(t, s.RootCredentials()).AssumeRole(t.Context(), &sts.AssumeRoleInput{
		RoleArn:         aws.String("arn:aws:iam::000000000000:role/ignored-by-minio"),
		RoleSessionName: aws.String("too-short"),
		DurationSeconds: aws.Int32(899),
		Policy:          aws.String(bucketAOnly),
	})
	if code := apiErrorCode(err); code != "InvalidParameterValue" {
		t.Fatalf("AssumeRole with DurationSeconds 899: got error %v (code %q), want InvalidParameterValue", err, code)
	}
}

// checkScope proves that creds may put and get objects in bucket-a only: the
// buckets must exist and bucket-b must hold root-object.
func checkScope(t *testing.T, s *Server, c *ststypes.Credentials) {
	t.Helper()
	if c == nil || aws.ToString(c.AccessKeyId) == "" || aws.ToString(c.SecretAccessKey) == "" || aws.ToString(c.SessionToken) == "" {
		t.Fatalf("incomplete temporary credentials: %+v", c)
	}
	tmp := s.S3(t, credentials.NewStaticCredentialsProvider(*c.AccessKeyId, *c.SecretAccessKey, *c.SessionToken))

	putObject(t, tmp, "bucket-a", "allowed", "hello")
	if got := getObject(t, tmp, "bucket-a", "allowed"); got != "hello" {
		t.Errorf("bucket-a/allowed = %q, want %q", got, "hello")
	}

	_, err := tmp.PutObject(t.Context(), &s3.PutObjectInput{
		Bucket: aws.String("bucket-b"), Key: aws.String("denied"), Body: strings.NewReader("x"),
	})
	if code := apiErrorCode(err); code != "AccessDenied" {
		t.Errorf("PutObject to bucket-b: got %v (code %q), want AccessDenied", err, code)
	}
	_, err = tmp.GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String("bucket-b"), Key: aws.String("root-object")})
	if code := apiErrorCode(err); code != "AccessDenied" {
		t.Errorf("GetObject from bucket-b: got %v (code %q), want AccessDenied", err, code)
	}
	// The policy allows only object reads and writes, not listing.
	_, err = tmp.ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String("bucket-a")})
	if code := apiErrorCode(err); code != "AccessDenied" {
		t.Errorf("ListObjectsV2 on bucket-a: got %v (code %q), want AccessDenied", err, code)
	}
}

// checkExpiration checks that credentials issued between before and after
// expire ttl later. MinIO reports whole seconds.
func checkExpiration(t *testing.T, c *ststypes.Credentials, before, after time.Time, ttl time.Duration) {
	t.Helper()
	if c == nil || c.Expiration == nil {
		t.Fatalf("credentials without expiration: %+v", c)
	}
	exp := *c.Expiration
	if exp.Before(before.Add(ttl)) || exp.After(after.Add(ttl).Add(time.Second)) {
		t.Errorf("expiration %s, want %s after issue (issued between %s and %s)", exp, ttl, before, after)
	}
}

func putObject(t *testing.T, c *s3.Client, bucket, key, body string) {
	t.Helper()
	_, err := c.PutObject(t.Context(), &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: strings.NewReader(body),
	})
	if err != nil {
		t.Fatalf("PutObject %s/%s: %v", bucket, key, err)
	}
}

func getObject(t *testing.T, c *s3.Client, bucket, key string) string {
	t.Helper()
	out, err := c.GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("GetObject %s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("GetObject %s/%s: read body: %v", bucket, key, err)
	}
	return string(b)
}

// apiErrorCode returns the service's error code in err, or "" if err carries
// none.
func apiErrorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

func TestStartWithoutBinaryFailsAndSaysHowToGetIt(t *testing.T) {
	testproc.CheckFailsWithoutBinary(t, EnvBinary, func(tb testing.TB) { Start(tb) }, "make minio")
}

func TestStartRetriesWhenAPortWasTaken(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pick := func(n int) ([]string, error) {
		picks++
		ports, err := testproc.FreePorts(n)
		if picks == 1 {
			ports[0] = taken.Addr().String() // as if another process bound it after the pick
		}
		return ports, err
	}

	s := start(t, pick)
	if picks != 2 {
		t.Errorf("ports picked %d times, want 2 (one collision, one retry)", picks)
	}
	if s.Endpoint == "http://"+taken.Addr().String() {
		t.Errorf("Endpoint %s is the taken port", s.Endpoint)
	}
	s.CreateBucket(t, "after-retry")
}

func TestStartWithOpenIDFailsFastWhenTheIssuerIsNotServing(t *testing.T) {
	t.Parallel()
	down := newIssuer(t, "ES256")
	down.Close()
	r := testproc.RunFatal(t, func(tb testing.TB) {
		Start(tb, WithOpenID(down.URL+"/.well-known/openid-configuration", testClientID, "readwrite"))
	})
	if !strings.Contains(r.FatalMessage(), "issuer must be serving") {
		t.Errorf("Start failed with %q, want it to say the issuer must be serving", r.FatalMessage())
	}
}
