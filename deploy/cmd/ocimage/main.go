// Command ocimage assembles credbroker's container image without a container
// daemon or builder, with go-containerregistry: the same image as
// deploy/Dockerfile (static binaries in /usr/local/bin, the nonroot user
// 65532, entrypoint credbroker) on an empty base, written as an OCI image
// layout in a tar file (an "oci-archive": `skopeo copy oci-archive:FILE ...`,
// `podman load -i FILE`, `crane push` after `tar x`).
//
// The layer is reproducible: files in a fixed order with a fixed time
// (SOURCE_DATE_EPOCH, default 0), owned by root, mode 0755 for binaries.
//
//	ocimage --bin-dir DIR --out FILE [--tag credbroker:dev] [--arch amd64]
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// binaries are the commands the image holds, all in /usr/local/bin.
var binaries = []string{"credbroker", "credbroker-sidecar", "credbroker-credential-process", "credbrokerctl"}

// The nonroot user, as in distroless's :nonroot images.
const (
	uid  = 65532
	user = "65532:65532"
)

func main() {
	binDir := flag.String("bin-dir", "", "directory holding the static linux binaries (required)")
	out := flag.String("out", "", "OCI archive to write (required)")
	tag := flag.String("tag", "credbroker:dev", "image reference recorded in the layout (org.opencontainers.image.ref.name)")
	arch := flag.String("arch", runtime.GOARCH, "the binaries' GOARCH")
	caFile := flag.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "PEM bundle of root CAs the broker trusts for AWS, Vault and issuers (as distroless ships)")
	version := flag.String("version", "dev", "org.opencontainers.image.version")
	flag.Parse()
	if *binDir == "" || *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := build(*binDir, *out, *tag, *arch, *caFile, *version); err != nil {
		fmt.Fprintln(os.Stderr, "ocimage:", err)
		os.Exit(1)
	}
}

type file struct {
	name string // absolute path in the image, without the leading /
	mode int64
	uid  int
	dir  bool
	data []byte
}

func build(binDir, out, tag, arch, caFile, version string) error {
	epoch := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %v", s, err)
		}
		epoch = time.Unix(n, 0).UTC()
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("CA certificates: %w (install ca-certificates or pass --ca-certificates)", err)
	}
	files := []file{
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/ssl", mode: 0o755, dir: true},
		{name: "etc/ssl/certs", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{name: "home", mode: 0o755, dir: true},
		{name: "home/nonroot", mode: 0o700, uid: uid, dir: true},
		{name: "tmp", mode: 0o1777, dir: true},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/local", mode: 0o755, dir: true},
		{name: "usr/local/bin", mode: 0o755, dir: true},
		{name: "var", mode: 0o755, dir: true},
		{name: "var/lib", mode: 0o755, dir: true},
		{name: "var/lib/credbroker", mode: 0o700, uid: uid, dir: true},
	}
	for _, b := range binaries {
		data, err := os.ReadFile(filepath.Join(binDir, b))
		if err != nil {
			return fmt.Errorf("binary: %w", err)
		}
		if err := checkStatic(data); err != nil {
			return fmt.Errorf("%s: %w", b, err)
		}
		files = append(files, file{name: "usr/local/bin/" + b, mode: 0o755, data: data})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.uid, ModTime: epoch, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerData := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerData)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "ocimage: credbroker binaries, nonroot user, CA certificates", Comment: "deploy/cmd/ocimage"},
	})
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = arch, "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config = v1.Config{
		User:       user,
		Entrypoint: []string{"/usr/local/bin/credbroker"},
		Cmd:        []string{"serve", "--config", "/etc/credbroker/credbroker.yaml"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/nonroot"},
		WorkingDir: "/home/nonroot",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "credbroker",
			"org.opencontainers.image.source":  "https://github.com/credbroker/credbroker",
			"org.opencontainers.image.version": version,
		},
	}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}

	dir, err := os.MkdirTemp(filepath.Dir(out), ".ocimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})); err != nil {
		return err
	}
	return writeArchive(dir, out, epoch)
}

// checkStatic refuses what the image cannot run: a non-ELF file, or a
// dynamically linked binary (one with a PT_INTERP program header names a
// dynamic loader, and the image has no libc).
func checkStatic(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF binary (build with GOOS=linux): %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (build with CGO_ENABLED=0)")
		}
	}
	return nil
}

// writeArchive tars the layout directory into out, atomically.
func writeArchive(dir, out string, epoch time.Time) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".ocimage-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: epoch, Format: tar.FormatPAX}
		if d.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			return tw.WriteHeader(h)
		}
		h.Typeflag, h.Size = tar.TypeReg, info.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = tmp.Close()
	}
	if err != nil {
		tmp.Close()
		return err
	}
	return os.Rename(tmp.Name(), out)
}
