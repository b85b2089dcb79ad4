// Package miniotest is the tests' real MinIO server: the AWS STS
// (AssumeRole, AssumeRoleWithWebIdentity) and S3 endpoint that the AWS
// issuer is proved against, instead of a mock of either.
//
// Start runs the pinned MinIO binary (`make minio` installs it and `make
// test` passes its path in CREDBROKER_MINIO) on free loopback ports with a
// fresh data directory and random root credentials, waits until STS and S3
// answer, and stops it when the test ends. A missing binary fails the test;
// it is never skipped.
package miniotest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
)

// EnvBinary names the environment variable holding the path of the MinIO
// binary. When it is unset, Start looks for `minio` on PATH.
const EnvBinary = "CREDBROKER_MINIO"

// Region is the region every Server runs in (MINIO_SITE_REGION). Clients
// must sign for it.
const Region = "us-east-1"

// Server is a running MinIO server owned by one test.
type Server struct {
	// Endpoint is the S3 and STS base URL, http://127.0.0.1:PORT.
	Endpoint string
	// Region is the server's region, always Region.
	Region string
	// RootUser and RootPassword are the server's random root credentials.
	RootUser, RootPassword string

	roleARN string
}

// Option configures Start.
type Option func(*options)

type options struct {
	openID *openIDConfig
}

// randomHex returns n random bytes, hex encoded.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("miniotest: random credentials: %v", err)
	}
	return hex.EncodeToString(b)
}
