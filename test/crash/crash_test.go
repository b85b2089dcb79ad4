package crash

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/devenv"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/miniotest"
	"github.com/credbroker/credbroker/test/testproc"
)

// The shape of one run. Demand is made to exceed both quotas, so that the
// quota bound is reached in every run and then held across the later kills;
// the per-life targets keep issuance and refusals going through every kill.
const (
	// kills is how many times the broker is SIGKILLed.
	kills = 24
	// maxDecisionsPerLife bounds the random number of decisions a life sees
	// before it is killed (uniform in [0, maxDecisionsPerLife]).
	maxDecisionsPerLife = 48
	// finalDecisions are made by the last life, which is not killed.
	finalDecisions = 48
	// earlyKillShare is the chance that a start is first tried and killed
	// during its start-up, after a delay uniform in [0, maxEarlyKillDelay)
	// (the first start always is).
	earlyKillShare    = 0.25
	maxEarlyKillDelay = 300 * time.Millisecond
	// workers is the number of concurrent clients.
	workers = 8
	// identities is the number of workload SPIFFE IDs the clients act as.
	identities = 12
	// identityQuota and clusterQuota are the Max of the configured quotas;
	// their window (quotaWindow) outlasts the test.
	identityQuota = 24
	clusterQuota  = 30
	quotaWindow   = "24h"
	// clusterShare is the share of token requests that name one of the
	// clusters; awsShare is the share of all requests for AWS credentials
	// (minted by a real MinIO STS), which always name a cluster.
	clusterShare = 0.4
	awsShare     = 0.25

	profileToken = "crash-token"
	profileAWS   = "crash-aws"
	bucket       = "crash"
	trustDomain  = "dev.credbroker.test"
	// seedEnv replays a run's random choices.
	seedEnv = "CREDBROKER_CRASH_SEED"
)

var clusters = []string{"crash/alpha", "crash/beta", "crash/gamma"}

// received is one credential as a client got it: the ledger entry that the
// audit trail must account for.
type received struct {
	life       int
	issuanceID string
	caller     string
	profile    string
	cluster    string
	expiresAt  time.Time
	// upstreamRef is what the audit record must name: the token's jti, or
	// the AccessKeyId.
	upstreamRef string
	// token is a token credential; aws an AWS one.
	token string
	aws   *credbrokerv1.AWSCredentials
}

// ledger is every credential any client received, and every refusal by a
// quota, across all lives.
type ledger struct {
	mu         sync.Mutex
	received   []received
	throttled  int
	interrupts int
	// unexpected holds errors a live, unkilled broker returned.
	unexpected []string
}

func (g *ledger) add(r received) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.received = append(g.received, r)
}

func (g *ledger) note(f func(*ledger)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

// run is the state the workers and the killer share.
type run struct {
	ids    []identity
	ledger ledger

	mu   sync.Mutex
	life *life // the life now serving (or being killed)
}

// current returns the life serving now, waiting across a kill for the next
// one; it returns nil when ctx ends.
func (r *run) current(ctx context.Context) *life {
	for {
		r.mu.Lock()
		l := r.life
		r.mu.Unlock()
		if !l.killing.Load() {
			return l
		}
		select {
		case <-l.next:
		case <-ctx.Done():
			return nil
		}
	}
}

// publish makes l the serving life and wakes the workers waiting on the
// previous one.
func (r *run) publish(l *life) {
	r.mu.Lock()
	prev := r.life
	r.life = l
	r.mu.Unlock()
	if prev != nil {
		close(prev.next)
	}
}

// work issues credentials until ctx ends, choosing identity and cluster
// with rng.
func (r *run) work(ctx context.Context, rng *rand.Rand) {
	for {
		l := r.current(ctx)
		if l == nil {
			return
		}
		who := rng.IntN(len(r.ids))
		req := &credbrokerv1.IssueCredentialRequest{Profile: profileToken}
		switch p := rng.Float64(); {
		case p < awsShare:
			req.Profile, req.Cluster = profileAWS, clusters[rng.IntN(len(clusters))]
		case p < awsShare+(1-awsShare)*clusterShare:
			req.Cluster = clusters[rng.IntN(len(clusters))]
		}
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := l.clients[who].IssueCredential(callCtx, req)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			rec, perr := fromCredential(l.n, r.ids[who].id, resp.GetCredential())
			if perr != nil {
				r.ledger.note(func(g *ledger) { g.unexpected = append(g.unexpected, perr.Error()) })
			} else {
				r.ledger.add(rec)
			}
			l.decided()
		case status.Code(err) == codes.ResourceExhausted && !l.killing.Load():
			r.ledger.note(func(g *ledger) { g.throttled++ })
			l.decided()
		case l.killing.Load():
			// Cut off by the kill (connection reset, closed client): the
			// broker may or may not have issued; nothing was received.
			r.ledger.note(func(g *ledger) { g.interrupts++ })
		default:
			msg := fmt.Sprintf("life %d, %s: %v", l.n, r.ids[who].id, err)
			r.ledger.note(func(g *ledger) { g.unexpected = append(g.unexpected, msg) })
			l.decided() // keep the run moving; the test fails at the end
		}
	}
}

// fromCredential checks a received credential and makes its ledger entry.
func fromCredential(lifeN int, caller string, c *credbrokerv1.Credential) (received, error) {
	r := received{
		life:       lifeN,
		issuanceID: c.GetIssuanceId(),
		caller:     caller,
		profile:    c.GetProfile(),
		cluster:    c.GetCluster(),
		expiresAt:  c.GetExpiresAt().AsTime(),
	}
	if a := c.GetAws(); a != nil {
		if a.GetAccessKeyId() == "" || a.GetSecretAccessKey() == "" || a.GetSessionToken() == "" {
			return received{}, fmt.Errorf("life %d: issuance %s: incomplete AWS credentials", lifeN, r.issuanceID)
		}
		r.aws, r.upstreamRef = a, a.GetAccessKeyId()
		return r, nil
	}
	tok := c.GetToken().GetToken()
	if tok == "" {
		return received{}, fmt.Errorf("life %d: issuance %s: neither a token nor AWS credentials", lifeN, r.issuanceID)
	}
	claims := jwtlib.MapClaims{}
	if _, _, err := jwtlib.NewParser().ParseUnverified(tok, claims); err != nil {
		return received{}, fmt.Errorf("life %d: issuance %s: token does not parse: %v", lifeN, r.issuanceID, err)
	}
	if sub, _ := claims["sub"].(string); sub != caller {
		return received{}, fmt.Errorf("life %d: issuance %s: token for %q handed to %q", lifeN, r.issuanceID, sub, caller)
	}
	r.upstreamRef, _ = claims["jti"].(string)
	r.token = tok
	return r, nil
}

// seed returns the run's seed: CREDBROKER_CRASH_SEED, else a fresh one.
func seed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv(seedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", seedEnv, s, err)
		}
		return v
	}
	return rand.Uint64()
}

// TestKilledBrokerKeepsItsPromises is the crash harness: see the package
// documentation.
func TestKilledBrokerKeepsItsPromises(t *testing.T) {
	t.Parallel()
	s := seed(t)
	t.Logf("seed %d (replay the run's choices with %s=%d)", s, seedEnv, s)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with seed %d; replay with %s=%d", s, seedEnv, s)
		}
	})
	rng := rand.New(rand.NewPCG(s, 0))

	dataDir := filepath.Join(t.TempDir(), "data")
	env, err := devenv.Prepare(dataDir, spiffeid.RequireTrustDomainFromString(trustDomain))
	if err != nil {
		t.Fatal(err)
	}
	r := &run{}
	for i := range identities {
		id := spiffeid.RequireFromPath(env.CA.TrustDomain(), fmt.Sprintf("/ns/crash/sa/worker-%02d", i))
		svid, err := env.CA.MintX509SVID(id, devenv.SVIDTTL)
		if err != nil {
			t.Fatal(err)
		}
		r.ids = append(r.ids, identity{id: id.String(), svid: svid})
	}
	m := miniotest.Start(t)
	m.CreateBucket(t, bucket)
	cfg := writeConfig(t, m)
	// The broker's own AWS credentials (MinIO's root) come from the SDK's
	// default chain: here, the environment; nothing else from this process.
	procEnv := testproc.Environ([]string{"CREDBROKER_", "AWS_", "GODEBUG=", "HOME="},
		"HOME="+t.TempDir(), "AWS_ACCESS_KEY_ID="+m.RootUser, "AWS_SECRET_ACCESS_KEY="+m.RootPassword,
		"AWS_EC2_METADATA_DISABLED=true")

	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var wg sync.WaitGroup
	// Before the first life (on a data directory with no database yet) and
	// before some others, a start is killed at a random moment of its
	// start-up: whatever it was creating, the next start must come up.
	earlyKills := 0
	start := func(n int, target int64) *life {
		if n == 0 || rng.Float64() < earlyKillShare {
			killEarly(t, dataDir, cfg, procEnv, time.Duration(rng.Int64N(int64(maxEarlyKillDelay))))
			earlyKills++
		}
		return startBroker(t, n, dataDir, cfg, procEnv, r.ids, env.CA.X509Bundle(), target)
	}
	r.publish(start(0, rng.Int64N(maxDecisionsPerLife+1)))
	for w := range workers {
		wrng := rand.New(rand.NewPCG(s, uint64(w)+1))
		wg.Go(func() { r.work(ctx, wrng) })
	}
	// A life that makes no decisions within this bound means the broker
	// stopped answering; it bounds the test, it measures nothing.
	const stuck = 2 * time.Minute
	for k := 1; k <= kills; k++ {
		l := r.life
		waitReached(t, l, stuck)
		l.kill()
		target := rng.Int64N(maxDecisionsPerLife + 1)
		if k == kills {
			target = finalDecisions
		}
		r.publish(start(k, target))
	}
	last := r.life
	waitReached(t, last, stuck)
	stop()
	wg.Wait()
	last.closeConns()
	close(last.next)

	g := &r.ledger
	if len(g.unexpected) > 0 {
		t.Errorf("%d errors from a broker that was not being killed; the first: %s", len(g.unexpected), g.unexpected[0])
	}
	nAWS := 0
	for _, c := range g.received {
		if c.aws != nil {
			nAWS++
		}
	}
	t.Logf("%d kills under load and %d during start-up; %d credentials received (%d from STS), %d quota refusals, %d requests cut off by a kill",
		kills, earlyKills, len(g.received), nAWS, g.throttled, g.interrupts)

	if len(g.received) == 0 || g.throttled == 0 {
		t.Errorf("the run proved little: %d credentials received, %d quota refusals (both must be > 0)", len(g.received), g.throttled)
	}

	checkAudit(t, dataDir, last, g.received)
	checkAWS(t, m, dataDir, g.received)
}

// waitReached waits until l has made its target number of decisions.
func waitReached(t *testing.T, l *life, bound time.Duration) {
	t.Helper()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case <-l.reached:
	case <-l.proc.Exited():
		t.Fatalf("life %d: the broker exited on its own after %d decisions", l.n, l.decisions.Load())
	case <-timer.C:
		t.Fatalf("life %d: %d of %d decisions within %s; the broker stopped answering", l.n, l.decisions.Load(), l.target, bound)
	}
}

// writeConfig writes the broker configuration the run uses: the dev
// identity with a local JWT profile and an STS profile at m, a policy for
// the run's identities and small, long-windowed quotas. The rate limits
// are generous: the run is about quotas and records, not rates.
func writeConfig(t *testing.T, m *miniotest.Server) string {
	t.Helper()
	yaml := fmt.Sprintf(`trust_domain: %[1]s
log_level: info
admin:
  spiffe_ids: [spiffe://%[1]s/credbroker/admin]
issuers:
  local:
    type: jwt
  aws:
    type: aws_sts
    aws_sts: {region: %[6]s, endpoint: %[7]s, credentials: default}
profiles:
  %[2]s:
    issuer: local
    default_ttl: 5m
    max_ttl: 15m
    cluster: optional
  %[8]s:
    issuer: aws
    default_ttl: 15m
    max_ttl: 1h
    cluster: required
    aws:
      role_arn: arn:aws:iam::123456789012:role/crash
      session_policy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: ["s3:GetObject", "s3:PutObject"]
            Resource: ["arn:aws:s3:::%[9]s/${cluster.namespace}/${cluster.name}/*"]
policy:
  - id: spiffe://%[1]s/ns/crash/sa/*
    profiles: [%[2]s, %[8]s]
limits:
  rate: 100000
  burst: 100000
  requests: {issue: {rate: 100000, burst: 100000}, admin: {rate: 1000, burst: 1000}}
  identity_quota: {max: %[3]d, window: %[4]s}
  cluster_quota: {max: %[5]d, window: %[4]s}
`, trustDomain, profileToken, identityQuota, quotaWindow, clusterQuota, m.Region, m.Endpoint, profileAWS, bucket)
	path := filepath.Join(t.TempDir(), "crash.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
