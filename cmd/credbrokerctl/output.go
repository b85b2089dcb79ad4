package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// jsonOptions name fields as in the .proto (snake_case) and always emit every
// field, so that scripts see the same keys whatever the values.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// protoJSON encodes m as compact JSON. protojson's whitespace is deliberately
// unstable, so the result is re-compacted to give byte-stable output.
func protoJSON(m proto.Message) (json.RawMessage, error) {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, fmt.Errorf("encoding %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return buf.Bytes(), nil
}

// protoJSONList encodes messages as a JSON array; an empty list is [].
func protoJSONList[M proto.Message](msgs []M) (json.RawMessage, error) {
	items := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protoJSON(m)
		if err != nil {
			return nil, err
		}
		items = append(items, b)
	}
	return json.Marshal(items)
}

// writeProtoList writes msgs as an indented JSON array on stdout (the -o
// json form of every listing).
func writeProtoList[M proto.Message](a *app, msgs []M) error {
	list, err := protoJSONList(msgs)
	if err != nil {
		return err
	}
	return writeJSON(a.stdout, list)
}

// writeProto writes m as indented JSON on stdout (the -o json form of one
// response).
func (a *app) writeProto(m proto.Message) error {
	b, err := protoJSON(m)
	if err != nil {
		return err
	}
	return writeJSON(a.stdout, b)
}

// writeJSON writes v indented, followed by a newline.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding output: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// table writes aligned columns. Every cell is cleaned, so broker data
// (reasons, cluster names) cannot inject terminal escapes or break columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if i > 0 {
			fmt.Fprint(t.tw, "\t")
		}
		c = clean(c)
		if c == "" {
			c = "-"
		}
		fmt.Fprint(t.tw, c)
	}
	fmt.Fprint(t.tw, "\n")
}

func (t *table) flush() error { return t.tw.Flush() }

// clean escapes non-printable characters (control characters, tabs, newlines,
// terminal escape sequences) as Go escapes.
func clean(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case unicode.IsPrint(r):
			b.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

// formatTime renders a timestamp in UTC to the second; unset is empty.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// attestationName renders ATTESTATION_METHOD_X509_SVID as "x509-svid", the
// form audit records store; "-" when none was established.
func attestationName(m credbrokerv1.AttestationMethod) string {
	if m == credbrokerv1.AttestationMethod_ATTESTATION_METHOD_UNSPECIFIED {
		return "-"
	}
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(m.String(), "ATTESTATION_METHOD_")), "_", "-")
}

// decisionName renders DECISION_ISSUED as "issued".
func decisionName(d credbrokerv1.Decision) string {
	return strings.ToLower(strings.TrimPrefix(d.String(), "DECISION_"))
}

// shortHash abbreviates a hex hash for tables; JSON output has it in full.
func shortHash(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}
