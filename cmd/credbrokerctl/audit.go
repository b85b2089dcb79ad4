package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newAuditCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify and export the tamper-evident audit trail",
		Long: `The broker records every decision in an append-only audit chain: each record
carries the SHA-256 hash of the previous one, so editing or deleting a record
breaks the chain from that point on.`,
		Example: `  credbrokerctl audit verify
  credbrokerctl audit export --after-seq 1000 > audit.jsonl`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newAuditVerifyCmd(a), newAuditExportCmd(a))
	return cmd
}

func newAuditVerifyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Check the audit hash chain; exit 1 if it is broken",
		Long: `Ask the broker to walk the whole audit hash chain. Prints
  audit chain OK: N records, head HASH
and exits 0, or
  audit chain BROKEN at record seq S (id ID): PROBLEM
and exits 1. With -o json it prints the verification result as an object
and exits the same way.`,
		Example: `  credbrokerctl audit verify
  credbrokerctl audit verify -o json --timeout 5m   # large chains take a while`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.verifyAudit(cmd.Context()) },
	}
}

func (a *app) verifyAudit(ctx context.Context) error {
	client, closeConn, err := a.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := a.callContext(ctx)
	defer cancel()
	resp, err := client.VerifyAudit(ctx, &credbrokerv1.VerifyAuditRequest{})
	if err != nil {
		return a.rpcError(err)
	}
	if a.jsonOutput() {
		b, err := protoJSON(resp)
		if err != nil {
			return err
		}
		if err := writeJSON(a.stdout, b); err != nil {
			return err
		}
	} else if resp.GetOk() {
		head := resp.GetHeadHash()
		if head == "" {
			head = "(empty chain)"
		}
		a.printf("audit chain OK: %d records, head %s\n", resp.GetRecords(), clean(head))
	} else {
		a.printf("audit chain BROKEN at record seq %d (id %s): %s\n",
			resp.GetFirstBadSeq(), clean(resp.GetFirstBadId()), clean(resp.GetProblem()))
	}
	if !resp.GetOk() {
		return silentExit(exitFailure)
	}
	return nil
}

func newAuditExportCmd(a *app) *cobra.Command {
	var afterSeq uint64
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write audit records as JSON lines, in chain order",
		Long: `Write audit records to stdout as JSON lines, in chain order: each line is the
record exactly as the broker stored and hashed it, so an export can be
re-verified without the broker:

  hash = hex(SHA-256(prev_hash || line with its trailing "hash":"<hex>" set to "hash":""))

and each line's prev_hash is the previous line's hash. The output is JSON
lines whatever -o says. --timeout bounds the wait for each record, not the
whole export.`,
		Example: `  credbrokerctl audit export > audit.jsonl
  credbrokerctl audit export --after-seq "$(tail -n1 audit.jsonl | jq -r .seq)" >> audit.jsonl`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.exportAudit(cmd.Context(), afterSeq)
		},
	}
	cmd.Flags().Uint64Var(&afterSeq, "after-seq", 0, "start after this sequence number (0 = from the first record)")
	return cmd
}

func (a *app) exportAudit(ctx context.Context, afterSeq uint64) error {
	client, closeConn, err := a.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	// An export may legitimately run for long; what must not happen is a
	// broker that stops sending. The deadline moves with every record.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(a.timeout, func() { cancel(errIdle) })
	defer idle.Stop()

	stream, err := client.ExportAudit(ctx, &credbrokerv1.ExportAuditRequest{AfterSeq: afterSeq})
	if err != nil {
		return a.streamError(ctx, err)
	}
	out := bufio.NewWriter(a.stdout)
	n := 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ferr := out.Flush(); ferr != nil {
				return ferr
			}
			return fmt.Errorf("export stopped after %d records: %w", n, a.streamError(ctx, err))
		}
		idle.Reset(a.timeout)
		line := resp.GetCanonicalJson()
		if line == "" {
			return fmt.Errorf("export stopped after %d records: the broker sent a record without its canonical form", n)
		}
		if _, err := out.WriteString(line + "\n"); err != nil {
			return fmt.Errorf("writing export: %w", err)
		}
		n++
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("writing export: %w", err)
	}
	return nil
}

var errIdle = errors.New("broker stopped sending")

func (a *app) streamError(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errIdle) {
		return fmt.Errorf("broker sent nothing for %v (see --timeout)", a.timeout)
	}
	return a.rpcError(err)
}
