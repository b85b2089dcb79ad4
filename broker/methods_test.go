package broker

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestEveryMethodHasAnAccessRule: a method the .proto files declare but the
// method table does not would fail with INTERNAL; catch it before a caller
// does, and check the rules each service is meant to have.
func TestEveryMethodHasAnAccessRule(t *testing.T) {
	want := map[protoreflect.FullName]api{
		"credbroker.v1.BrokerService": apiWorkload,
		"credbroker.v1.NodeService":   0, // per method, below
		"credbroker.v1.AdminService":  apiAdmin,
		// The standard services the broker also serves: health to anyone
		// (probes have no identity), reflection to authenticated callers.
		"grpc.health.v1.Health":                    apiPublic,
		"grpc.reflection.v1.ServerReflection":      apiWorkload,
		"grpc.reflection.v1alpha.ServerReflection": apiWorkload,
	}
	files := []protoreflect.FileDescriptor{
		credbrokerv1.File_credbroker_v1_broker_proto,
		credbrokerv1.File_credbroker_v1_node_proto,
		credbrokerv1.File_credbroker_v1_admin_proto,
		healthpb.File_grpc_health_v1_health_proto,
		reflectionpb.File_grpc_reflection_v1_reflection_proto,
		reflectionalphapb.File_grpc_reflection_v1alpha_reflection_proto,
	}
	seen := 0
	for _, f := range files {
		for i := 0; i < f.Services().Len(); i++ {
			svc := f.Services().Get(i)
			kind, ok := want[svc.FullName()]
			if !ok {
				t.Errorf("service %s is not known to this test", svc.FullName())
				continue
			}
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				name := fmt.Sprintf("/%s/%s", svc.FullName(), m.Name())
				got, ok := methods[name]
				if !ok {
					t.Errorf("%s has no access rule", name)
				}
				if kind != 0 && got.api != kind {
					t.Errorf("%s is %v, want %v", name, got, kind)
				}
				seen++
			}
		}
	}
	if seen != len(methods) {
		t.Errorf("the method table has %d rules for %d methods", len(methods), seen)
	}
	if methods[credbrokerv1.NodeService_AttestNode_FullMethodName].api != apiAttest || methods[credbrokerv1.NodeService_RenewNodeSVID_FullMethodName].api != apiNode {
		t.Error("NodeService: AttestNode must take evidence without an identity, RenewNodeSVID a node identity")
	}
}

// TestEveryReasonHasACode: each ErrorReason is sent with one gRPC code; a
// reason added to errors.proto must be added to the table too.
func TestEveryReasonHasACode(t *testing.T) {
	values := credbrokerv1.ErrorReason(0).Descriptor().Values()
	for i := 0; i < values.Len(); i++ {
		r := credbrokerv1.ErrorReason(values.Get(i).Number())
		if _, ok := reasonCodes[r]; ok == (r == credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED) {
			t.Errorf("%s: in the code table %v", r, ok)
		}
	}
}

// TestNonAPIErrorsLeakNothing: anything that is not an API error becomes
// INTERNAL with reason INTERNAL and no text of its own.
func TestNonAPIErrorsLeakNothing(t *testing.T) {
	st, _ := status.FromError(toStatus(errors.New("upstream said: secret=hunter2")))
	if st.Code() != codes.Internal || st.Message() != "internal error" || len(st.Details()) != 1 {
		t.Fatalf("status %v %q %v", st.Code(), st.Message(), st.Details())
	}
	if info := st.Details()[0].(*errdetails.ErrorInfo); info.GetReason() != "INTERNAL" || info.GetDomain() != ErrorDomain || len(info.GetMetadata()) != 0 {
		t.Errorf("ErrorInfo %v", info)
	}
}
