// Package deploy_test proves deploy/: the image (deploy/cmd/ocimage) is what
// deploy/Dockerfile describes and holds nothing it should not; every
// kustomization renders, follows the security policy, carries a broker
// configuration that `credbroker check-config` accepts and alerts and a
// dashboard that name only metrics the code registers; and a real
// kube-apiserver (built by `make kube-apiserver`, on an etcd embedded in the
// test) accepts every rendered object under server-side dry run with strict
// field validation, and issues the service account tokens the broker's PSAT
// node attestation verifies through that API server's own discovery document
// and JWKS.
package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

// root is the repository's top directory (tests run in test/deploy).
const root = "../.."

// kustomizations are the renderings test/deploy checks: the two overlays an
// operator applies, and CAPA's manager with the credbroker component added.
var kustomizations = map[string]string{
	"single": root + "/deploy/kustomize/overlays/single",
	"ha":     root + "/deploy/kustomize/overlays/ha",
	"capa":   "testdata/capa",
}

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "credbroker-deploy-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		// The image's binaries, built as `make image` builds them: static, for
		// linux. The tests run the same binaries (check-config, the broker and
		// the node agent).
		build := exec.Command("go", "build", "-trimpath", "-o", binDir+"/",
			"./cmd/credbroker", "./cmd/credbroker-sidecar", "./cmd/credbroker-credential-process", "./cmd/credbrokerctl")
		build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		// deploy/ is its own module (kustomize and go-containerregistry stay
		// out of the broker's dependencies).
		tools := exec.Command("go", "build", "-o", binDir+"/", "./cmd/render", "./cmd/ocimage")
		tools.Dir = root + "/deploy"
		for _, c := range []*exec.Cmd{build, tools} {
			c.Stdout, c.Stderr = os.Stderr, os.Stderr
			if err := c.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", strings.Join(c.Args, " "), err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// object is one rendered Kubernetes object.
type object map[string]any

func (o object) kind() string { s, _ := o["kind"].(string); return s }
func (o object) name() string { s, _ := get(o, "metadata", "name").(string); return s }
func (o object) namespace() string {
	s, _ := get(o, "metadata", "namespace").(string)
	return s
}
func (o object) String() string { return o.kind() + " " + o.namespace() + "/" + o.name() }

// get walks nested maps by key; nil when a key is missing.
func get(v any, keys ...string) any {
	for _, k := range keys {
		if o, ok := v.(object); ok {
			v = map[string]any(o)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		if v = m[k]; v == nil {
			return nil
		}
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }

var (
	renderOnce sync.Once
	renderings map[string][]object
	renderErr  error
)

// rendered returns every kustomization's objects, rendered once with
// deploy/cmd/render (the kustomize library).
func rendered(t *testing.T) map[string][]object {
	t.Helper()
	renderOnce.Do(func() {
		renderings = map[string][]object{}
		for name, dir := range kustomizations {
			var out, stderr bytes.Buffer
			cmd := exec.Command(filepath.Join(binDir, "render"), dir)
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil {
				renderErr = fmt.Errorf("render %s: %v\n%s", dir, err, stderr.String())
				return
			}
			objs, err := decodeStream(out.Bytes())
			if err != nil {
				renderErr = fmt.Errorf("render %s: %v", dir, err)
				return
			}
			renderings[name] = objs
		}
	})
	if renderErr != nil {
		t.Fatal(renderErr)
	}
	return renderings
}

// names returns the keys of m in order.
func names[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// find returns the objects of kind in objs.
func find(objs []object, kind string) []object {
	var out []object
	for _, o := range objs {
		if o.kind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// decodeStream decodes a YAML stream into objects.
func decodeStream(b []byte) ([]object, error) {
	var out []object
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var o map[string]any
		if err := dec.Decode(&o); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decode: %w", err)
		}
		if o != nil {
			out = append(out, object(o))
		}
	}
}

func decodeAll(t *testing.T, b []byte) []object {
	t.Helper()
	objs, err := decodeStream(b)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}
