package ha

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/poll"
)

// callBound bounds every wait of the tests below: a loaded machine may take
// seconds per etcd election or process start. It bounds the test; it
// measures nothing.
const callBound = 2 * time.Minute

// TestReplicaProcesses runs three broker processes on a three-member etcd
// through the replicas' promises, one after another, each on a cluster of
// its own: the quota is exact under a concurrent burst over all three; a
// revocation made through one is in force on the others within a second;
// an etcd member lost costs nothing, the quorum lost refuses everything
// and issues nothing unrecorded, and the quorum back serves again with no
// restart; a process SIGKILLed under load leaves the others serving and
// the quota spent exactly. After each step every process's audit chain
// verifies, alone and merged with the others.
func TestReplicaProcesses(t *testing.T) {
	t.Parallel()
	f := newFleet(t, replicas)
	controller := f.mint(t, "/ns/capi-system/sa/capa-controller-manager")
	steps := []struct {
		name string
		run  func(*testing.T)
	}{
		{"quota-exact-under-a-burst", func(t *testing.T) { quotaExact(t, f, controller) }},
		{"revocation-everywhere-within-a-second", func(t *testing.T) { revocationEverywhere(t, f) }},
		{"join-token-raced-on-two-processes", func(t *testing.T) { joinTokenOnce(t, f) }},
		{"etcd-member-lost-then-quorum", func(t *testing.T) { etcdMembers(t, f, controller) }},
		{"process-sigkilled-under-load", func(t *testing.T) { processKilled(t, f, controller) }},
	}
	for _, s := range steps {
		// A step that failed may leave the fleet in a state the next one
		// does not expect: stop at the first failure.
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

// answers are the issuance ids of the OK answers, per replica.
type answers struct {
	mu  sync.Mutex
	ids []map[string]bool
}

func newAnswers() *answers {
	a := &answers{}
	for range replicas {
		a.ids = append(a.ids, map[string]bool{})
	}
	return a
}

// ok records an OK answer from replica i.
func (a *answers) ok(i int, resp *credbrokerv1.IssueCredentialResponse) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ids[i][resp.GetCredential().GetIssuanceId()] = true
}

func (a *answers) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, m := range a.ids {
		n += len(m)
	}
	return n
}

// matches checks that replica i's chain holds exactly one issued record
// for each OK answer it gave and, besides, at most extra records of
// answers never received; it returns how many there were besides.
func (a *answers) matches(t *testing.T, is issued, i, extra int) int {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.ids[i] {
		if is[i][id] != 1 {
			t.Errorf("replica %d answered issuance %s OK; its audit chain holds %d issued records of it, want 1", i, id, is[i][id])
		}
	}
	besides := 0
	for id, n := range is[i] {
		if n != 1 {
			t.Errorf("replica %d: %d issued records of issuance %s, want 1", i, n, id)
		}
		if !a.ids[i][id] {
			besides++
		}
	}
	if besides > extra {
		t.Errorf("replica %d's audit chain holds %d issued records of answers never received, want at most %d", i, besides, extra)
	}
	return besides
}

// quotaExact: 300 concurrent requests spread over the three processes
// against a cluster quota of 100 get exactly 100 credentials and 200
// RESOURCE_EXHAUSTED, and the processes' audit chains hold between them
// exactly the 100 issued records of the credentials received.
func quotaExact(t *testing.T, f *fleet, svid *x509svid.SVID) {
	const requests, cluster = 300, "ha/burst"
	clients := f.clients(t, svid)
	ctx, cancel := context.WithTimeout(t.Context(), callBound)
	defer cancel()
	got := newAnswers()
	var exhausted atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for n := range requests {
		wg.Go(func() {
			i := n % replicas
			<-start
			resp, err := clients[i].IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: profileQuota, Cluster: cluster})
			switch {
			case err == nil:
				got.ok(i, resp)
			case status.Code(err) == codes.ResourceExhausted && brokerclient.Reason(err) == credbrokerv1.ErrorReason_QUOTA_EXHAUSTED:
				exhausted.Add(1)
			default:
				t.Errorf("replica %d: %v, want OK or RESOURCE_EXHAUSTED (QUOTA_EXHAUSTED)", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if got.count() != quota || exhausted.Load() != requests-quota {
		t.Fatalf("%d OK and %d RESOURCE_EXHAUSTED, want %d and %d", got.count(), exhausted.Load(), quota, requests-quota)
	}
	is := f.audit(t, cluster)
	for i := range f.replicas {
		got.matches(t, is, i, 0)
	}
	if is.total() != quota {
		t.Fatalf("the three audit chains hold %d issued records for %s, want %d", is.total(), cluster, quota)
	}
	if used := f.used(t, cluster); used != quota {
		t.Fatalf("%d units of the quota used, want %d", used, quota)
	}
	t.Logf("%d concurrent requests: %d OK (%d, %d and %d by the three processes), %d RESOURCE_EXHAUSTED; %d issued records",
		requests, got.count(), len(got.ids[0]), len(got.ids[1]), len(got.ids[2]), exhausted.Load(), is.total())
}

// revocationEverywhere: an identity revoked with credbrokerctl on the first
// process's admin socket is refused (REVOKED) by the third, and the second,
// within a second of the command's return. The processes are polled; the
// measured time is logged.
func revocationEverywhere(t *testing.T, f *fleet) {
	svid := f.mint(t, "/ns/capi-system/sa/retired-controller")
	clients := f.clients(t, svid)
	ctx, cancel := context.WithTimeout(t.Context(), callBound)
	defer cancel()
	issue := func(i int) error {
		_, err := clients[i].IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: profilePlain})
		return err
	}
	for i := range clients {
		if err := issue(i); err != nil {
			t.Fatalf("replica %d before the revocation: %v", i, err)
		}
	}
	revoked := func(err error) bool {
		return status.Code(err) == codes.FailedPrecondition && brokerclient.Reason(err) == credbrokerv1.ErrorReason_REVOKED
	}

	started := time.Now()
	f.replicas[0].ctl(t, "revoke", "identity", svid.ID.String(), "--reason", "retired")
	returned := time.Now()
	// The process that made the revocation has it in force when the call
	// returns.
	if err := issue(0); !revoked(err) {
		t.Fatalf("replica 0, which made the revocation: %v, want FAILED_PRECONDITION (REVOKED)", err)
	}
	// The design's promise is "in force on every replica within one
	// second"; the time each replica took is measured and logged against
	// it. The test fails only past a deadline far beyond it, so that a
	// starved test machine cannot turn a wall-clock figure into a failure.
	const promise, deadline = time.Second, 30 * time.Second
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, i := range []int{2, 1} {
		for {
			sent := time.Now()
			err := issue(i)
			if revoked(err) {
				t.Logf("replica %d refuses the revoked identity %s after credbrokerctl returned (%s after it was started; within the %s promise: %v)",
					i, sent.Sub(returned).Round(time.Microsecond), sent.Sub(started).Round(time.Microsecond), promise, sent.Sub(returned) <= promise)
				break
			}
			if err != nil {
				t.Fatalf("replica %d after the revocation: %v, want OK until it is in force, then FAILED_PRECONDITION (REVOKED)", i, err)
			}
			if sent.Sub(returned) > deadline {
				t.Fatalf("replica %d still issues to an identity revoked through replica 0 %s ago", i, sent.Sub(returned))
			}
			<-tick.C
		}
	}
}

// joinTokenOnce: a join token created with credbrokerctl on the first
// process and raced by two nodes' agents (`credbroker-sidecar node
// --once`), one on the second process and one on the third, admits exactly
// one node; the other is refused, the token already used. The admitted
// node's SVID gets a credential from the first process, which did not
// attest it.
func joinTokenOnce(t *testing.T, f *fleet) {
	const cluster, node = "ha/nodes", "worker-1"
	token := strings.TrimSpace(f.replicas[0].ctl(t, "join-token", "create", "--cluster", cluster, "--node", node))
	tokenFile := filepath.Join(t.TempDir(), "join-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	type agent struct {
		replica int
		dir     string
		err     error
	}
	agents := []*agent{{replica: 1}, {replica: 2}}
	var wg sync.WaitGroup
	for _, a := range agents {
		a.dir = filepath.Join(t.TempDir(), "svid")
		wg.Go(func() {
			_, a.err = run("credbroker-sidecar", "node", "--once", "--broker", f.replicas[a.replica].grpcAddr,
				"--trust-domain", trustDomain, "--bundle", f.bundle, "--svid-dir", a.dir, "--join-token-file", tokenFile)
		})
	}
	wg.Wait()
	var admitted *agent
	for _, a := range agents {
		switch {
		case a.err == nil && admitted != nil:
			t.Fatalf("one join token admitted a node through replica %d and through replica %d", admitted.replica, a.replica)
		case a.err == nil:
			admitted = a
		case !strings.Contains(a.err.Error(), "already used"):
			t.Errorf("the node agent on replica %d: %v, want the token refused as already used", a.replica, a.err)
		}
	}
	if admitted == nil {
		t.Fatalf("one join token raced on two replicas admitted no node: %v; %v", agents[0].err, agents[1].err)
	}
	svid, _, err := svidfile.Load(admitted.dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("spiffe://%s/capi/cluster/%s/node/%s", trustDomain, cluster, node); svid.ID.String() != want {
		t.Fatalf("the admitted node's SVID is %s, want %s", svid.ID, want)
	}
	ctx, cancel := context.WithTimeout(t.Context(), callBound)
	defer cancel()
	resp, err := f.client(t, f.replicas[0], svid).IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: profileQuota})
	if err != nil || resp.GetCredential().GetCluster() != cluster {
		t.Fatalf("the node admitted through replica %d, asking replica 0: %v, %v; want a credential for its cluster %s", admitted.replica, resp.GetCredential().GetCluster(), err, cluster)
	}
}

// etcdMembers: with one of the three etcd members stopped every process
// goes on issuing; with a second stopped, the quorum lost, every process
// refuses UNAVAILABLE and answers no request OK, and the audit chains hold
// exactly the issued records of the OK answers; with both back every
// process serves again by itself.
func etcdMembers(t *testing.T, f *fleet, svid *x509svid.SVID) {
	const cluster = "ha/members"
	clients := f.clients(t, svid)
	ctx, cancel := context.WithTimeout(t.Context(), callBound)
	defer cancel()
	got := newAnswers()
	// failed counts the answers neither OK nor QUOTA_EXHAUSTED: each a
	// spend that may have committed after its answer was lost.
	failed := 0
	issue := func(i int) error {
		resp, err := clients[i].IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: profileQuota, Cluster: cluster})
		switch {
		case err == nil:
			got.ok(i, resp)
		case status.Code(err) != codes.ResourceExhausted:
			failed++
		}
		return err
	}
	p := poll.New(t, ctx, 50*time.Millisecond)
	// until polls replica i until it answers want; an OK answer before
	// that fails the test when okIsFatal.
	until := func(what string, i int, want codes.Code, okIsFatal bool) {
		t.Helper()
		p.UntilCode(fmt.Sprintf("%s: replica %d", what, i), want, okIsFatal, func() error { return issue(i) })
	}
	checkAudit := func(when string) {
		t.Helper()
		is := f.audit(t, cluster)
		for i := range f.replicas {
			got.matches(t, is, i, 0)
		}
		if is.total() != got.count() {
			t.Fatalf("%s: the audit chains hold %d issued records, want %d (the OK answers)", when, is.total(), got.count())
		}
	}

	for i := range clients {
		if err := issue(i); err != nil {
			t.Fatalf("replica %d with every member up: %v", i, err)
		}
	}
	f.etcd.Stop(0)
	// Twice round: a client may first answer from the member it had, then
	// fail over.
	for round := range 2 {
		for i := range clients {
			until(fmt.Sprintf("one member stopped, round %d", round+1), i, codes.OK, false)
		}
	}

	f.etcd.Stop(1)
	for i := range clients {
		until("the quorum lost", i, codes.Unavailable, true)
	}
	for i := range clients {
		if err := issue(i); status.Code(err) != codes.Unavailable {
			t.Fatalf("replica %d without a quorum: %v, want UNAVAILABLE", i, err)
		}
	}
	checkAudit("without a quorum")
	okWithout := got.count()

	if err := f.etcd.Restart(0, 1); err != nil {
		t.Fatal(err)
	}
	for i := range clients {
		until("the quorum back", i, codes.OK, false)
	}
	checkAudit("with the quorum back")
	// Every OK answer spent its unit; beyond those, only a refused spend
	// that committed after its answer was lost.
	if used := f.used(t, cluster); used < got.count() || used > got.count()+failed {
		t.Fatalf("%d units of the quota used after %d OK answers and %d refused UNAVAILABLE, want %d to %d", used, got.count(), failed, got.count(), got.count()+failed)
	}
	t.Logf("%d OK answers before the quorum was lost, %d after it came back, none without it; %d refused UNAVAILABLE", okWithout, got.count()-okWithout, failed)
}

// processKilled: two clients per process issue on one cluster until its
// quota is spent; after 30 credentials the second process is SIGKILLed
// (while its clients go on; the others' wait for the kill). The other two
// keep serving, with no error, until the quota is spent; the
// killed process, restarted on its data directory, refuses (the quota is
// spent fleet-wide) and its chain verifies. Every OK answer has its one
// issued record in the chain of the process that gave it; the only
// records or spent units without an answer are of requests the kill cut
// off, so the records and those units add up to the quota exactly.
func processKilled(t *testing.T, f *fleet, svid *x509svid.SVID) {
	const cluster, perReplica, killAfter = "ha/kill", 2, 30
	victim := f.replicas[1]
	clients := f.clients(t, svid)
	ctx, cancel := context.WithTimeout(t.Context(), callBound)
	defer cancel()
	got := newAnswers()
	var (
		killing, killed atomic.Bool
		cut             atomic.Int64           // the victim's requests the kill cut off
		afterKill       [replicas]atomic.Int64 // answers to requests sent once the victim was gone
		okSeen          atomic.Int64
		reached         = make(chan struct{})
		gone            = make(chan struct{}) // closed once the victim has exited
	)
	work := func(i int) {
		for {
			if i != victim.n && okSeen.Load() >= killAfter {
				// The others' next requests wait for the kill, so that they
				// answer some sent after it: a fleet quick enough could
				// otherwise spend the quota while the victim is dying.
				select {
				case <-gone:
				case <-ctx.Done():
					return
				}
			}
			sentAfterKill := killed.Load()
			resp, err := clients[i].IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: profileQuota, Cluster: cluster})
			switch {
			case err == nil:
				got.ok(i, resp)
				if okSeen.Add(1) == killAfter {
					close(reached)
				}
			case status.Code(err) == codes.ResourceExhausted && brokerclient.Reason(err) == credbrokerv1.ErrorReason_QUOTA_EXHAUSTED:
				if sentAfterKill {
					afterKill[i].Add(1)
				}
				return
			case i == victim.n && killing.Load():
				// The broker may or may not have spent and recorded it;
				// nothing was received.
				cut.Add(1)
				return
			default:
				t.Errorf("replica %d: %v, want OK or RESOURCE_EXHAUSTED (QUOTA_EXHAUSTED)", i, err)
				return
			}
			if sentAfterKill {
				afterKill[i].Add(1)
			}
		}
	}
	var wg sync.WaitGroup
	for i := range clients {
		for range perReplica {
			wg.Go(func() { work(i) })
		}
	}
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatalf("%d of %d credentials before the kill", okSeen.Load(), killAfter)
	}
	killing.Store(true)
	victim.proc.Kill()
	killed.Store(true)
	close(gone)
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, i := range []int{0, 2} {
		if afterKill[i].Load() == 0 {
			t.Errorf("replica %d answered no request sent after replica %d was killed", i, victim.n)
		}
	}

	f.start(t, victim)
	if _, err := f.client(t, victim, svid).IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: profileQuota, Cluster: cluster}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("the restarted replica %d: %v, want RESOURCE_EXHAUSTED (the quota was spent by the others)", victim.n, err)
	}
	is := f.audit(t, cluster)
	besides := 0
	for i := range f.replicas {
		extra := 0
		if i == victim.n {
			extra = int(cut.Load())
		}
		besides += got.matches(t, is, i, extra)
	}
	// A unit is spent in etcd before its record is appended: a request
	// cut off between the two leaves a unit spent with no record, one cut
	// off after its append a record with no answer; neither both.
	if used := f.used(t, cluster); used != quota {
		t.Fatalf("%d units of the quota used once every process refuses, want %d", used, quota)
	}
	unrecorded := quota - is.total()
	if is.total() > quota || unrecorded+besides > int(cut.Load()) {
		t.Fatalf("%d issued records, %d of them never answered, against a quota of %d, with %d requests cut off by the kill; want at most %d records, and those never answered plus the units spent unrecorded at most the requests cut off",
			is.total(), besides, quota, cut.Load(), quota)
	}
	t.Logf("SIGKILL after %d credentials; %d OK answers in all (%d, %d and %d by the three processes), %d requests cut off by the kill; "+
		"%d issued records: %d never answered, %d units spent unrecorded; requests sent after the kill answered: %d by replica 0, %d by replica 2",
		killAfter, got.count(), len(got.ids[0]), len(got.ids[1]), len(got.ids[2]), cut.Load(),
		is.total(), besides, unrecorded, afterKill[0].Load(), afterKill[2].Load())
}
