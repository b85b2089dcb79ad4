package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestBootstrapExamples: the kubeadm bootstrap examples in deploy/bootstrap
// run the node agent only with flags `credbroker-sidecar node` has, with
// exactly one kind of evidence, and carry no credential but a join token
// file (0600) — the bundle is public.
func TestBootstrapExamples(t *testing.T) {
	t.Parallel()
	help, _ := exec.Command(filepath.Join(binDir, "credbroker-sidecar"), "node", "--help").CombinedOutput()
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z-]+)`).FindAllStringSubmatch(string(help), -1) {
		known[m[1]] = true
	}
	if !known["join-token-file"] || !known["bundle"] {
		t.Fatalf("could not read the node agent's flags from its help:\n%s", help)
	}
	files, _ := filepath.Glob(root + "/deploy/bootstrap/*.yaml")
	if len(files) == 0 {
		t.Fatal("no bootstrap examples")
	}
	commandRE := regexp.MustCompile(`credbroker-sidecar node [^\n]*`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		spec := get(doc, "spec")
		if doc["kind"] == "KubeadmConfigTemplate" {
			spec = get(doc, "spec", "template", "spec")
		}
		var once int
		for _, c := range list(get(spec, "preKubeadmCommands")) {
			if s, _ := c.(string); strings.Contains(s, "credbroker-sidecar node") && strings.Contains(s, "--once") {
				once++
			}
		}
		if once != 1 {
			t.Errorf("%s: %d preKubeadmCommands attest with --once, want 1 (before kubeadm runs)", filepath.Base(f), once)
		}
		cmds := commandRE.FindAllString(string(b), -1)
		if len(cmds) < 2 {
			t.Errorf("%s: %d node agent commands, want the attestation and the renewing service", filepath.Base(f), len(cmds))
		}
		for _, c := range cmds {
			evidence := 0
			for _, arg := range strings.Fields(c)[2:] {
				name, ok := strings.CutPrefix(arg, "--")
				if !ok {
					continue
				}
				name, _, _ = strings.Cut(name, "=")
				if !known[name] {
					t.Errorf("%s: the node agent has no flag --%s: %s", filepath.Base(f), name, c)
				}
				if name == "join-token-file" || name == "psat-token-file" || name == "aws-iid" {
					evidence++
				}
			}
			if evidence != 1 {
				t.Errorf("%s: %d kinds of evidence in %s", filepath.Base(f), evidence, c)
			}
		}
		for _, file := range list(get(spec, "files")) {
			path, _ := get(file, "path").(string)
			if strings.Contains(path, "join-token") && get(file, "permissions") != "0600" {
				t.Errorf("%s: %s has permissions %v, want 0600", filepath.Base(f), path, get(file, "permissions"))
			}
			if c, _ := get(file, "content").(string); strings.Contains(c, "PRIVATE KEY") || strings.Contains(strings.ToLower(c), "aws_secret_access_key") {
				t.Errorf("%s: %s holds a credential", filepath.Base(f), path)
			}
		}
	}
}
