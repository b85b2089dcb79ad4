package awssts_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/credbroker/credbroker/issuers/awssts"
)

const capaTemplate = `
Version: "2012-10-17"
Statement:
  - Sid: ClusterBucket
    Effect: Allow
    Action: ["s3:GetObject", "s3:PutObject"]
    Resource: ["arn:aws:s3:::capi-${cluster.namespace}-${cluster.name}/*"]
  - Sid: OwnedEC2
    Effect: Allow
    Action: ["ec2:TerminateInstances"]
    Resource: "*"
    Condition:
      StringEquals:
        "aws:ResourceTag/sigs.k8s.io/cluster-api-provider-aws/cluster/${cluster.name}": owned
`

var cluster = awssts.PolicyVars{ClusterNamespace: "team-a", ClusterName: "prod-1", Profile: "capa"}

func decode(t *testing.T, src string) any {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return doc
}

func compile(t *testing.T, src string) *awssts.PolicyTemplate {
	t.Helper()
	tmpl, err := awssts.CompilePolicy(decode(t, src))
	if err != nil {
		t.Fatalf("CompilePolicy: %v", err)
	}
	return tmpl
}

func render(t *testing.T, tmpl *awssts.PolicyTemplate, v awssts.PolicyVars) string {
	t.Helper()
	out, err := tmpl.Render(v)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	return out
}

func TestCAPAExampleRenders(t *testing.T) {
	t.Parallel()
	tmpl := compile(t, capaTemplate)
	if !tmpl.UsesCluster() {
		t.Error("UsesCluster() = false, want true")
	}
	got := render(t, tmpl, cluster)
	want := `{"Statement":[` +
		`{"Action":["s3:GetObject","s3:PutObject"],"Effect":"Allow","Resource":["arn:aws:s3:::capi-team-a-prod-1/*"],"Sid":"ClusterBucket"},` +
		`{"Action":["ec2:TerminateInstances"],"Condition":{"StringEquals":{"aws:ResourceTag/sigs.k8s.io/cluster-api-provider-aws/cluster/prod-1":"owned"}},"Effect":"Allow","Resource":"*","Sid":"OwnedEC2"}` +
		`],"Version":"2012-10-17"}`
	if got != want {
		t.Errorf("Render =\n%s\nwant\n%s", got, want)
	}
	// Map order must not leak into the output.
	for range 20 {
		if again := render(t, tmpl, cluster); again != got {
			t.Fatalf("Render not deterministic:\n%s\n%s", again, got)
		}
	}
}

func TestCompileRejects(t *testing.T) {
	t.Parallel()
	const head = "Version: \"2012-10-17\"\nStatement:\n"
	tests := []struct {
		name, src string
		want      []string // substrings of the error
	}{
		{"not an object", `["a"]`, []string{"not an object"}},
		{"empty document", ``, []string{"not an object"}},
		{"missing version", "Statement: {Effect: Deny, Action: '*', Resource: '*'}", []string{"Version: missing"}},
		{"old version", "Version: \"2008-10-17\"\nStatement: {Effect: Deny, Action: '*', Resource: '*'}", []string{`Version: must be "2012-10-17"`}},
		{"unquoted version", "Version: 2012-10-17\nStatement: {Effect: Deny, Action: '*', Resource: '*'}", []string{"Version: 2012-10-17T00:00:00Z is a YAML timestamp, not a string; quote it"}},
		{"unknown top key", "Version: \"2012-10-17\"\nPolicy: x\nStatement: {Effect: Deny, Action: '*', Resource: '*'}", []string{"Policy: unknown key"}},
		{"no statement", `Version: "2012-10-17"`, []string{"Statement: missing"}},
		{"empty statement list", "Version: \"2012-10-17\"\nStatement: []", []string{"Statement: empty"}},
		{"statement not object", head + "  - Deny", []string{"Statement[0]: must be an object"}},
		{"unknown statement key", head + "  - {Effect: Deny, Action: '*', Resource: '*', Actions: x}", []string{"Statement[0].Actions: unknown key"}},
		{"principal", head + "  - {Effect: Allow, Principal: '*', Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.name}'}", []string{"Statement[0].Principal: Principal is not allowed in a session policy"}},
		{"effect", head + "  - {Effect: allow, Action: '*', Resource: '*'}", []string{"Statement[0].Effect: must be Allow or Deny"}},
		{"no effect", head + "  - {Action: '*', Resource: '*'}", []string{"Statement[0].Effect: missing"}},
		{"no action", head + "  - {Effect: Deny, Resource: '*'}", []string{"Statement[0].Action: missing"}},
		{"empty action list", head + "  - {Effect: Deny, Action: [], Resource: '*'}", []string{"Statement[0].Action: empty list"}},
		{"action not string", head + "  - {Effect: Deny, Action: [3], Resource: '*'}", []string{"Statement[0].Action[0]: must be a non-empty string"}},
		{"action and notaction", head + "  - {Effect: Deny, Action: '*', NotAction: 's3:*', Resource: '*'}", []string{"Statement[0]: has both Action and NotAction"}},
		{"no resource", head + "  - {Effect: Deny, Action: '*'}", []string{"Statement[0].Resource: missing"}},
		{"sid with dash", head + "  - {Sid: a-b, Effect: Deny, Action: '*', Resource: '*'}", []string{"Statement[0].Sid: must be letters and digits"}},
		{"unknown placeholder", head + "  - {Effect: Allow, Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.nmae}'}", []string{"Statement[0].Resource: unknown placeholder ${cluster.nmae}"}},
		{"unknown placeholder in key", head + "  - {Effect: Allow, Action: 's3:*', Resource: '*', Condition: {StringEquals: {'aws:ResourceTag/${clustername}': owned}}}", []string{"unknown placeholder ${clustername}"}},
		{"unterminated placeholder", head + "  - {Effect: Allow, Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.name'}", []string{"Statement[0].Resource: unterminated placeholder"}},
		{"placeholder in operator", head + "  - {Effect: Deny, Action: '*', Resource: '*', Condition: {'String${profile}': {a: b}}}", []string{"placeholders are not allowed in a condition operator"}},
		{"condition value object", head + "  - {Effect: Deny, Action: '*', Resource: '*', Condition: {StringEquals: {a: {b: c}}}}", []string{`Statement[0].Condition.StringEquals.a: must be a string, number or boolean`}},
		{"null value", head + "  - {Effect: Deny, Action: '*', Resource: '*', Condition: {StringEquals: {a: }}}", []string{"Statement[0].Condition.StringEquals.a: null is not allowed"}},

		// Unscoped Allow statements.
		{"star without condition", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*'}",
			[]string{"Statement[0].Resource: Allow statement not scoped to the cluster", `"*"`}},
		{"single statement object", "Version: \"2012-10-17\"\nStatement: {Effect: Allow, Action: 'ec2:*', Resource: '*'}",
			[]string{"Statement.Resource: Allow statement not scoped"}},
		{"one of two resources unscoped", head +
			"  - {Effect: Deny, Action: '*', Resource: '*'}\n" +
			"  - {Effect: Allow, Action: 's3:GetObject', Resource: ['arn:aws:s3:::capi-${cluster.name}/*', 'arn:aws:s3:::shared/*']}",
			[]string{"Statement[1].Resource[1]: Allow statement not scoped", "arn:aws:s3:::shared/*"}},
		{"notresource", head + "  - {Effect: Allow, Action: 's3:*', NotResource: 'arn:aws:s3:::${cluster.name}'}",
			[]string{"Statement[0].NotResource: an Allow statement with NotResource is too broad"}},
		{"notaction", head + "  - {Effect: Allow, NotAction: 'iam:*', Resource: 'arn:aws:s3:::${cluster.name}'}",
			[]string{"Statement[0].NotAction: an Allow statement with NotAction is too broad"}},
		{"negated condition", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {StringNotEquals: {'aws:ResourceTag/c/${cluster.name}': owned}}}",
			[]string{"Statement[0].Resource: Allow statement not scoped"}},
		{"ifexists condition", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {StringEqualsIfExists: {'aws:ResourceTag/c/${cluster.name}': owned}}}",
			[]string{"Statement[0].Resource: Allow statement not scoped"}},
		{"forallvalues condition", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {'ForAllValues:StringEquals': {'aws:TagKeys': ['${cluster.name}']}}}",
			[]string{"Statement[0].Resource: Allow statement not scoped"}},
		{"null condition", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {'Null': {'aws:ResourceTag/c/${cluster.name}': 'true'}}}",
			[]string{"Statement[0].Resource: Allow statement not scoped"}},
		{"condition value list with a wildcard", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {StringLike: {'aws:ResourceTag/Cluster': ['${cluster.name}', '*']}}}",
			[]string{"Statement[0].Resource: Allow statement not scoped"}},
		{"condition on profile only", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {StringEquals: {'aws:ResourceTag/Profile': '${profile}'}}}",
			[]string{"Statement[0].Resource: Allow statement not scoped"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := awssts.CompilePolicy(decode(t, tt.src))
			if err == nil {
				t.Fatalf("CompilePolicy = %v, want error", tmpl)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "awssts: session policy: ") {
				t.Errorf("error %q lacks the package prefix", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	t.Parallel()
	const head = "Version: \"2012-10-17\"\nStatement:\n"
	tests := []struct {
		name, src   string
		usesCluster bool
		contains    []string // substrings of the rendered policy
	}{
		{"deny only, no cluster", head + "  - {Effect: Deny, NotAction: 'sts:*', NotResource: '*'}", false,
			[]string{`"NotAction":"sts:*"`}},
		{"single statement object", "Version: \"2012-10-17\"\nId: p1\nStatement: {Effect: Allow, Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.name}'}", true,
			[]string{`"Id":"p1"`, `"Statement":{`, `"Resource":"arn:aws:s3:::prod-1"`}},
		{"scoped by condition value", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {StringEquals: {'aws:ResourceTag/Cluster': '${cluster.namespace}/${cluster.name}'}}}", true,
			[]string{`"aws:ResourceTag/Cluster":"team-a/prod-1"`}},
		{"scoped by ForAnyValue", head + "  - {Effect: Allow, Action: 'ec2:CreateTags', Resource: '*', Condition: {'ForAnyValue:StringLike': {'aws:TagKeys': ['*/cluster/${cluster.name}']}}}", true,
			[]string{`"ForAnyValue:StringLike":{"aws:TagKeys":["*/cluster/prod-1"]}`}},
		{"scoped by one of two conditions", head + "  - {Effect: Allow, Action: 'ec2:*', Resource: '*', Condition: {Bool: {'aws:SecureTransport': true}, ArnLike: {'aws:SourceArn': 'arn:aws:eks:*:*:cluster/${cluster.name}'}}}", true,
			[]string{`"Bool":{"aws:SecureTransport":true}`}},
		{"IAM variables pass through", head + "  - {Effect: Allow, Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.name}/${aws:username}/${aws:PrincipalTag/team, ''none''}/${*}'}", true,
			[]string{`"Resource":"arn:aws:s3:::prod-1/${aws:username}/${aws:PrincipalTag/team, 'none'}/${*}"`}},
		{"profile and literal dollar", head + "  - {Effect: Allow, Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.name}-${profile}/$x&<>'}", true,
			[]string{`"Resource":"arn:aws:s3:::prod-1-capa/$x&<>"`}},
		{"numbers and bools kept", head + "  - {Effect: Allow, Action: 's3:ListBucket', Resource: 'arn:aws:s3:::${cluster.name}', Condition: {NumericLessThanEquals: {'s3:max-keys': 10}, NumericLessThan: {'s3:x': 2.5}, Bool: {'aws:SecureTransport': true}}}", true,
			[]string{`"s3:max-keys":10`, `"s3:x":2.5`, `"aws:SecureTransport":true`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := compile(t, tt.src)
			if got := tmpl.UsesCluster(); got != tt.usesCluster {
				t.Errorf("UsesCluster() = %v, want %v", got, tt.usesCluster)
			}
			out := render(t, tmpl, cluster)
			if !json.Valid([]byte(out)) {
				t.Fatalf("Render produced invalid JSON: %s", out)
			}
			for _, w := range tt.contains {
				if !strings.Contains(out, w) {
					t.Errorf("Render = %s\ndoes not contain %s", out, w)
				}
			}
		})
	}
}

func TestRenderWithoutClusterWhenUnused(t *testing.T) {
	t.Parallel()
	tmpl := compile(t, "Version: \"2012-10-17\"\nStatement: {Effect: Deny, Action: '*', Resource: '*'}")
	if _, err := tmpl.Render(awssts.PolicyVars{}); err != nil {
		t.Fatalf("Render: %v", err)
	}
}

func TestRenderRejectsBadVars(t *testing.T) {
	t.Parallel()
	tmpl := compile(t, "Version: \"2012-10-17\"\nStatement: {Effect: Allow, Action: 's3:*', Resource: 'arn:aws:s3:::${cluster.namespace}-${cluster.name}-${profile}/*'}")
	tests := []struct {
		name string
		v    awssts.PolicyVars
		want string
	}{
		{"no cluster", awssts.PolicyVars{Profile: "p"}, "no cluster was given"},
		{"half a cluster", awssts.PolicyVars{ClusterName: "a", Profile: "p"}, "no cluster was given"},
		{"wildcard name", awssts.PolicyVars{ClusterNamespace: "ns", ClusterName: "*", Profile: "p"}, `cluster name "*" has the character '*'`},
		{"dot in namespace", awssts.PolicyVars{ClusterNamespace: "a.b", ClusterName: "c", Profile: "p"}, "cluster namespace"},
		{"upper case", awssts.PolicyVars{ClusterNamespace: "ns", ClusterName: "Prod", Profile: "p"}, "cluster name"},
		{"long name", awssts.PolicyVars{ClusterNamespace: "ns", ClusterName: strings.Repeat("a", 254), Profile: "p"}, "cluster name is 254 characters, longer than 253"},
		{"long namespace", awssts.PolicyVars{ClusterNamespace: strings.Repeat("a", 64), ClusterName: "c", Profile: "p"}, "cluster namespace is 64 characters"},
		{"quote in profile", awssts.PolicyVars{ClusterNamespace: "ns", ClusterName: "c", Profile: `p"`}, "profile"},
		{"placeholder in profile", awssts.PolicyVars{ClusterNamespace: "ns", ClusterName: "c", Profile: "${aws:username}"}, "profile"},
		{"no profile", awssts.PolicyVars{ClusterNamespace: "ns", ClusterName: "c"}, "profile is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tmpl.Render(tt.v)
			if err == nil {
				t.Fatalf("Render = %s, want error", out)
			}
			if !strings.HasPrefix(err.Error(), "awssts: session policy: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
	// The longest accepted values render.
	render(t, tmpl, awssts.PolicyVars{
		ClusterNamespace: strings.Repeat("a", 63),
		ClusterName:      strings.Repeat("b", 253),
		Profile:          strings.Repeat("C", 64),
	})
}

// oversized builds a template with n copies of a scoped resource.
func oversized(n int) (any, []string) {
	var res []any
	var worst []string
	for i := range n {
		res = append(res, fmt.Sprintf("arn:aws:s3:::${cluster.name}/%d", i))
		worst = append(worst, fmt.Sprintf("arn:aws:s3:::%s/%d", strings.Repeat("x", 253), i))
	}
	doc := map[string]any{
		"Version":   "2012-10-17",
		"Statement": map[string]any{"Effect": "Allow", "Action": "s3:GetObject", "Resource": res},
	}
	return doc, worst
}

func TestCompileRejectsOversized(t *testing.T) {
	t.Parallel()
	doc, worst := oversized(8)
	want, err := json.Marshal(map[string]any{
		"Version":   "2012-10-17",
		"Statement": map[string]any{"Effect": "Allow", "Action": "s3:GetObject", "Resource": worst},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(want) <= awssts.MaxPolicyLen {
		t.Fatalf("test template is only %d characters at worst", len(want))
	}
	_, err = awssts.CompilePolicy(doc)
	if err == nil {
		t.Fatal("CompilePolicy accepted a template that can render longer than MaxPolicyLen")
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("renders to %d characters", len(want))) {
		t.Errorf("error %q does not name the length %d", err, len(want))
	}

	// The same template is short for a short cluster name: only the
	// worst-case rendering is what trips the check.
	short := strings.ReplaceAll(string(want), strings.Repeat("x", 253), "prod-1")
	if len(short) > awssts.MaxPolicyLen {
		t.Fatalf("short rendering is %d characters", len(short))
	}

	// One resource fewer fits even at worst.
	doc, _ = oversized(7)
	tmpl, err := awssts.CompilePolicy(doc)
	if err != nil {
		t.Fatalf("CompilePolicy(7 resources): %v", err)
	}
	out := render(t, tmpl, awssts.PolicyVars{ClusterNamespace: strings.Repeat("x", 63), ClusterName: strings.Repeat("x", 253), Profile: "p"})
	if len(out) > awssts.MaxPolicyLen {
		t.Errorf("compiled template rendered %d characters", len(out))
	}
}

func TestQuotesCannotBreakOut(t *testing.T) {
	t.Parallel()
	// The literal tries to close the string and the statement and open an
	// unscoped Allow; substitution on the structure keeps it one value.
	src := `
Version: "2012-10-17"
Statement:
  - Effect: Allow
    Action: "s3:GetObject"
    Resource: "*"
    Condition:
      StringEquals:
        "aws:ResourceTag/cluster/${cluster.name}": 'x"}},"Effect":"Allow","Resource":"*","Action":"*","z":{"a":"\'
`
	tmpl := compile(t, src)
	out := render(t, tmpl, cluster)
	var got any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("rendered policy does not parse: %v\n%s", err, out)
	}
	want := map[string]any{
		"Version": "2012-10-17",
		"Statement": []any{map[string]any{
			"Effect":   "Allow",
			"Action":   "s3:GetObject",
			"Resource": "*",
			"Condition": map[string]any{"StringEquals": map[string]any{
				"aws:ResourceTag/cluster/prod-1": `x"}},"Effect":"Allow","Resource":"*","Action":"*","z":{"a":"\`,
			}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rendered\n%#v\nwant\n%#v", got, want)
	}
}

func TestRenderRejectsKeyCollision(t *testing.T) {
	t.Parallel()
	tmpl := compile(t, `
Version: "2012-10-17"
Statement:
  - Effect: Allow
    Action: "ec2:*"
    Resource: "*"
    Condition:
      StringEquals:
        "aws:ResourceTag/${cluster.name}": owned
        "aws:ResourceTag/prod-1": shared
`)
	if _, err := tmpl.Render(awssts.PolicyVars{ClusterNamespace: "a", ClusterName: "other"}); err != nil {
		t.Fatalf("Render: %v", err)
	}
	_, err := tmpl.Render(cluster)
	if err == nil || !strings.Contains(err.Error(), "two keys render to the same name") {
		t.Fatalf("Render = %v, want a key collision error", err)
	}
}

func TestCompileRejectsNonStringKeys(t *testing.T) {
	t.Parallel()
	doc := map[any]any{"Version": "2012-10-17", 1: "x"}
	_, err := awssts.CompilePolicy(doc)
	if err == nil || !strings.Contains(err.Error(), "map key 1 is not a string") {
		t.Fatalf("CompilePolicy = %v, want a key error", err)
	}
}
