package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// envAWSCLI names the environment variable holding the AWS CLI to test
// with (`make test` sets it). The tests never take `aws` from PATH: on some
// machines a pyenv shim comes first there.
const envAWSCLI = "CREDBROKER_AWSCLI"

// awsCLIPath returns the AWS CLI binary, failing the test when it is missing.
func awsCLIPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv(envAWSCLI)
	if path == "" {
		path = "/usr/bin/aws"
	}
	if fi, err := os.Stat(path); err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("AWS CLI %s is not an executable (%v): run `make awscli`, or set %s", path, err, envAWSCLI)
	}
	return path
}

// awsCLI runs the real AWS CLI as a user whose only AWS configuration is a
// profile "capa" with credential_process running
// credbroker-credential-process with --cache-file.
type awsCLI struct {
	path, endpoint string
	env            []string
}

// newAWSCLI writes an AWS config file in home whose profile "capa" asks the
// broker for profile with cluster, caching in cacheFile.
func (b *awsBroker) newAWSCLI(t *testing.T, home, profile, cluster, cacheFile string) *awsCLI {
	t.Helper()
	config := filepath.Join(home, "aws-config")
	line := fmt.Sprintf("%s --broker %s --svid-dir %s --profile %s --cluster %s --format aws --cache-file %s",
		filepath.Join(binDir, "credbroker-credential-process"), b.grpcAddr, filepath.Join(b.dataDir, "dev", "controller"), profile, cluster, cacheFile)
	if err := os.WriteFile(config, []byte("[profile capa]\ncredential_process = "+line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &awsCLI{path: awsCLIPath(t), endpoint: b.minio.Endpoint, env: []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home,
		"AWS_CONFIG_FILE=" + config, "AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_PROFILE=capa",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_DEFAULT_REGION=" + b.minio.Region,
	}}
}

func (c *awsCLI) run(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(c.path, append(args, "--endpoint-url", c.endpoint)...)
	cmd.Env = c.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

// brokerCalls counts what the broker recorded: issuances listed, and audit
// records (every request that reaches the broker writes at least one).
func (b *awsBroker) brokerCalls(t *testing.T) (issuances, records int) {
	t.Helper()
	r := b.ctl(t, "-o", "json", "issuances", "list")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); r.code != 0 || err != nil {
		t.Fatalf("issuances list: exit %d, %q (%v) %s", r.code, r.stdout, err, r.stderr)
	}
	r = b.ctl(t, "audit", "export")
	if r.code != 0 {
		t.Fatalf("audit export: exit %d: %s", r.code, r.stderr)
	}
	return len(list), strings.Count(r.stdout, "\n")
}

func TestAWSCLIWithCredentialProcessAndCache(t *testing.T) {
	t.Parallel()
	awsCLIPath(t) // before starting anything
	b := startAWSBroker(t)
	home := t.TempDir()
	cacheDir := filepath.Join(home, "credbroker-cache")
	cacheFile := filepath.Join(cacheDir, "capa.json")
	cli := b.newAWSCLI(t, home, "capa", clusterA, cacheFile)
	local := filepath.Join(home, "kubeconfig")
	if err := os.WriteFile(local, []byte("cluster A's kubeconfig\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	if r := cli.run(t, "s3", "cp", local, "s3://capi/"+prefixA+"x"); r.code != 0 {
		t.Fatalf("aws s3 cp to cluster A's prefix: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	issuances, records := b.brokerCalls(t)
	if issuances != 1 {
		t.Fatalf("%d issuances after the first CLI command, want 1", issuances)
	}
	fi, err := os.Stat(cacheFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v, %v; want mode 0600", fi, err)
	}
	if fi, err := os.Stat(cacheDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir: %v, %v; want mode 0700", fi, err)
	}
	var cached struct {
		AccessKeyID     string `json:"access_key_id"`
		SecretAccessKey string `json:"secret_access_key"`
		SessionToken    string `json:"session_token"`
	}
	raw, err := os.ReadFile(cacheFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &cached); err != nil || cached.SecretAccessKey == "" {
		t.Fatalf("cache file is not a credential (%v)", err)
	}

	// The second command is served from the cache: the broker sees nothing.
	r := cli.run(t, "s3", "cp", "s3://capi/"+prefixA+"x", "-")
	if r.code != 0 || r.stdout != "cluster A's kubeconfig\n" {
		t.Fatalf("aws s3 cp back from cluster A's prefix: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if i, n := b.brokerCalls(t); i != issuances || n != records {
		t.Errorf("second CLI command reached the broker: issuances %d -> %d, audit records %d -> %d", issuances, i, records, n)
	}

	// The cached credential is still scoped to cluster A.
	r = cli.run(t, "s3", "cp", local, "s3://capi/"+prefixB+"x")
	if r.code == 0 || !strings.Contains(r.stderr, "AccessDenied") {
		t.Errorf("aws s3 cp to cluster B's prefix: exit %d, stderr %q; want AccessDenied", r.code, r.stderr)
	}
	if i, n := b.brokerCalls(t); i != issuances || n != records {
		t.Errorf("third CLI command reached the broker: issuances %d -> %d, audit records %d -> %d", issuances, i, records, n)
	}

	// Another cluster with the same cache file is another request: a new
	// credential, which replaces the cached one.
	clusterB := strings.TrimSuffix(prefixB, "/")
	cliB := b.newAWSCLI(t, t.TempDir(), "capa", clusterB, cacheFile)
	if r := cliB.run(t, "s3", "cp", local, "s3://capi/"+prefixB+"x"); r.code != 0 {
		t.Fatalf("aws s3 cp as cluster B: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if i, _ := b.brokerCalls(t); i != issuances+1 {
		t.Errorf("cluster B's request: %d issuances, want %d", i, issuances+1)
	}
	if raw, err := os.ReadFile(cacheFile); err != nil || !bytes.Contains(raw, []byte(`"cluster":"`+clusterB+`"`)) {
		t.Errorf("cache file not replaced by cluster B's credential (%v)", err)
	}

	// A credential_process failure reaches the CLI user as our one line.
	bad := b.newAWSCLI(t, t.TempDir(), "no-such-profile", clusterA, filepath.Join(t.TempDir(), "cache.json"))
	r = bad.run(t, "s3", "cp", local, "s3://capi/"+prefixA+"y")
	if r.code == 0 || !strings.Contains(r.stderr, `credbroker-credential-process: invalid argument: unknown profile "no-such-profile"`) || !strings.Contains(r.stderr, "[UNKNOWN_PROFILE]") {
		t.Errorf("unknown profile: exit %d, stderr %q", r.code, r.stderr)
	}

	// The secret is only in the cache file: not in the CLI's home, not in
	// the broker's data directory or logs.
	filepath.WalkDir(home, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || path == cacheFile {
			return err
		}
		if data, err := os.ReadFile(path); err == nil && bytes.Contains(data, []byte(cached.SecretAccessKey)) {
			t.Errorf("the secret key is also in %s", path)
		}
		return nil
	})
	if entries, err := os.ReadDir(cacheDir); err != nil || len(entries) != 1 {
		t.Errorf("cache dir holds %v (%v), want only the cache file", entries, err)
	}
	b.stop(t)
	logs := b.stdout.String() + b.stderr.String()
	assertNotOnDiskOrInLogs(t, b.dataDir, cached.SecretAccessKey, logs)
	assertNotOnDiskOrInLogs(t, b.dataDir, cached.SessionToken, logs)
}
