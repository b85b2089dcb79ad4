package awssts

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzCompilePolicy: whatever document an operator writes, a template that
// compiles renders, for any valid cluster, to JSON within STS's limit that
// still mentions the cluster in every Allow statement.
func FuzzCompilePolicy(f *testing.F) {
	for _, seed := range []string{
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::capi/${cluster.namespace}/${cluster.name}/*"}]}`,
		`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["ec2:*"],"Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/sigs.k8s.io/cluster-api-provider-aws/cluster/${cluster.name}":"owned"}}}}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"${aws:username}/${cluster.name}"}]}`,
		`{}`, `[]`, `"x"`,
	} {
		f.Add([]byte(seed), "team-a", "alpha")
	}
	f.Fuzz(func(t *testing.T, doc []byte, ns, name string) {
		var v any
		if json.Unmarshal(doc, &v) != nil {
			return
		}
		tmpl, err := CompilePolicy(v)
		if err != nil {
			return
		}
		if !utf8.ValidString(ns) || !utf8.ValidString(name) {
			return
		}
		out, err := tmpl.Render(PolicyVars{ClusterNamespace: ns, ClusterName: name, Profile: "capa"})
		if err != nil {
			return // invalid names are refused, never rendered
		}
		if utf8.RuneCountInString(out) > MaxPolicyLen {
			t.Fatalf("rendered %d characters, over the %d limit", utf8.RuneCountInString(out), MaxPolicyLen)
		}
		var back map[string]any
		if err := json.Unmarshal([]byte(out), &back); err != nil {
			t.Fatalf("rendered policy is not JSON: %v\n%s", err, out)
		}
		if tmpl.UsesCluster() && !strings.Contains(out, name) {
			t.Fatalf("a cluster-scoped template rendered without the cluster name %q:\n%s", name, out)
		}
	})
}
