package policy

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestAllow(t *testing.T) {
	p, err := New([]Rule{
		{ID: "spiffe://example.org/ns/*/sa/capa-controller-manager", Profiles: []string{"capa"}, Clusters: []string{"capi-*/*"}},
		{ID: "spiffe://example.org/ns/demo/sa/controller", Profiles: []string{"dev-token"}},
		{ID: "spiffe://example.org/admin", Profiles: []string{"*"}, Clusters: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, id, profile, cluster string
		allowed                    bool
		reason                     string
	}{
		{"pattern and cluster", "spiffe://example.org/ns/capa-system/sa/capa-controller-manager", "capa", "capi-prod/c1", true, "rule 0"},
		{"cluster outside pattern", "spiffe://example.org/ns/capa-system/sa/capa-controller-manager", "capa", "other/c1", false, `for cluster "other/c1"`},
		{"cluster rule needs cluster", "spiffe://example.org/ns/capa-system/sa/capa-controller-manager", "capa", "", false, `profile "capa"`},
		{"star is one segment", "spiffe://example.org/ns/a/b/sa/capa-controller-manager", "capa", "capi-x/y", false, "no policy rule matches"},
		{"profile not granted", "spiffe://example.org/ns/demo/sa/controller", "capa", "", false, `profile "capa"`},
		{"no cluster restriction", "spiffe://example.org/ns/demo/sa/controller", "dev-token", "any/where", true, "rule 1"},
		{"other trust domain", "spiffe://evil.org/ns/demo/sa/controller", "dev-token", "", false, "no policy rule matches"},
		{"wildcard profile", "spiffe://example.org/admin", "anything", "a/b", true, "rule 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Allow(spiffeid.RequireFromString(tt.id), tt.profile, tt.cluster)
			if d.Allowed != tt.allowed || !strings.Contains(d.Reason, tt.reason) {
				t.Fatalf("Allow = %+v, want allowed=%v reason containing %q", d, tt.allowed, tt.reason)
			}
		})
	}
}

func TestNewRejectsBadRules(t *testing.T) {
	for _, r := range []Rule{
		{ID: "", Profiles: []string{"p"}},
		{ID: "https://example.org/x", Profiles: []string{"p"}},
		{ID: "spiffe://example.org/[", Profiles: []string{"p"}},
		{ID: "spiffe://Example.org/x", Profiles: []string{"p"}},
		{ID: "spiffe://example.org/x"},
		{ID: "spiffe://example.org/x", Profiles: []string{"p"}, Clusters: []string{"nonamespace"}},
		{ID: "spiffe://example.org/x", Profiles: []string{"p"}, Clusters: []string{"a/[/"}},
	} {
		if _, err := New([]Rule{r}); err == nil {
			t.Errorf("New(%+v) accepted a bad rule", r)
		} else if !strings.HasPrefix(err.Error(), "policy: rule 0") {
			t.Errorf("error %q does not name the rule", err)
		}
	}
}
