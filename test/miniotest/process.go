package miniotest

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/test/testproc"
)

// Start runs a MinIO server for the rest of the test and returns once its STS
// and S3 APIs serve requests. It fails the test when the binary is missing or
// the server does not come up; it never skips. The server is stopped, and its
// output logged if the test failed, when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return start(t, testproc.FreePorts, opts...)
}

// start is Start with the port picker as a parameter, so that tests can make
// the first pick collide.
func start(t testing.TB, pickPorts func(n int) ([]string, error), opts ...Option) *Server {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{
		Region:       Region,
		RootUser:     "root-" + randomHex(t, 6),
		RootPassword: randomHex(t, 20),
	}
	h := harness(s)
	bin := h.Binary(t)
	if o.openID != nil {
		// MinIO would retry an unreachable issuer forever with IAM, and so
		// STS, unavailable; fail now with the reason instead.
		if err := checkDiscovery(t.Context(), o.openID.configURL); err != nil {
			t.Fatalf("miniotest: WithOpenID: %v (the issuer must be serving before Start)", err)
		}
		s.roleARN = openIDRoleARN(o.openID.clientID, Region)
		o.openID.clientSecret = randomHex(t, 20)
	}
	h.Start(t, bin, func() (testproc.Attempt, error) {
		return attempt(t, bin, s, o, pickPorts)
	})
	return s
}

// harness describes MinIO to testproc.
func harness(s *Server) testproc.Harness {
	return testproc.Harness{
		Package:   "miniotest",
		Server:    "MinIO",
		Command:   "minio",
		EnvBinary: EnvBinary,
		// MinIO says "Specified port is already in use" and exits 1.
		PortTaken: "already in use",
		Redact:    s.redact,
	}
}

// attempt prepares one start of MinIO on fresh ports and a fresh data
// directory.
func attempt(t testing.TB, bin string, s *Server, o options, pickPorts func(int) ([]string, error)) (testproc.Attempt, error) {
	ports, err := pickPorts(2)
	if err != nil {
		return testproc.Attempt{}, err
	}
	s.Endpoint = "http://" + ports[0]
	root := t.TempDir()
	data, certs := root+"/data", root+"/certs"
	cmd := exec.Command(bin, "server", "--quiet",
		"--address", ports[0], "--console-address", ports[1],
		"--certs-dir", certs, data)
	cmd.Env = environ(s, o)
	return testproc.Attempt{Cmd: cmd, Ready: s.probe}, nil
}

// environ is MinIO's environment: the test's own, minus any MINIO_ settings
// that would change the server under test, plus the harness's.
func environ(s *Server, o options) []string {
	env := testproc.Environ([]string{"MINIO_"},
		"MINIO_ROOT_USER="+s.RootUser,
		"MINIO_ROOT_PASSWORD="+s.RootPassword,
		"MINIO_SITE_REGION="+Region,
		"MINIO_BROWSER=off", // no console server, so the console port stays unused
		"MINIO_UPDATE=off",  // no release check against dl.min.io
		// CI mode: a 256 MiB buffer pool instead of half of RAM, and no
		// refusal to write to a data directory on the root drive.
		"MINIO_CI_CD=on",
	)
	if c := o.openID; c != nil {
		env = append(env,
			"MINIO_IDENTITY_OPENID_CONFIG_URL="+c.configURL,
			"MINIO_IDENTITY_OPENID_CLIENT_ID="+c.clientID,
			"MINIO_IDENTITY_OPENID_ROLE_POLICY="+c.rolePolicy,
			// MinIO also accepts HS256 tokens whose kid is the client id,
			// keyed with the client secret; left empty, anyone can forge
			// them with an empty key. A random secret closes that.
			"MINIO_IDENTITY_OPENID_CLIENT_SECRET="+c.clientSecret,
		)
	}
	return env
}

// probe returns nil when the server is live and its IAM subsystem (loaded
// after the HTTP server starts) issues and honours STS credentials.
func (s *Server) probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/minio/health/live", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	// Liveness answers 200 before the object layer exists, and says so in
	// this header.
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Minio-Server-Status") == "offline" {
		return fmt.Errorf("health/live: %s, server status %q", resp.Status, resp.Header.Get("X-Minio-Server-Status"))
	}
	return s.probeIAM(ctx)
}

// redact removes the root password from MinIO output before it is logged.
func (s *Server) redact(out string) string {
	return strings.ReplaceAll(out, s.RootPassword, "REDACTED")
}
