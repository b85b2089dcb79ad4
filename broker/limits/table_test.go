package limits

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func ptr[T any](v T) *T { return &v }

func TestResolvePrecedenceIsRuleOverProfileOverDefault(t *testing.T) {
	hour := time.Hour
	tab := Table{
		Default: Config{Rate: 1, Burst: 2, IdentityQuota: Quota{Max: 10, Window: hour}, ClusterQuota: Quota{Max: 100, Window: hour}},
		Profiles: map[string]Override{
			"p": {Rate: ptr(rate.Limit(5)), IdentityQuota: &Quota{Max: 20, Window: hour}},
		},
		Rules: []Override{
			{},
			{Burst: ptr(50), ClusterQuota: &Quota{}}, // unlimited cluster quota, explicitly
		},
	}
	cases := []struct {
		rule    int
		profile string
		want    Config
	}{
		{-1, "other", tab.Default},
		{0, "other", tab.Default},
		{-1, "p", Config{Rate: 5, Burst: 2, IdentityQuota: Quota{20, hour}, ClusterQuota: Quota{100, hour}, Scope: "profile p"}},
		{1, "p", Config{Rate: 5, Burst: 50, IdentityQuota: Quota{20, hour}, ClusterQuota: Quota{}, Scope: "rule 1"}},
		{1, "other", Config{Rate: 1, Burst: 50, IdentityQuota: Quota{10, hour}, ClusterQuota: Quota{}, Scope: "rule 1"}},
	}
	for _, c := range cases {
		if got := tab.Resolve(c.rule, c.profile); got != c.want {
			t.Errorf("Resolve(%d, %q) = %+v, want %+v", c.rule, c.profile, got, c.want)
		}
	}
}

func TestTableValidateNamesTheLevel(t *testing.T) {
	tab := Table{Rules: []Override{{}, {Rate: ptr(rate.Limit(5))}}} // a rate with no burst anywhere
	err := tab.Validate()
	if err == nil || !strings.Contains(err.Error(), "rule 1") {
		t.Fatalf("Validate = %v, want an error naming rule 1", err)
	}
	if _, err := New(Config{}, WithOverrides(nil, tab.Rules)); err == nil {
		t.Fatal("New accepted an override that resolves to an invalid configuration")
	}
}

// TestEachScopeHasItsOwnBucket: requests governed by a rule's rate do not
// drain the identity's default bucket, nor the reverse.
func TestEachScopeHasItsOwnBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	l, err := New(Config{Rate: 1, Burst: 1}, WithClock(func() time.Time { return now }),
		WithOverrides(nil, []Override{{Rate: ptr(rate.Limit(1)), Burst: ptr(2)}}))
	if err != nil {
		t.Fatal(err)
	}
	byRule := l.Resolve(0, "p")
	for i := 0; i < 2; i++ {
		if _, err := l.ReserveFor("a", "", byRule); err != nil {
			t.Fatalf("rule's bucket, request %d: %v", i, err)
		}
	}
	if _, err := l.ReserveFor("a", "", byRule); err == nil {
		t.Fatal("rule's bucket past its burst")
	}
	if _, err := l.Reserve("a", ""); err != nil {
		t.Fatalf("default bucket after the rule's was drained: %v", err)
	}
}
