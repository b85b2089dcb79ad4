// Package apicompat proves that `make lint` (buf-breaking) catches a
// breaking change to the v1 API: it edits a copy of the .proto files and
// runs the same check against the committed baseline image.
package apicompat

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const baseline = "proto/credbroker-v1.binpb"

// root is the repository root (this package is test/apicompat).
func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// protoCopy copies buf.yaml and proto/ into a temporary module, applies
// edit to the named .proto file, and returns the copy's directory.
func protoCopy(t *testing.T, file string, edit func(string) string) string {
	t.Helper()
	src, dst := root(t), t.TempDir()
	err := filepath.WalkDir(filepath.Join(src, "proto"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".proto") {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == file {
			s := edit(string(b))
			if s == string(b) {
				t.Fatalf("the edit changed nothing in %s", file)
			}
			b = []byte(s)
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(rel)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(src, "buf.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "buf.yaml"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// breaking runs the Makefile's check on the module in dir and returns its
// output and whether it passed.
func breaking(t *testing.T, dir string) (string, bool) {
	t.Helper()
	cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "breaking", dir, "--against", baseline)
	cmd.Dir = root(t)
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("running buf: %v", err)
	}
	return string(out), err == nil
}

func replace(old, new string) func(string) string {
	return func(s string) string { return strings.Replace(s, old, new, 1) }
}

func TestBreakingChangesFailLint(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal("go is not on PATH")
	}
	for name, tc := range map[string]struct {
		file string
		edit func(string) string
		want string // in buf's output
	}{
		"renamed field": {"proto/credbroker/v1/broker.proto",
			replace("  string profile = 1;", "  string profile_name = 1;"), `changed name from "profile" to "profile_name"`},
		"renumbered field": {"proto/credbroker/v1/admin.proto",
			replace("  string issuance_id = 1;\n  google.protobuf.Timestamp issued_at = 2;", "  string issuance_id = 12;\n  google.protobuf.Timestamp issued_at = 2;"), `Previously present field "1"`},
		"removed RPC": {"proto/credbroker/v1/node.proto",
			replace("  rpc RenewNodeSVID(RenewNodeSVIDRequest) returns (RenewNodeSVIDResponse);", ""), `RenewNodeSVID`},
		"removed reason": {"proto/credbroker/v1/errors.proto",
			replace("  QUOTA_EXHAUSTED = 5;", ""), `enum value "5" on enum "ErrorReason" was deleted`},
		"changed type": {"proto/credbroker/v1/admin.proto",
			replace("  int32 page_size = 2;\n  // next_page_token of the previous page, with the same cluster.", "  int64 page_size = 2;\n  // next_page_token of the previous page, with the same cluster."), `changed type`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, ok := breaking(t, protoCopy(t, tc.file, tc.edit))
			if ok || !strings.Contains(out, tc.want) {
				t.Errorf("buf breaking passed=%v, output:\n%s\nwant a failure mentioning %q", ok, out, tc.want)
			}
		})
	}
}

// TestAdditionsPassLint: what later changes do, new reasons and RPCs, is
// compatible.
func TestAdditionsPassLint(t *testing.T) {
	add := func(s string) string {
		// A number far past the ones in use, so that reasons added since do
		// not collide with it.
		s = strings.Replace(s, "  DEADLINE_EXCEEDED = 23;", "  DEADLINE_EXCEEDED = 23;\n\n  // Added later.\n  SOMETHING_NEW = 1000;", 1)
		return s
	}
	if out, ok := breaking(t, protoCopy(t, "proto/credbroker/v1/errors.proto", add)); !ok {
		t.Errorf("an added reason was refused:\n%s", out)
	}
	// Anchored on the service's opening line, which later RPCs do not move.
	addRPC := replace("service AdminService {\n",
		"service AdminService {\n  // Later.\n  rpc ListThings(ListNodesRequest) returns (ListNodesResponse);\n\n")
	if out, ok := breaking(t, protoCopy(t, "proto/credbroker/v1/admin.proto", addRPC)); !ok {
		t.Errorf("an added RPC was refused:\n%s", out)
	}
}
