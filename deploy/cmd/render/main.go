// Command render builds kustomizations with the kustomize library (the same
// code as `kubectl kustomize` / `kustomize build`) and writes each result as
// a YAML stream: `render DIR` to stdout, `render -o OUTDIR DIR...` to
// OUTDIR/<DIR's base name>.yaml. test/deploy renders every overlay with it.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	out := flag.String("o", "", "write DIR's rendering to OUTDIR/BASENAME(DIR).yaml instead of stdout")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: render [-o OUTDIR] KUSTOMIZATION_DIR...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 || (*out == "" && flag.NArg() != 1) {
		flag.Usage()
		os.Exit(2)
	}
	for _, dir := range flag.Args() {
		if err := render(dir, *out); err != nil {
			fmt.Fprintf(os.Stderr, "render: %s: %v\n", dir, err)
			os.Exit(1)
		}
	}
}

func render(dir, outDir string) error {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return err
	}
	y, err := res.AsYaml()
	if err != nil {
		return err
	}
	var w io.Writer = os.Stdout
	if outDir != "" {
		return os.WriteFile(filepath.Join(outDir, filepath.Base(filepath.Clean(dir))+".yaml"), y, 0o644)
	}
	_, err = w.Write(y)
	return err
}
