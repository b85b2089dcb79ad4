package deploy_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// ociArchive is an OCI image layout read from a tar file: blobs by digest.
type ociArchive map[string][]byte

func readArchive(t *testing.T, path string) ociArchive {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := ociArchive{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = b
	}
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations"`
}

func (a ociArchive) blob(t *testing.T, d descriptor, v any) []byte {
	t.Helper()
	b, ok := a["blobs/"+strings.Replace(d.Digest, ":", "/", 1)]
	if !ok {
		t.Fatalf("blob %s (%s) is not in the archive", d.Digest, d.MediaType)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("blob %s: %v", d.Digest, err)
		}
	}
	return b
}

// TestImage builds the image as `make image` does (deploy/cmd/ocimage on the
// static binaries) and reads it back with nothing but the standard library:
// an OCI layout whose config runs the broker as a non-root user, whose one
// layer holds that entrypoint as a static executable, and which holds no
// private key, data directory or other file it should not. The Dockerfile
// declares the same user, entrypoint and command.
func TestImage(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "credbroker-image.tar")
	cmd := exec.Command(filepath.Join(binDir, "ocimage"), "--bin-dir", binDir, "--out", out, "--tag", "credbroker:test", "--arch", runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ocimage: %v\n%s", err, b)
	}
	a := readArchive(t, out)
	var layout struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(a["oci-layout"], &layout); err != nil || layout.Version != "1.0.0" {
		t.Fatalf("oci-layout %q: %v", a["oci-layout"], err)
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(a["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", a["index.json"], err)
	}
	if ref := index.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; ref != "credbroker:test" {
		t.Errorf("image ref %q, want credbroker:test", ref)
	}
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	a.blob(t, index.Manifests[0], &manifest)
	var cfg struct {
		Architecture, OS string
		Config           struct {
			User       string
			Entrypoint []string
			Cmd        []string
			Env        []string
		}
	}
	a.blob(t, manifest.Config, &cfg)
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
	uid, _, _ := strings.Cut(cfg.Config.User, ":")
	if uid == "" || uid == "0" || uid == "root" {
		t.Errorf("image user %q: runs as root", cfg.Config.User)
	}
	if len(cfg.Config.Entrypoint) != 1 {
		t.Fatalf("entrypoint %q", cfg.Config.Entrypoint)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}

	files := map[string]*tar.Header{}
	contents := map[string][]byte{}
	zr, err := gzip.NewReader(bytes.NewReader(a.blob(t, manifest.Layers[0], nil)))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(h.Name, "/")
		files[name] = h
		if contents[name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	entry := cfg.Config.Entrypoint[0]
	h, ok := files[entry]
	if !ok || h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 {
		t.Fatalf("entrypoint %s is not an executable file in the layer (%+v)", entry, h)
	}
	for _, bin := range []string{"credbroker", "credbroker-sidecar", "credbroker-credential-process", "credbrokerctl"} {
		p := "/usr/local/bin/" + bin
		f, err := elf.NewFile(bytes.NewReader(contents[p]))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
			t.Errorf("%s is dynamically linked; the image has no libc", p)
		}
	}
	if h := files["/var/lib/credbroker"]; h == nil || h.Uid != 65532 {
		t.Errorf("/var/lib/credbroker is not the nonroot user's: %+v", h)
	}
	// Nothing secret or local: no key material, no data directory content,
	// no file outside the known set.
	allowed := []string{"/etc", "/etc/passwd", "/etc/group", "/etc/ssl", "/etc/ssl/certs", "/etc/ssl/certs/ca-certificates.crt",
		"/home", "/home/nonroot", "/tmp", "/usr", "/usr/local", "/usr/local/bin", "/var", "/var/lib", "/var/lib/credbroker",
		"/usr/local/bin/credbroker", "/usr/local/bin/credbroker-sidecar", "/usr/local/bin/credbroker-credential-process", "/usr/local/bin/credbrokerctl"}
	for name, h := range files {
		if !slices.Contains(allowed, name) {
			t.Errorf("unexpected file in the image: %s", name)
		}
		if h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
			t.Errorf("%s is a link", name)
		}
		if bytes.Contains(contents[name], []byte("PRIVATE KEY-----")) {
			t.Errorf("%s holds a private key", name)
		}
	}
	if !bytes.Contains(contents["/etc/passwd"], []byte(":"+uid+":")) {
		t.Errorf("/etc/passwd has no user %s:\n%s", uid, contents["/etc/passwd"])
	}

	// deploy/Dockerfile builds the same image for users with a builder.
	df := dockerfile(t)
	if got, want := df["USER"], cfg.Config.User; got != want {
		t.Errorf("Dockerfile USER %q, ocimage user %q", got, want)
	}
	if got, want := df["ENTRYPOINT"], jsonArray(t, cfg.Config.Entrypoint); got != want {
		t.Errorf("Dockerfile ENTRYPOINT %s, ocimage %s", got, want)
	}
	if got, want := df["CMD"], jsonArray(t, cfg.Config.Cmd); got != want {
		t.Errorf("Dockerfile CMD %s, ocimage %s", got, want)
	}
	if !strings.Contains(df["RUN"], "CGO_ENABLED=0") {
		t.Error("the Dockerfile does not build static binaries (CGO_ENABLED=0)")
	}
	if !strings.Contains(df["FROM"], "distroless/static") && !strings.Contains(df["FROM"], "scratch") {
		t.Errorf("the Dockerfile's final base is %q, not distroless static or scratch", df["FROM"])
	}
}

// dockerfile returns the last value of each instruction of deploy/Dockerfile
// (continuation lines joined; RUN: all of them).
func dockerfile(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(root + "/deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	var line string
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(s, "#") {
			continue
		}
		if rest, ok := strings.CutSuffix(s, "\\"); ok {
			line += rest + " "
			continue
		}
		line += s
		if instr, arg, ok := strings.Cut(line, " "); ok {
			if instr == "RUN" {
				out[instr] += arg + "\n"
			} else {
				out[instr] = strings.TrimSpace(arg)
			}
		}
		line = ""
	}
	return out
}

func jsonArray(t *testing.T, s []string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), `","`, `", "`)
}
