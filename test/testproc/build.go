package testproc

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// MainWithBinaries is the TestMain of a package whose tests run the
// project's own binaries: it builds the main packages pkgs (import paths,
// or patterns such as "github.com/credbroker/credbroker/cmd/...") with `go
// build` into a new temporary directory, sets *dir to it, runs the tests,
// removes the directory and exits with the tests' status. The binaries are
// built once for the package, before any test; a failed build ends the run
// with go's output, so no test runs on stale binaries.
func MainWithBinaries(m *testing.M, dir *string, pkgs ...string) {
	d, err := os.MkdirTemp("", "credbroker-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(d)
		build := exec.Command("go", append([]string{"build", "-o", d + "/"}, pkgs...)...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building binaries:", err)
			return 1
		}
		*dir = d
		return m.Run()
	}()
	os.Exit(code)
}
