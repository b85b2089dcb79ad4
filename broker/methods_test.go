package broker

import (
	"fmt"
	"testing"

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
	}
	files := []protoreflect.FileDescriptor{
		credbrokerv1.File_credbroker_v1_broker_proto,
		credbrokerv1.File_credbroker_v1_node_proto,
		credbrokerv1.File_credbroker_v1_admin_proto,
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
