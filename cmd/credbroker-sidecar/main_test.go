package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	t.Setenv("CREDBROKER_ADDR", "")
	tok := filepath.Join(t.TempDir(), "token")
	base := []string{"--broker", "b:1", "--svid-dir", "d", "--token-file", tok}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--svid-dir", "d", "--token-file", tok, "--profile", "p"}, "--broker is required"},
		{[]string{"--broker", "b:1", "--token-file", tok, "--profile", "p"}, "an identity is required"},
		{append(base, "--workload-api-socket", "unix:///s", "--profile", "p"), "not both"},
		{[]string{"--broker", "b:1", "--svid-dir", "d", "--profile", "p"}, "--token-file is required"},
		{base, "no credential to serve"},
		{append(base, "--profile", "p", "--listen", "0.0.0.0:9911"), "loopback IP literal"},
		{append(base, "--profile", "p", "--listen", "localhost:9911"), "loopback IP literal"},
		{append(base, "--profile", "p", "--listen", "10.0.0.1:9911"), "loopback IP literal"},
		{append(base, "--profile", "p", "--refresh-at", "1.5"), "--refresh-at"},
		{append(base, "--profile", "p", "--cluster", "nope"), "NAMESPACE/NAME"},
		{append(base, "--credential", "x"), "NAME=PROFILE"},
		{append(base, "--profile", "p", "--credential", "default=q"), "defined twice"},
		{append(base, "--profile", "p", "--token-file-mode", "9"), "octal"},
		{append(base, "--profile", "p", "--metrics-listen", "127.0.0.1:9911"), "--metrics-listen: sidecar: metrics listen address \"127.0.0.1:9911\" overlaps the credentials listen address \"127.0.0.1:9911\": give the metrics listener a port of its own"},
		{append(base, "--profile", "p", "--listen", "127.0.0.1:9000", "--metrics-listen", ":9000"), "a port of its own"},
		{append(base, "--profile", "p", "--metrics-listen", "metrics.local:9912"), "IP literal or empty"},
		{append(base, "--profile", "p", "extra"), "unexpected arguments"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

func TestHelpExplainsTheControllerEnvironment(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &stderr); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "--credential", "-token-file-mode", "-metrics-listen", "never serves a credential"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestMissingSVIDDirFailsClearly(t *testing.T) {
	var stderr bytes.Buffer
	args := []string{"--broker", "127.0.0.1:1", "--svid-dir", filepath.Join(t.TempDir(), "none"), "--token-file", filepath.Join(t.TempDir(), "tok"), "--profile", "p"}
	if code := run(context.Background(), args, &stderr); code != 1 || !strings.Contains(stderr.String(), "svid.pem") {
		t.Errorf("exit %d, %q", code, stderr.String())
	}
}

// TestNodeUsageErrors: flags that do not fit the evidence are refused with a
// reason, never silently ignored.
func TestNodeUsageErrors(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--broker", "b:1", "--trust-domain", "td", "--bundle", filepath.Join(dir, "b.pem"), "--svid-dir", dir}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(base, "--join-token-file", "tok", "--cluster", "ns/c"), "--cluster does not apply to --join-token-file"},
		{append(base, "--cluster", "ns/c"), "--cluster goes with --psat-token-file or --aws-iid"},
		{append(base, "--psat-token-file", "t", "--cluster", "ns/c", "--node", "n"), "--node goes with --join-token-file"},
		{append(base, "--aws-iid", "--node", "n", "--cluster", "ns/c"), "--node goes with --join-token-file"},
		{append(base, "--aws-iid"), "--cluster NAMESPACE/NAME is required"},
		{append(base, "--aws-iid", "--join-token-file", "tok"), "one kind of evidence"},
		{[]string{"--broker", "b:1"}, "are required"},
		{append(base, "extra"), "unexpected arguments"},
	} {
		var stderr bytes.Buffer
		if code := runNode(context.Background(), tc.args, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
