package broker_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/credbroker/credbroker/broker"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// rawCodec sends and receives message bodies as given, so a test can put
// any bytes on the wire.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// metricSum is the sum of every series of the named counter or gauge.
func (h *harness) metricSum(name string) float64 {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestMalformedBodiesAreInvalidArgument: request bodies that do not decode
// (invalid UTF-8 in a string field, broken wire format) are refused with
// INVALID_ARGUMENT and counted, on unary and streaming methods, on the mTLS
// listener and the admin socket; grpc-go alone would answer INTERNAL.
func TestMalformedBodiesAreInvalidArgument(t *testing.T) {
	h := newHarness(t)
	valid, err := proto.Marshal(&credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string][]byte{
		"invalid UTF-8 in profile": {0x0a, 0x02, 0xff, 0xfe},
		"length past the end":      {0x0a, 0x05, 'a'},
		"truncated varint":         {0x08, 0xff},
		"wire type 7":              {0x0f},
	}
	controller := h.dial(h.mint(controllerID, time.Hour))
	admin := h.dial(h.mint(adminID, time.Hour))
	raw := grpc.ForceCodecV2(rawCodec{})
	var want float64
	for name, body := range bodies {
		for conn, label := range map[*grpc.ClientConn]string{controller: "workload", h.dialNoCert(): "no identity"} {
			var out []byte
			err := conn.Invoke(ctxT(t), credbrokerv1.BrokerService_IssueCredential_FullMethodName, &body, &out, raw)
			if st := status.Convert(err); st.Code() != codes.InvalidArgument {
				t.Errorf("%s, %s: IssueCredential = %v (%q), want InvalidArgument", name, label, st.Code(), st.Message())
			}
			want++
		}
		if name == "invalid UTF-8 in profile" {
			// ExportAuditRequest has no string field: to it, field 1 of the
			// wrong wire type is merely an unknown field.
			continue
		}
		for conn, label := range map[*grpc.ClientConn]string{admin: "mTLS", h.dialAdminSocket(): "admin socket"} {
			stream, err := conn.NewStream(ctxT(t), &grpc.StreamDesc{ServerStreams: true}, credbrokerv1.AdminService_ExportAudit_FullMethodName, raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.SendMsg(&body); err != nil {
				t.Fatal(err)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var out []byte
			if st := status.Convert(stream.RecvMsg(&out)); st.Code() != codes.InvalidArgument {
				t.Errorf("%s, %s: ExportAudit = %v (%q), want InvalidArgument", name, label, st.Code(), st.Message())
			}
			want++
		}
	}
	if got := h.metricSum("credbroker_malformed_requests_total"); got != want {
		t.Errorf("credbroker_malformed_requests_total = %v, want %v", got, want)
	}
	// Nothing was recorded or issued, and a well-formed body still works.
	if n := len(h.records()); n != 0 || h.issuer.calls.Load() != 0 {
		t.Fatalf("%d records, %d issuer calls after malformed requests", n, h.issuer.calls.Load())
	}
	var out []byte
	if err := controller.Invoke(ctxT(t), credbrokerv1.BrokerService_IssueCredential_FullMethodName, &valid, &out, raw); err != nil {
		t.Fatalf("valid body: %v", err)
	}
}

// TestOversizedBodyIsRefused: a request body over broker.MaxRequestBytes is
// RESOURCE_EXHAUSTED before it is decoded; one just under is decoded and
// then judged on its merits (it names no profile: INVALID_ARGUMENT).
func TestOversizedBodyIsRefused(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	raw := grpc.ForceCodecV2(rawCodec{})
	for size, want := range map[int]codes.Code{broker.MaxRequestBytes + 1: codes.ResourceExhausted, broker.MaxRequestBytes - 16: codes.InvalidArgument} {
		// A well-formed body of exactly size bytes: one unknown field
		// (number 15, length-delimited; tag 1 byte, length 3 bytes).
		body := protowire.AppendTag(nil, 15, protowire.BytesType)
		body = protowire.AppendBytes(body, make([]byte, size-4))
		if len(body) != size {
			t.Fatalf("built %d bytes, want %d", len(body), size)
		}
		var out []byte
		err := conn.Invoke(ctxT(t), credbrokerv1.BrokerService_IssueCredential_FullMethodName, &body, &out, raw)
		st := status.Convert(err)
		if st.Code() != want || (want == codes.InvalidArgument && !strings.Contains(st.Message(), "profile is required")) {
			t.Errorf("body of %d bytes: %v (%q), want %v", size, st.Code(), st.Message(), want)
		}
	}
}
