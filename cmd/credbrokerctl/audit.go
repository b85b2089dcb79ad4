package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker/audit"
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
	cmd.AddCommand(newAuditVerifyCmd(a), newAuditExportCmd(a), newAuditExportedCmd(a), newAuditTailCmd(a), newAuditMergeCmd(a))
	return cmd
}

func newAuditVerifyCmd(a *app) *cobra.Command {
	var anchorFile, file string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit hash chain; exit 1 if it is broken",
		Long: `Ask the broker to walk the whole audit hash chain. Prints
  audit chain OK: N records, head HASH
and exits 0, or
  audit chain BROKEN at record seq S (id ID): PROBLEM
and exits 1. With -o json it prints the verification result as an object
and exits the same way.

Once records have been pruned (audit.retention), the chain is verified from
the newest checkpoint record: the first record kept must link to the hash
of the last record pruned, as the checkpoint states, and the checkpoint is
itself a record of the chain. Records missing from the start without a
checkpoint accounting for them are a break.

The chain alone cannot show that its newest records were removed (with the
stored head moved back). --anchor FILE checks the chain against a head the
broker published earlier (audit.anchor.file, kept where the broker host
cannot write): the record at the anchored seq must exist with the anchored
hash.

The broker streams its progress while it walks the chain; on a terminal a
progress bar is drawn on stderr. --timeout bounds the wait for each message
from the broker, not the whole walk, so a chain of millions of records is
verified with the default.

With --file FILE (- for stdin) it verifies an export offline, without the
broker: one replica's 'audit export', or several replicas' chains merged by
'audit export' (given each replica) or 'audit merge'. The records of each replica id must form a chain (seqs
contiguous, each linking to the previous one's hash, every hash right);
each replica is reported on its own line:
  replica ID OK: N records, seq F to L, head HASH
  replica ID BROKEN at record seq S (id ID): PROBLEM
and it exits 1 if any chain is broken. Records written before the broker
named its replica (replica_id) verify as the chain "" or as the start of
the chain that continues them.`,
		Example: `  credbrokerctl audit verify
  credbrokerctl audit verify --anchor /mnt/anchors/credbroker-anchor.json
  credbrokerctl audit verify -o json > verify.json
  credbrokerctl audit verify --file fleet-audit.jsonl`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				if anchorFile != "" {
					return usagef("--anchor checks the broker's own chain; it does not go with --file")
				}
				return a.verifyExportFile(file)
			}
			req := &credbrokerv1.VerifyAuditRequest{}
			if anchorFile != "" {
				an, err := readAnchor(anchorFile)
				if err != nil {
					return err
				}
				req.Anchor = an
			}
			return a.verifyAudit(cmd.Context(), req)
		},
	}
	cmd.Flags().StringVar(&anchorFile, "anchor", "", "a published chain head (JSON: seq, hash, time, broker_id) the chain must still reach")
	cmd.Flags().StringVar(&file, "file", "", "verify this export (JSON lines; - for stdin) offline, each replica's chain on its own")
	return cmd
}

// verifyExportFile verifies an export file without the broker.
func (a *app) verifyExportFile(path string) error {
	in, closeIn, err := a.openInput(path)
	if err != nil {
		return err
	}
	defer closeIn()
	res, err := audit.VerifyExport(in)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if a.jsonOutput() {
		if err := writeJSON(a.stdout, res); err != nil {
			return err
		}
	} else {
		for _, c := range res.Chains {
			name := strconv.Quote(c.Replica)
			if !c.OK {
				a.printf("replica %s BROKEN at record seq %d (id %s): %s\n", name, c.FirstBadSeq, clean(orDash(c.FirstBadID)), clean(c.Problem))
				continue
			}
			a.printf("replica %s OK: %d records, seq %d to %d, head %s\n", name, c.Records, c.FirstSeq, c.LastSeq, c.HeadHash)
			if c.UnnamedThrough > 0 {
				a.printf("  records %d to %d carry no replica id (written before the replica was named) and link into it\n", c.FirstSeq, c.UnnamedThrough)
			}
		}
		switch {
		case res.Problem != "":
			a.printf("export BROKEN at line %d: %s\n", res.BadLine, clean(res.Problem))
		case len(res.Chains) == 0:
			a.printf("export is empty: no records\n")
		}
	}
	if !res.OK {
		return silentExit(exitFailure)
	}
	return nil
}

// openInput opens path for reading, or stdin for "-".
func (a *app) openInput(path string) (io.Reader, func(), error) {
	if path == "-" {
		if a.stdin == nil {
			return nil, nil, errors.New("no standard input")
		}
		return a.stdin, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { _ = f.Close() }, nil
}

func newAuditMergeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "merge FILE...",
		Short: "Merge replicas' audit exports into one time-ordered stream",
		Long: `Merge the audit exports of several broker replicas (each replica's
'audit export', or earlier merges) into one stream on stdout (to export
running replicas merged in one step, give 'audit export' each of them), ordered by
record time, ties broken by replica id, then seq: the same files always merge
to the same bytes. Lines are copied byte for byte, so each replica's chain
still verifies in the merge ('audit verify --file'). The files are read once,
one line of each in memory at a time. A record found in two files
(overlapping exports of one replica) is written once; two different records
with the same replica and seq are an error (exit 1). The counts go to stderr.`,
		Example: `  credbrokerctl --socket /srv/a/admin.sock audit export > a.jsonl
  credbrokerctl --broker b.example:8443 --svid-dir ./admin audit export > b.jsonl
  credbrokerctl audit merge a.jsonl b.jsonl c.jsonl > fleet.jsonl
  credbrokerctl audit verify --file fleet.jsonl`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs at least one export file", c.CommandPath())
			}
			return nil
		},
		RunE: func(_ *cobra.Command, files []string) error {
			var inputs []audit.ExportInput
			for _, f := range files {
				if f == "-" {
					return usagef("merge reads files, not stdin")
				}
				fh, err := os.Open(f)
				if err != nil {
					return err
				}
				defer fh.Close()
				inputs = append(inputs, audit.ExportInput{Name: f, R: fh})
			}
			stats, err := audit.MergeExports(a.stdout, inputs...)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "merged %d records of %d replicas (%d duplicates left out)\n", stats.Records, len(stats.Replicas), stats.Duplicates)
			return nil
		},
	}
}

// readAnchor reads an anchor file as the broker writes it.
func readAnchor(path string) (*credbrokerv1.AuditAnchor, error) {
	an, err := audit.ReadAnchorFile(path)
	if err != nil {
		return nil, fmt.Errorf("anchor: %w", err)
	}
	return &credbrokerv1.AuditAnchor{Seq: an.Seq, Hash: an.Hash, Time: timestamppb.New(an.Time), BrokerId: an.BrokerID}, nil
}

func (a *app) verifyAudit(ctx context.Context, req *credbrokerv1.VerifyAuditRequest) error {
	resp, err := a.verifyStream(ctx, req)
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
		if p := resp.GetPrunedThrough(); p > 0 {
			a.printf("records 1 to %d pruned: verified from the checkpoint at seq %d, records %d to %d\n",
				p, resp.GetCheckpointSeq(), resp.GetFirstSeq(), resp.GetHeadSeq())
		}
		if an := req.GetAnchor(); an != nil && resp.GetAnchorChecked() {
			a.printf("anchor reached: seq %d has the hash published at %s\n", an.GetSeq(), formatTime(an.GetTime()))
		}
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
func (a *app) verifyStream(ctx context.Context, req *credbrokerv1.VerifyAuditRequest) (*credbrokerv1.VerifyAuditResult, error) {
	client, closeConn, err := a.dial()
	if err != nil {
		return nil, err
	}
	defer closeConn()
	ctx, idle := a.idleBound(ctx)
	defer idle.stop()
	bar := a.progressBar("verify")
	defer bar.clear()
	stream, err := client.VerifyAudit(ctx, req)
	if err != nil {
		return nil, a.streamError(ctx, a.target(), err)
	}
	for {
		resp, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil, errors.New("the broker ended the verification without a result")
		case err != nil:
			bar.clear()
			return nil, a.streamError(ctx, a.target(), err)
		}
		idle.touch()
		if r := resp.GetResult(); r != nil {
			return r, nil
		}
		if p := resp.GetProgress(); p != nil {
			bar.update(p.GetDone(), p.GetTotal())
		}
	}
}

// idleTimer cancels a stream's context (with cause errIdle) once --timeout
// passes with the broker owing a message, so a long stream may run as long
// as the broker keeps sending.
type idleTimer struct {
	timer   *time.Timer
	timeout time.Duration
	cancel  context.CancelCauseFunc
}

// idleBound returns ctx bounded by an idle timer, running.
func (a *app) idleBound(ctx context.Context) (context.Context, *idleTimer) {
	ctx, cancel := context.WithCancelCause(ctx)
	return ctx, &idleTimer{timer: time.AfterFunc(a.timeout, func() { cancel(errIdle) }), timeout: a.timeout, cancel: cancel}
}

// touch restarts the timer: a message arrived, or the CLI is ready for one.
func (t *idleTimer) touch() { t.timer.Reset(t.timeout) }

// hold stops the timer while the CLI itself is busy, e.g. writing to a
// slow reader, or a merge taking other replicas' records first: that time
// is not the broker's silence.
func (t *idleTimer) hold() { t.timer.Stop() }

// stop releases the timer and the context.
func (t *idleTimer) stop() { t.timer.Stop(); t.cancel(nil) }

// heldWriter writes to w with the idle timer held.
type heldWriter struct {
	w    io.Writer
	idle *idleTimer
}

func (h heldWriter) Write(p []byte) (int, error) {
	h.idle.hold()
	defer h.idle.touch()
	return h.w.Write(p)
}

func newAuditExportCmd(a *app) *cobra.Command {
	var afterSeq uint64
	var mark bool
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write audit records as JSON lines, in chain order",
		Long: `Write audit records to stdout as JSON lines, in chain order: each line is the
record exactly as the broker stored and hashed it, so an export can be
re-verified without the broker:

  hash = hex(SHA-256(prev_hash || line with its trailing "hash":"<hex>" set to "hash":""))

and each line's prev_hash is the previous line's hash. The output is JSON
lines whatever -o says. --timeout bounds the wait for each record, not the
whole export. On a terminal a progress bar is drawn on stderr.

With --mark-exported, once every record has been written (and stdout
flushed without error) the broker is told the chain is exported through the
last seq written (see 'audit exported'): with audit.require_export,
housekeeping prunes only that far.

Replicas: give --broker (or --socket) once for each replica, and their
chains are exported together as one stream, merged as 'audit merge' merges
files: ordered by record time, ties broken by replica id, then seq, each
line byte for byte as its replica stored it, so 'audit verify --file'
checks every replica's chain in it. The replicas are read at once, one
record of each held at a time. Nothing is written until every replica has
answered: one that cannot be reached fails the command (exit 1) naming it,
never a partial export without an error; one failing midway stops the
export with an error naming it and saying the output is incomplete.
--mark-exported then marks each replica through its own last record, once
the whole merge is written. --after-seq is one chain's seq and does not go
with several replicas. The counts go to stderr.`,
		Example: `  credbrokerctl audit export > audit.jsonl
  credbrokerctl audit export --after-seq "$(tail -n1 audit.jsonl | jq -r .seq)" >> audit.jsonl
  credbrokerctl audit export --mark-exported > "audit-$(date +%F).jsonl"
  credbrokerctl --svid-dir ./admin --broker credbroker-0.credbroker:8443 \
    --broker credbroker-1.credbroker:8443 --broker credbroker-2.credbroker:8443 \
    audit export > fleet.jsonl && credbrokerctl audit verify --file fleet.jsonl`,
		Annotations: map[string]string{annotationReplicas: "true"},
		Args:        noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if replicas := a.replicas(); len(replicas) > 1 {
				if cmd.Flags().Changed("after-seq") {
					return usagef("--after-seq is one replica's seq: export the replicas one at a time, or all from the start")
				}
				return a.exportMerged(cmd.Context(), replicas, mark)
			}
			last, err := a.exportAudit(cmd.Context(), a.target(), afterSeq, a.stdout, a.progressBar("export"))
			if err != nil || !mark || last == 0 {
				return err
			}
			return a.markExported(cmd.Context(), a.target(), last)
		},
	}
	cmd.Flags().Uint64Var(&afterSeq, "after-seq", 0, "start after this sequence number (0 = from the first record)")
	cmd.Flags().BoolVar(&mark, "mark-exported", false, "after a complete export, mark the chain exported through its last record")
	return cmd
}

// exportPageSize is how many records one ExportAudit stream carries; the
// export follows pages until one comes back short.
var exportPageSize int32 = 1000

// exportAudit writes the records of t after afterSeq to w, drawing its
// progress on bar (nil: none), and returns the last seq written (0: none).
func (a *app) exportAudit(ctx context.Context, t target, afterSeq uint64, w io.Writer, bar *progressBar) (uint64, error) {
	req := &credbrokerv1.ExportAuditRequest{PageSize: exportPageSize}
	if afterSeq > 0 {
		req.Start = &credbrokerv1.ExportAuditRequest_AfterSeq{AfterSeq: afterSeq}
	}
	defer bar.clear()
	total := 0
	var last uint64
	for {
		var n int
		var token string
		err := a.streamAudit(ctx, t, w, req, total, func(resp *credbrokerv1.ExportAuditResponse) (string, error) {
			if resp.GetCanonicalJson() == "" {
				return "", errors.New("the broker sent a record without its canonical form")
			}
			n++
			if head := resp.GetHeadSeq(); head > afterSeq {
				bar.update(uint64(total+n), head-afterSeq)
			}
			token = resp.GetNextPageToken()
			last = resp.GetRecord().GetSeq()
			return resp.GetCanonicalJson(), nil
		})
		if err != nil {
			return 0, err
		}
		total += n
		if n < int(req.GetPageSize()) {
			return last, nil // a short page: the chain's head
		}
		if token == "" {
			return 0, errors.New("the broker sent a full page without a page token")
		}
		req.PageToken = token
	}
}

// streamAudit runs an ExportAudit stream of t and writes one line per
// record to w as render makes it; already is how many records earlier pages
// wrote. Without req.Follow, --timeout bounds the wait for each record (not
// the time w takes to accept it); a follower waits for new records as long
// as it runs.
func (a *app) streamAudit(ctx context.Context, t target, w io.Writer, req *credbrokerv1.ExportAuditRequest, already int, render func(*credbrokerv1.ExportAuditResponse) (string, error)) error {
	client, closeConn, err := a.dialTarget(t)
	if err != nil {
		return err
	}
	defer closeConn()
	// An export may legitimately run for long; what must not happen is a
	// broker that stops sending. The deadline moves with every record.
	if !req.GetFollow() {
		var idle *idleTimer
		ctx, idle = a.idleBound(ctx)
		defer idle.stop()
		render = resetting(idle.touch, render)
		w = heldWriter{w, idle}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
	}

	stream, err := client.ExportAudit(ctx, req)
	if err != nil {
		return a.streamError(ctx, t, err)
	}
	out := bufio.NewWriter(w)
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
			return fmt.Errorf("export stopped after %d records: %w", n, a.streamError(ctx, t, err))
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

func newAuditExportedCmd(a *app) *cobra.Command {
	var through uint64
	cmd := &cobra.Command{
		Use:   "exported --through SEQ",
		Short: "Mark the audit chain exported through a seq",
		Long: `Tell the broker the audit chain has been exported (and kept elsewhere)
through record SEQ. With audit.require_export set, housekeeping prunes
records past the retention only up to the newest mark. The mark is on record
(an exported decision naming you) and only moves forward; a SEQ past the
chain's head is refused. 'audit export --mark-exported' marks what it wrote.`,
		Example: `  credbrokerctl audit exported --through 1048576`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if through == 0 {
				return usageError{errors.New("--through SEQ is required")}
			}
			return a.markExported(cmd.Context(), a.target(), through)
		},
	}
	cmd.Flags().Uint64Var(&through, "through", 0, "the last seq exported")
	return cmd
}

// markExported marks t's chain exported through seq and says so (on
// stderr after an export, whose stdout is the records).
func (a *app) markExported(ctx context.Context, t target, through uint64) error {
	resp, err := callAt(ctx, a, t, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.MarkAuditExportedResponse, error) {
		return c.MarkAuditExported(ctx, &credbrokerv1.MarkAuditExportedRequest{ThroughSeq: through})
	})
	if err != nil {
		return fmt.Errorf("marking the export: %w", err)
	}
	fmt.Fprintf(a.stderr, "audit marked exported through seq %d (record seq %d)\n", resp.GetExportedThrough(), resp.GetRecord().GetSeq())
	return nil
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
			return a.streamAudit(cmd.Context(), a.target(), a.stdout, req, 0, render)
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
	if rep := r.GetReplica(); rep != "" {
		line += " replica=" + clean(rep)
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

func (a *app) streamError(ctx context.Context, t target, err error) error {
	if errors.Is(context.Cause(ctx), errIdle) {
		return fmt.Errorf("broker sent nothing for %v (see --timeout)", a.timeout)
	}
	return a.rpcErrorAt(t, err)
}
