package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"text/tabwriter"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/issuers/vault"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/vaulttest"
)

// vaultRequest asks the broker for a Vault token.
func vaultRequest() *credbrokerv1.IssueCredentialRequest {
	return &credbrokerv1.IssueCredentialRequest{Profile: "vault-token", Cluster: "capi-prod/workload-1", Ttl: durationpb.New(10 * time.Minute)}
}

// BenchmarkVaultRatios measures P3 side by side, in one run, against a real
// Vault dev server on loopback:
//
//	P3a = broker with its local issuer (audit on) ÷ Vault auth/token/create, QPS
//	P3b = broker minting through Vault (audit on) ÷ the same Vault call made directly, QPS
//
// P3a says how the broker's whole path compares with the cheapest thing Vault
// does; P3b is what the broker's attestation, policy, limits and durable
// audit add on top of Vault.
func BenchmarkVaultRatios(b *testing.B) {
	l, err := loadFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	v := vaulttest.Start(b)
	v.WritePolicy(b, "credbroker", `path "auth/token/create/workload" { capabilities = ["create", "update"] }`)
	v.WritePolicy(b, "workload", `path "secret/data/workload/*" { capabilities = ["read"] }`)
	root := v.Client(b)
	if _, err := root.Logical().Write("auth/token/roles/workload", map[string]any{"allowed_policies": []string{"workload"}, "orphan": true}); err != nil {
		b.Fatal(err)
	}
	brokerToken, err := root.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"credbroker"}, TTL: "1h"})
	if err != nil {
		b.Fatal(err)
	}
	tokenFile := filepath.Join(b.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(brokerToken.Auth.ClientToken), 0o600); err != nil {
		b.Fatal(err)
	}
	prof := vault.Profile{Kind: vault.KindToken, TokenRole: "workload", Policies: []string{"workload"}}
	iss, err := vault.New(vault.Config{Address: v.Addr, Auth: vault.TokenFileAuth{Path: tokenFile}, Profiles: map[string]vault.Profile{"vault-token": prof}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go iss.Run(ctx)
	<-iss.Ready()

	f := newFixture(b)
	withVault := f.newBroker(b, f.tlsConf, f.limits, f.ledger, f.audit, f.audit, broker.Profile{
		Name: "vault-token", IssuerName: "vault", Issuer: iss, DefaultTTL: 10 * time.Minute, MaxTTL: time.Hour,
		Audiences: []string{"vault-token"}, ClusterMode: config.ClusterRequired,
	})
	viaVault := serve(b, withVault, f.clientCreds)
	viaVault.request = vaultRequest

	// Direct calls use the broker's own Vault token, as the broker does.
	direct := func(int) func(context.Context) error {
		c := v.Client(b)
		c.SetToken(brokerToken.Auth.ClientToken)
		return func(ctx context.Context) error {
			_, err := c.Auth().Token().CreateWithRoleWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"workload"}, TTL: "600s"}, "workload")
			return err
		}
	}
	names := []string{"broker local issuer", "vault token create", "broker via vault"}
	runs := []func(time.Duration) (result, error){
		func(d time.Duration) (result, error) { return round(f.targets[auditOn], l.concurrency, d) },
		func(d time.Duration) (result, error) { return roundFunc(l.concurrency, d, direct) },
		func(d time.Duration) (result, error) { return round(viaVault, l.concurrency, d) },
	}
	results := make([][]result, len(runs))
	for i := -1; i < l.rounds; i++ {
		for k, run := range runs {
			d := l.round
			if i < 0 {
				d = l.warmup
			}
			runtime.GC()
			r, err := run(d)
			if err != nil {
				b.Fatalf("%s: %v", names[k], err)
			}
			if i >= 0 {
				results[k] = append(results[k], r)
			}
		}
	}
	sum := make([]summary, len(runs))
	for k := range runs {
		sum[k] = summarize(results[k])
	}
	p3a := sum[0].qps / sum[1].qps
	p3b := sum[2].qps / sum[1].qps
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(p3a, "ratio_P3a")
	b.ReportMetric(p3b, "ratio_P3b")
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "\nconcurrency %d, %d rounds x %v interleaved, GOMAXPROCS %d; medians over rounds\n", l.concurrency, l.rounds, l.round, runtime.GOMAXPROCS(0))
	fmt.Fprintln(w, "variant\tqps\tp50ms\tp99ms\tcpu\t")
	for k, n := range names {
		fmt.Fprintf(w, "%s\t%.0f\t%.2f\t%.2f\t%.0f%%\t\n", n, sum[k].qps, sum[k].p50ms, sum[k].p99ms, 100*sum[k].cpu)
	}
	w.Flush()
	fmt.Printf("P3a = broker local issuer / vault token create = %.2f\n", p3a)
	fmt.Printf("P3b = broker via vault / direct vault call      = %.2f (p50 overhead %.2f ms)\n\n", p3b, sum[2].p50ms-sum[1].p50ms)
}
