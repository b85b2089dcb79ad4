package broker

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/audit"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestEveryServedMethodDeclaresAnAccessRuleAndALimit: every RPC of every
// service the broker registers is in the method table with a rate limit that
// the default limits configure.
func TestEveryServedMethodDeclaresAnAccessRuleAndALimit(t *testing.T) {
	rl := mustDefaultRateLimits(nil)
	for _, sd := range []grpc.ServiceDesc{credbrokerv1.BrokerService_ServiceDesc, credbrokerv1.NodeService_ServiceDesc, credbrokerv1.AdminService_ServiceDesc,
		healthpb.Health_ServiceDesc, reflectionpb.ServerReflection_ServiceDesc, reflectionalphapb.ServerReflection_ServiceDesc} {
		var names []string
		for _, m := range sd.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range sd.Streams {
			names = append(names, s.StreamName)
		}
		for _, n := range names {
			full := "/" + sd.ServiceName + "/" + n
			if _, err := lookup(rl, full); err != nil {
				t.Errorf("%s: %v", full, err)
			}
		}
	}
}

type discard struct{}

func (discard) Append(r audit.Record) (audit.Record, error) {
	return r, nil
}

// TestMethodWithoutALimitFailsClosed: a method declared without a limiter,
// or whose limiter has no buckets, is INTERNAL on both listeners, before
// authentication and before the handler.
func TestMethodWithoutALimitFailsClosed(t *testing.T) {
	const undeclared = "/credbroker.v1.AdminService/Undeclared"
	methods[undeclared] = method{api: apiAdmin}
	defer delete(methods, undeclared)

	m := NewMetrics(prometheus.NewRegistry())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cases := []struct {
		name   string
		limits *RateLimits
		method string
	}{
		{"method declared without a limiter", mustDefaultRateLimits(nil), undeclared},
		{"limiter without buckets", &RateLimits{buckets: nil}, credbrokerv1.BrokerService_IssueCredential_FullMethodName},
		{"attestation limiter without buckets", &RateLimits{buckets: nil}, credbrokerv1.NodeService_AttestNode_FullMethodName},
		{"renewal limiter without buckets", &RateLimits{buckets: nil}, credbrokerv1.NodeService_RenewNodeSVID_FullMethodName},
		{"admin limiter without buckets", &RateLimits{buckets: nil}, credbrokerv1.AdminService_ListIssuances_FullMethodName},
		{"undeclared method", mustDefaultRateLimits(nil), "/credbroker.v1.BrokerService/Nope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewGate(nil, nil, discard{}, m, log, WithRateLimits(c.limits))
			called := false
			_, err := g.Unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: c.method}, func(context.Context, any) (any, error) {
				called = true
				return nil, nil
			})
			if status.Code(err) != codes.Internal || called {
				t.Errorf("mTLS listener: %v (handler called: %v), want INTERNAL", err, called)
			}
			err = uidGate{limits: c.limits, metrics: m}.check(context.Background(), c.method)
			if status.Code(err) != codes.Internal {
				t.Errorf("admin socket: %v, want INTERNAL", err)
			}
		})
	}
}
