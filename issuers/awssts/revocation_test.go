package awssts_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/test/iamfront"
)

var revokedAt = time.Date(2026, 12, 1, 1, 0, 30, 0, time.UTC)

const (
	aliceID = "spiffe://example.org/ns/capi-system/sa/capa-controller-manager"
	bobID   = "spiffe://example.org/ns/capi-system/sa/other"
)

// session is the request context of a session the broker minted for
// caller, cluster ("" or ns/name) and issuance, at issued.
func session(t *testing.T, caller, cluster, issuance string, issued time.Time) iamfront.Session {
	t.Helper()
	return iamfront.SessionOf(t, caller, cluster, issuance, issued)
}

func denies(t *testing.T, doc string, s iamfront.Session) bool {
	t.Helper()
	d, err := iamfront.Denies(doc, s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDenyPolicyDeniesExactlyTheRevoked: one document for an issuance, an
// identity and a cluster revocation passes the policy check and denies the
// sessions each covers — and nothing else: other issuances, other callers,
// a same-named cluster in another namespace, and sessions issued after the
// identity's or cluster's time bound.
func TestDenyPolicyDeniesExactlyTheRevoked(t *testing.T) {
	bound := awssts.DenyBound(revokedAt, time.Time{})
	ds := []awssts.Deny{
		{Ref: "r1", Kind: awssts.DenyIssuance, Target: "0190f0a0-0000-7000-8000-000000000001", Made: revokedAt},
		{Ref: "r2", Kind: awssts.DenyIdentity, Target: aliceID, IssuedBefore: bound, Made: revokedAt},
		{Ref: "r3", Kind: awssts.DenyCluster, Target: "team-a/prod", IssuedBefore: bound, Made: revokedAt},
	}
	p, err := awssts.CompileDenyPolicy(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Included) != 3 || p.Omitted != nil || p.Chars == 0 || p.Chars > awssts.MaxRolePolicyChars {
		t.Fatalf("policy: %d included, %d omitted, %d chars", len(p.Included), len(p.Omitted), p.Chars)
	}
	if err := awssts.CheckPolicyDocument(p.Document); err != nil {
		t.Fatalf("compiled document fails the policy check: %v\n%s", err, p.Document)
	}
	before := revokedAt.Add(-time.Hour)
	for _, c := range []struct {
		name string
		s    iamfront.Session
		want bool
	}{
		{"revoked issuance", session(t, bobID, "", "0190f0a0-0000-7000-8000-000000000001", before), true},
		{"revoked issuance, issued whenever", session(t, bobID, "", "0190f0a0-0000-7000-8000-000000000001", revokedAt.Add(time.Hour)), true},
		{"another issuance", session(t, bobID, "", "0190f0a0-0000-7000-8000-000000000002", before), false},
		{"revoked identity before", session(t, aliceID, "", "i3", before), true},
		{"revoked identity just before", session(t, aliceID, "", "i4", revokedAt.Add(-time.Second)), true},
		{"revoked identity after the bound", session(t, aliceID, "", "i5", bound), false},
		{"revoked cluster before", session(t, bobID, "team-a/prod", "i6", before), true},
		{"same name, other namespace", session(t, bobID, "team-b/prod", "i7", before), false},
		{"same namespace, other name", session(t, bobID, "team-a/dev", "i8", before), false},
		{"revoked cluster after the bound", session(t, bobID, "team-a/prod", "i9", bound.Add(time.Second)), false},
		{"no cluster", session(t, bobID, "", "i10", before), false},
	} {
		if got := denies(t, p.Document, c.s); got != c.want {
			t.Errorf("%s: denied = %v, want %v\n%s", c.name, got, c.want, p.Document)
		}
	}
}

// TestDenyPolicyIsDeterministicAndCompact: the same entries in any order
// give the same text; every issuance shares one statement, identities of
// one time bound another, clusters of one bound and namespace another.
func TestDenyPolicyIsDeterministicAndCompact(t *testing.T) {
	bound := awssts.DenyBound(revokedAt, time.Time{})
	var ds []awssts.Deny
	for i := range 50 {
		ds = append(ds, awssts.Deny{Ref: fmt.Sprintf("r%03d", i), Kind: awssts.DenyIssuance, Target: fmt.Sprintf("0190f0a0-0000-7000-8000-%012d", i), Made: revokedAt})
	}
	ds = append(ds,
		awssts.Deny{Ref: "s1", Kind: awssts.DenyIdentity, Target: aliceID, IssuedBefore: bound, Made: revokedAt},
		awssts.Deny{Ref: "s2", Kind: awssts.DenyIdentity, Target: bobID, IssuedBefore: bound, Made: revokedAt.Add(time.Second)},
		awssts.Deny{Ref: "s3", Kind: awssts.DenyCluster, Target: "team-a/prod", IssuedBefore: bound, Made: revokedAt},
		awssts.Deny{Ref: "s4", Kind: awssts.DenyCluster, Target: "team-a/dev", IssuedBefore: bound, Made: revokedAt},
		awssts.Deny{Ref: "s5", Kind: awssts.DenyCluster, Target: "team-b/prod", IssuedBefore: bound, Made: revokedAt},
		// The same identity revoked twice: one entry, the later bound.
		awssts.Deny{Ref: "s6", Kind: awssts.DenyIdentity, Target: aliceID, IssuedBefore: bound.Add(time.Hour), Made: revokedAt.Add(time.Hour)},
	)
	first, err := awssts.CompileDenyPolicy(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		rng.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
		again, err := awssts.CompileDenyPolicy(ds, 0)
		if err != nil || again.Document != first.Document {
			t.Fatalf("shuffled entries give another document (%v):\n%s\n%s", err, again.Document, first.Document)
		}
	}
	// Statements: issuances; identities at bound (bob); identities at
	// bound+1h (alice, merged); clusters team-a; clusters team-b.
	if n := strings.Count(first.Document, `"Effect":"Deny"`); n != 5 {
		t.Fatalf("%d statements, want 5:\n%s", n, first.Document)
	}
	if len(first.Included) != 55 {
		t.Fatalf("%d entries included, want 55 (alice's two merged)", len(first.Included))
	}
	if !denies(t, first.Document, session(t, aliceID, "", "x", bound.Add(time.Minute))) {
		t.Fatal("the later revocation of the same identity does not cover what it was issued before")
	}
}

// TestDenyPolicyOverTheLimitKeepsTheOldest: when not everything fits, the
// oldest entries are kept whole, the rest reported as omitted, and the
// document stays within the limit; nothing is widened to make it fit.
func TestDenyPolicyOverTheLimitKeepsTheOldest(t *testing.T) {
	var ds []awssts.Deny
	for i := range 400 {
		ds = append(ds, awssts.Deny{Ref: fmt.Sprintf("r%03d", i), Kind: awssts.DenyIssuance,
			Target: fmt.Sprintf("0190f0a0-0000-7000-8000-%012d", i), Made: revokedAt.Add(time.Duration(i) * time.Second)})
	}
	p, err := awssts.CompileDenyPolicy(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p.Chars > awssts.MaxRolePolicyChars || len(p.Omitted) == 0 || len(p.Included)+len(p.Omitted) != 400 {
		t.Fatalf("%d chars, %d included, %d omitted", p.Chars, len(p.Included), len(p.Omitted))
	}
	for i, d := range p.Included {
		if d.Ref != fmt.Sprintf("r%03d", i) {
			t.Fatalf("included[%d] = %s: not the oldest first", i, d.Ref)
		}
	}
	// One more entry would not have fit.
	more, err := awssts.CompileDenyPolicy(ds[:len(p.Included)+1], 0)
	if err != nil || len(more.Omitted) != 1 {
		t.Fatalf("with one more entry: %d omitted, %v", len(more.Omitted), err)
	}
	for _, d := range p.Omitted {
		s := session(t, bobID, "", d.Target, revokedAt)
		if denies(t, p.Document, s) {
			t.Fatalf("omitted entry %s is denied anyway", d.Ref)
		}
	}
	small, err := awssts.CompileDenyPolicy(ds[:3], 100)
	if err != nil || small.Document != "" || len(small.Omitted) != 3 {
		t.Fatalf("a limit nothing fits in: %q, %d omitted, %v", small.Document, len(small.Omitted), err)
	}
	empty, err := awssts.CompileDenyPolicy(nil, 0)
	if err != nil || empty.Document != "" || empty.Included != nil {
		t.Fatalf("no entries: %+v, %v", empty, err)
	}
}

func TestDenyBound(t *testing.T) {
	for _, c := range []struct {
		made, until, want time.Time
	}{
		// made + 1 minute, rounded up to the minute.
		{revokedAt, time.Time{}, time.Date(2026, 12, 1, 1, 2, 0, 0, time.UTC)},
		{time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC), time.Time{}, time.Date(2026, 12, 1, 1, 1, 0, 0, time.UTC)},
		// Never after until...
		{revokedAt, revokedAt.Add(10 * time.Second), revokedAt.Add(10 * time.Second)},
		// ...nor before made (to the second).
		{revokedAt.Add(time.Millisecond), revokedAt.Add(2 * time.Millisecond), revokedAt.Add(time.Second)},
	} {
		if got := awssts.DenyBound(c.made, c.until); !got.Equal(c.want) {
			t.Errorf("DenyBound(%s, %s) = %s, want %s", c.made, c.until, got, c.want)
		}
	}
}

func TestDenyCheckRefusesWhatNoSessionCarries(t *testing.T) {
	for name, d := range map[string]awssts.Deny{
		"empty issuance":      {Kind: awssts.DenyIssuance},
		"issuance with a $":   {Kind: awssts.DenyIssuance, Target: "${aws:username}"},
		"identity not SPIFFE": {Kind: awssts.DenyIdentity, Target: "alice", IssuedBefore: revokedAt},
		"cluster not ns/name": {Kind: awssts.DenyCluster, Target: "prod", IssuedBefore: revokedAt},
		"identity unbounded":  {Kind: awssts.DenyIdentity, Target: aliceID},
		"unknown kind":        {Kind: "node", Target: "x", IssuedBefore: revokedAt},
	} {
		if _, err := awssts.CompileDenyPolicy([]awssts.Deny{d}, 0); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
}

func TestCheckPolicyDocument(t *testing.T) {
	for name, doc := range map[string]string{
		"not JSON":          `{`,
		"trailing data":     `{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*"}} {}`,
		"unscoped allow":    `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`,
		"broker variable":   `{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"arn:aws:s3:::${cluster.name}"}}`,
		"principal":         `{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*","Principal":"*"}}`,
		"empty condition":   `{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*","Condition":{}}}`,
		"unknown statement": `{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*","Foo":1}}`,
	} {
		if err := awssts.CheckPolicyDocument(doc); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := `{"Version":"2012-10-17","Statement":[{"Sid":"X","Effect":"Deny","Action":"*","Resource":"*","Condition":{"NumericLessThan":{"aws:MultiFactorAuthAge":3600}}}]}`
	if err := awssts.CheckPolicyDocument(ok); err != nil {
		t.Errorf("a deny with a numeric condition: %v", err)
	}
}
