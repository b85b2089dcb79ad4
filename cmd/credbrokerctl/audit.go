package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
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
	cmd.AddCommand(newAuditVerifyCmd(a), newAuditExportCmd(a), newAuditTailCmd(a))
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
and exits the same way.

The broker streams its progress while it walks the chain; on a terminal a
progress bar is drawn on stderr. --timeout bounds the wait for each message
from the broker, not the whole walk, so a chain of millions of records is
verified with the default.`,
		Example: `  credbrokerctl audit verify
  credbrokerctl audit verify -o json > verify.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.verifyAudit(cmd.Context()) },
	}
}

func (a *app) verifyAudit(ctx context.Context) error {
	resp, err := a.verifyStream(ctx)
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		if err := a.writeProto(resp); err != nil {
			return err
		}
	} else if resp.GetOk() {
		head := resp.GetHeadHash()
		if head == "" {
			head = "(empty chain)"
		}
		a.printf("audit chain OK: %d records, head %s\n", resp.GetRecords(), clean(head))
	} else {
		b := resp.GetFirstBreak()
		a.printf("audit chain BROKEN at record seq %d (id %s): %s\n",
			b.GetSeq(), clean(b.GetRecordId()), clean(b.GetProblem()))
	}
	if !resp.GetOk() {
		return silentExit(exitFailure)
	}
	return nil
}

// verifyStream runs the VerifyAudit stream, drawing its progress, and
// returns the result. --timeout bounds the wait for each message.
func (a *app) verifyStream(ctx context.Context) (*credbrokerv1.VerifyAuditResult, error) {
	client, closeConn, err := a.dial()
	if err != nil {
		return nil, err
	}
	defer closeConn()
	ctx, touch, stop := a.idleBound(ctx)
	defer stop()
	bar := a.progressBar("verify")
	defer bar.clear()
	stream, err := client.VerifyAudit(ctx, &credbrokerv1.VerifyAuditRequest{})
	if err != nil {
		return nil, a.streamError(ctx, err)
	}
	for {
		resp, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil, errors.New("the broker ended the verification without a result")
		case err != nil:
			bar.clear()
			return nil, a.streamError(ctx, err)
		}
		touch()
		if r := resp.GetResult(); r != nil {
			return r, nil
		}
		if p := resp.GetProgress(); p != nil {
			bar.update(p.GetDone(), p.GetTotal())
		}
	}
}

// idleBound returns ctx cancelled (with cause errIdle) once --timeout
// passes without a call to touch: a long stream may run as long as the
// broker keeps sending. stop releases the timer.
func (a *app) idleBound(ctx context.Context) (_ context.Context, touch, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	idle := time.AfterFunc(a.timeout, func() { cancel(errIdle) })
	return ctx, func() { idle.Reset(a.timeout) }, func() { idle.Stop(); cancel(nil) }
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
whole export. On a terminal a progress bar is drawn on stderr.`,
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

// exportPageSize is how many records one ExportAudit stream carries; the
// export follows pages until one comes back short.
var exportPageSize int32 = 1000

func (a *app) exportAudit(ctx context.Context, afterSeq uint64) error {
	req := &credbrokerv1.ExportAuditRequest{PageSize: exportPageSize}
	if afterSeq > 0 {
		req.Start = &credbrokerv1.ExportAuditRequest_AfterSeq{AfterSeq: afterSeq}
	}
	bar := a.progressBar("export")
	defer bar.clear()
	total := 0
	for {
		var n int
		var token string
		err := a.streamAudit(ctx, req, total, func(resp *credbrokerv1.ExportAuditResponse) (string, error) {
			if resp.GetCanonicalJson() == "" {
				return "", errors.New("the broker sent a record without its canonical form")
			}
			n++
			if head := resp.GetHeadSeq(); head > afterSeq {
				bar.update(uint64(total+n), head-afterSeq)
			}
			token = resp.GetNextPageToken()
			return resp.GetCanonicalJson(), nil
		})
		if err != nil {
			return err
		}
		total += n
		if n < int(req.GetPageSize()) {
			return nil // a short page: the chain's head
		}
		if token == "" {
			return errors.New("the broker sent a full page without a page token")
		}
		req.PageToken = token
	}
}

// streamAudit runs an ExportAudit stream and writes one line per record as
// render makes it; already is how many records earlier pages wrote. Without req.Follow, --timeout bounds the wait for each
// record; a follower waits for new records as long as it runs.
func (a *app) streamAudit(ctx context.Context, req *credbrokerv1.ExportAuditRequest, already int, render func(*credbrokerv1.ExportAuditResponse) (string, error)) error {
	client, closeConn, err := a.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	// An export may legitimately run for long; what must not happen is a
	// broker that stops sending. The deadline moves with every record.
	if !req.GetFollow() {
		var touch, stop func()
		ctx, touch, stop = a.idleBound(ctx)
		defer stop()
		render = resetting(touch, render)
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
	}

	stream, err := client.ExportAudit(ctx, req)
	if err != nil {
		return a.streamError(ctx, err)
	}
	out := bufio.NewWriter(a.stdout)
	n := already
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ferr := out.Flush(); ferr != nil {
				return ferr
			}
			if req.GetFollow() && ctx.Err() != nil {
				return nil // interrupted by the user: a follower's normal end
			}
			return fmt.Errorf("export stopped after %d records: %w", n, a.streamError(ctx, err))
		}
		line, err := render(resp)
		if err != nil {
			return fmt.Errorf("export stopped after %d records: %w", n, err)
		}
		if _, err := out.WriteString(line + "\n"); err != nil {
			return fmt.Errorf("writing export: %w", err)
		}
		n++
		if req.GetFollow() {
			// A follower's reader wants each record as it happens.
			if err := out.Flush(); err != nil {
				return fmt.Errorf("writing export: %w", err)
			}
		}
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("writing export: %w", err)
	}
	return nil
}

// resetting calls touch (restarting the idle bound) each time a record
// arrives.
func resetting(touch func(), render func(*credbrokerv1.ExportAuditResponse) (string, error)) func(*credbrokerv1.ExportAuditResponse) (string, error) {
	return func(r *credbrokerv1.ExportAuditResponse) (string, error) {
		touch()
		return render(r)
	}
}

func newAuditTailCmd(a *app) *cobra.Command {
	var last uint64
	var follow bool
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Show the latest audit records, and follow new ones with -f",
		Long: `Show the last -n audit records, one line each, and with -f keep printing new
records as the broker commits them until interrupted. With -o json each line
is the record exactly as stored and hashed (as audit export writes it), which
makes 'audit tail -f -o json' a feed for a SIEM.`,
		Example: `  credbrokerctl audit tail
  credbrokerctl audit tail -n 100 -f
  credbrokerctl audit tail -f -o json | your-siem-forwarder`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &credbrokerv1.ExportAuditRequest{Follow: follow, Start: &credbrokerv1.ExportAuditRequest_LastRecords{LastRecords: last}}
			if last == 0 {
				// -n 0 -f: only what happens from now on.
				req.Start = &credbrokerv1.ExportAuditRequest_AfterSeq{AfterSeq: ^uint64(0) >> 1}
			}
			render := tailLine
			if a.jsonOutput() {
				render = func(r *credbrokerv1.ExportAuditResponse) (string, error) { return r.GetCanonicalJson(), nil }
			}
			return a.streamAudit(cmd.Context(), req, 0, render)
		},
	}
	cmd.Flags().Uint64VarP(&last, "lines", "n", 10, "how many of the latest records to show first")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new records as they are committed")
	return cmd
}

// tailLine renders a record on one line for people.
func tailLine(resp *credbrokerv1.ExportAuditResponse) (string, error) {
	r := resp.GetRecord()
	line := fmt.Sprintf("%d %s %-9s caller=%s profile=%s cluster=%s issuance=%s",
		r.GetSeq(), formatTime(r.GetTime()), decisionName(r.GetDecision()),
		clean(orDash(r.GetCaller())), clean(orDash(r.GetProfile())), clean(orDash(r.GetCluster())), clean(orDash(r.GetIssuanceId())))
	if ref := r.GetUpstreamRef(); ref != "" {
		line += " ref=" + clean(ref)
	}
	if si := r.GetSourceIdentity(); si != "" {
		line += " source_identity=" + clean(si)
	}
	if r.GetReused() {
		line += " reused=true"
	}
	if reason := r.GetReason(); reason != "" {
		line += " reason=" + strconv.Quote(reason)
	}
	return line, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var errIdle = errors.New("broker stopped sending")

func (a *app) streamError(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errIdle) {
		return fmt.Errorf("broker sent nothing for %v (see --timeout)", a.timeout)
	}
	return a.rpcError(err)
}
