package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake in the command line: exit code 2 and a pointer to
// --help.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// silentExit ends the command with a code after it has already reported the
// outcome itself (e.g. a broken audit chain on stdout).
type silentExit int

func (e silentExit) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run executes the CLI with args (without the program name) and returns the
// process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runApp(ctx, &app{now: time.Now, getenv: os.Getenv, stdin: os.Stdin, isTerminal: isTerminal}, args, stdout, stderr)
}

func runApp(ctx context.Context, a *app, args []string, stdout, stderr io.Writer) int {
	a.stdout, a.stderr = stdout, stderr
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if a.identity != nil {
		a.identity.Close()
	}
	if err == nil {
		return exitOK
	}
	var silent silentExit
	if errors.As(err, &silent) {
		return int(silent)
	}
	fmt.Fprintf(stderr, "%s: %s\n", root.Name(), clean(err.Error()))
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	}
	return exitFailure
}
