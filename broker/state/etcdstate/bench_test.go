package etcdstate_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
)

// BenchmarkSpend spends one unit of an identity and a cluster quota per
// operation on the shared one-member etcd: the issuance path's state cost,
// in time and in etcd round trips (rpcs/op). "serial" is one caller;
// "parallel" many callers on 64 identities sharing one cluster key, as a
// busy replica sees them.
func BenchmarkSpend(b *testing.B) {
	ctx := context.Background()
	cluster := state.Charge{Key: state.QuotaKey{Kind: state.QuotaCluster, Name: "team-a/alpha"}, Quota: state.Quota{Max: 1 << 30, Window: time.Hour}}
	for _, mode := range []string{"serial", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			var rpcs atomic.Int64
			cli, err := clientv3.New(clientv3.Config{Endpoints: shared, Logger: zap.NewNop(), DialOptions: []grpc.DialOption{
				grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
					rpcs.Add(1)
					return invoker(ctx, method, req, reply, cc, opts...)
				}),
			}})
			if err != nil {
				b.Fatal(err)
			}
			defer cli.Close()
			s, err := etcdstate.New(ctx, cli, etcdstate.Options{Prefix: prefixFor(b.TempDir())})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var n atomic.Int64
			spend := func(i int64) {
				id := state.Charge{Key: state.QuotaKey{Kind: state.QuotaIdentity, Name: fmt.Sprintf("spiffe://example.test/w/%d", i%64)}, Quota: cluster.Quota}
				if _, err := s.Spend(ctx, epoch, []state.Charge{id, cluster}); err != nil {
					b.Error(err)
				}
			}
			b.ResetTimer()
			rpcs.Store(0)
			if mode == "serial" {
				for i := range b.N {
					spend(int64(i))
				}
			} else {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						spend(n.Add(1))
					}
				})
			}
			b.ReportMetric(float64(rpcs.Load())/float64(b.N), "rpcs/op")
		})
	}
}
