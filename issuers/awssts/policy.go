package awssts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxPolicyLen is the longest session policy STS accepts, in characters of its compact JSON.
const MaxPolicyLen = 2048

// Upper bounds of the values a template is rendered with. CompilePolicy
// renders every template with values of exactly these lengths, and Render
// refuses longer ones, so a template that compiles never renders too long.
const (
	maxNamespaceLen = 63  // a Kubernetes namespace is a DNS label
	maxClusterLen   = 253 // a Cluster name is a DNS subdomain
	maxProfileLen   = 64
)

// policyVersion is the only policy language version accepted.
const policyVersion = "2012-10-17"

// maxDepth bounds the nesting of a template. A valid IAM policy nests at
// most six levels deep; the bound only stops pathological input early.
const maxDepth = 16

// PolicyVars are the values a template is rendered with.
type PolicyVars struct {
	// ClusterNamespace is the workload cluster's namespace: 1–63 characters
	// of [a-z0-9-]. Required when the template uses the cluster.
	ClusterNamespace string
	// ClusterName is the workload cluster's name: 1–253 characters of
	// [a-z0-9.-]. Required when the template uses the cluster.
	ClusterName string
	// Profile is the profile name: 1–64 characters of [A-Za-z0-9._-].
	// Required when the template uses ${profile}.
	Profile string
}

// PolicyTemplate is a compiled, validated session policy template.
type PolicyTemplate struct {
	root        node
	usesCluster bool
	usesProfile bool
}

// CompilePolicy validates doc (the YAML-decoded template) and returns it compiled.
//
// doc is what go.yaml.in/yaml/v3 decodes into an `any`: maps with string keys,
// lists, strings, booleans and numbers. In string values and map keys the
// placeholders ${cluster.namespace}, ${cluster.name} and ${profile} are
// replaced when the template is rendered; substitution happens on the parsed
// structure, never on JSON text, so a value cannot break out of its string. A
// placeholder whose name contains ':' is an IAM policy variable (such as
// ${aws:username}) and is passed through unchanged, as are IAM's escapes ${*},
// ${?} and ${$}. Any other ${...} is an error.
//
// The template must be an IAM policy a session policy may be: Version
// "2012-10-17", an optional Id, and a Statement that is one object or a
// non-empty list of them. A statement may hold only Sid, Effect, Action or
// NotAction, Resource or NotResource, and Condition (Principal is not allowed
// in a session policy); Effect is Allow or Deny.
//
// Scoping rule: every Allow statement must be scoped to the workload
// cluster. An Allow statement with NotAction or NotResource is rejected. An
// Allow statement is scoped when EVERY entry of its Resource mentions
// ${cluster.name} or ${cluster.namespace}, or when its Condition has an entry
// that mentions one of them under a positive operator — StringEquals,
// StringEqualsIgnoreCase, StringLike, ArnEquals or ArnLike, optionally with
// the ForAnyValue: prefix — either in the condition key or in every one of
// its values. Negated operators, Null, ...IfExists and ForAllValues: do not
// scope, because they are true for resources or requests that carry no
// cluster at all. Deny statements need no scope. A template whose Allow
// statements are not all scoped this way is rejected.
//
// Size rule: the template is rendered with the longest values Render accepts
// (a namespace of 63, a cluster name of 253 and a profile of 64 characters)
// and rejected if that compact JSON is longer than MaxPolicyLen.
//
// Errors start with "awssts: session policy: " and name the offending
// element by its path, e.g. Statement[1].Resource (list indexes count from 0).
func CompilePolicy(doc any) (*PolicyTemplate, error) {
	t, err := parsePolicy(doc)
	if err != nil {
		return nil, err
	}
	worst := PolicyVars{
		ClusterNamespace: strings.Repeat("x", maxNamespaceLen),
		ClusterName:      strings.Repeat("x", maxClusterLen),
		Profile:          strings.Repeat("x", maxProfileLen),
	}
	out, err := t.render(worst)
	if err != nil {
		return nil, err
	}
	if n := utf8.RuneCountInString(out); n > MaxPolicyLen {
		return nil, policyErr("", "too long: with the longest cluster namespace (%d), cluster name (%d) and profile (%d) it renders to %d characters, more than the %d STS accepts",
			maxNamespaceLen, maxClusterLen, maxProfileLen, n, MaxPolicyLen)
	}
	return t, nil
}

// parsePolicy compiles and checks doc, without the session policy's size
// rule (CompilePolicy adds it; CheckPolicyDocument checks role policies).
func parsePolicy(doc any) (*PolicyTemplate, error) {
	if doc == nil {
		return nil, policyErr("", "not an object (got nothing)")
	}
	root, err := compileNode("", doc, 0)
	if err != nil {
		return nil, err
	}
	if err := checkPolicy(root); err != nil {
		return nil, err
	}
	t := &PolicyTemplate{root: root}
	walkStrings(root, func(s tstr) {
		t.usesCluster = t.usesCluster || s.mentionsCluster()
		t.usesProfile = t.usesProfile || s.uses(varProfile)
	})
	return t, nil
}

// Render fills in v and returns the compact JSON policy, checked against MaxPolicyLen.
func (t *PolicyTemplate) Render(v PolicyVars) (string, error) {
	if t.usesCluster {
		if v.ClusterNamespace == "" || v.ClusterName == "" {
			return "", policyErr("", "the template is scoped to a cluster but no cluster was given")
		}
		if err := checkVar("cluster namespace", v.ClusterNamespace, maxNamespaceLen, isNamespaceChar); err != nil {
			return "", err
		}
		if err := checkVar("cluster name", v.ClusterName, maxClusterLen, isClusterChar); err != nil {
			return "", err
		}
	}
	if t.usesProfile {
		if err := checkVar("profile", v.Profile, maxProfileLen, isProfileChar); err != nil {
			return "", err
		}
	}
	out, err := t.render(v)
	if err != nil {
		return "", err
	}
	if n := utf8.RuneCountInString(out); n > MaxPolicyLen {
		return "", policyErr("", "renders to %d characters, more than the %d STS accepts", n, MaxPolicyLen)
	}
	return out, nil
}

// UsesCluster reports whether the template mentions the cluster (a profile whose template does must require a cluster).
func (t *PolicyTemplate) UsesCluster() bool { return t.usesCluster }

// render substitutes v without checking it and returns compact JSON. HTML
// escaping is off so the length is what STS counts.
func (t *PolicyTemplate) render(v PolicyVars) (string, error) {
	val, err := renderNode("", t.root, v)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(val); err != nil {
		return "", policyErr("", "encoding: %v", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// checkVar rejects a value that could widen the policy (wildcards,
// placeholders) or that is longer than the bound CompilePolicy checked with.
func checkVar(what, s string, max int, ok func(rune) bool) error {
	if s == "" {
		return policyErr("", "%s is empty", what)
	}
	if len(s) > max {
		return policyErr("", "%s is %d characters, longer than %d", what, len(s), max)
	}
	for _, r := range s {
		if !ok(r) {
			return policyErr("", "%s %q has the character %q", what, s, r)
		}
	}
	return nil
}

func isLowerAlnum(r rune) bool { return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' }

func isNamespaceChar(r rune) bool { return isLowerAlnum(r) || r == '-' }

func isClusterChar(r rune) bool { return isLowerAlnum(r) || r == '-' || r == '.' }

func isProfileChar(r rune) bool {
	return isLowerAlnum(r) || r >= 'A' && r <= 'Z' || r == '-' || r == '.' || r == '_'
}

func policyErr(path, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	return errors.New("awssts: session policy: " + msg)
}

// varKind says which value a template part stands for.
type varKind uint8

const (
	varNone varKind = iota // literal text
	varNamespace
	varName
	varProfile
)

var placeholders = map[string]varKind{
	"cluster.namespace": varNamespace,
	"cluster.name":      varName,
	"profile":           varProfile,
}

// part is literal text or one placeholder.
type part struct {
	lit string
	v   varKind
}

// tstr is a string with placeholders parsed out.
type tstr []part

// node is one of tstr, tmap, tlist, bool, or a number kept as decoded.
type node any

// tmap is a JSON object, entries sorted by raw key.
type tmap []tentry

type tentry struct {
	key tstr
	val node
}

// tlist is a JSON array.
type tlist []node

func (s tstr) uses(k varKind) bool {
	for _, p := range s {
		if p.v == k {
			return true
		}
	}
	return false
}

func (s tstr) mentionsCluster() bool { return s.uses(varNamespace) || s.uses(varName) }

// literal returns the text of s and whether it has no placeholders.
func (s tstr) literal() (string, bool) {
	var b strings.Builder
	for _, p := range s {
		if p.v != varNone {
			return "", false
		}
		b.WriteString(p.lit)
	}
	return b.String(), true
}

func (s tstr) render(v PolicyVars) string {
	var b strings.Builder
	for _, p := range s {
		switch p.v {
		case varNone:
			b.WriteString(p.lit)
		case varNamespace:
			b.WriteString(v.ClusterNamespace)
		case varName:
			b.WriteString(v.ClusterName)
		case varProfile:
			b.WriteString(v.Profile)
		}
	}
	return b.String()
}

// parseString splits s into literal text and placeholders.
func parseString(path, s string) (tstr, error) {
	var out tstr
	var lit strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			lit.WriteString(s)
			break
		}
		lit.WriteString(s[:i])
		rest := s[i+2:]
		j := strings.IndexByte(rest, '}')
		if j < 0 {
			return nil, policyErr(path, "unterminated placeholder %q", s[i:])
		}
		name := rest[:j]
		k, known := placeholders[name]
		switch {
		case known:
			if lit.Len() > 0 {
				out = append(out, part{lit: lit.String()})
				lit.Reset()
			}
			out = append(out, part{v: k})
		case strings.Contains(name, ":") || name == "*" || name == "?" || name == "$":
			lit.WriteString(s[i : i+2+j+1]) // IAM's own; passed through
		default:
			return nil, policyErr(path, "unknown placeholder ${%s} (want ${cluster.namespace}, ${cluster.name}, ${profile}, or an IAM variable such as ${aws:username})", name)
		}
		s = rest[j+1:]
	}
	if lit.Len() > 0 || len(out) == 0 {
		out = append(out, part{lit: lit.String()})
	}
	return out, nil
}

// compileNode turns a decoded value into a node, checking that it is
// JSON-able and parsing placeholders in strings and map keys.
func compileNode(path string, v any, depth int) (node, error) {
	if depth > maxDepth {
		return nil, policyErr(path, "nested more than %d levels deep", maxDepth)
	}
	if v == nil {
		return nil, policyErr(path, "null is not allowed")
	}
	switch v := v.(type) {
	case string:
		return parseString(path, v)
	case time.Time:
		// YAML decodes an unquoted date such as 2012-10-17 as a timestamp.
		return nil, policyErr(path, "%s is a YAML timestamp, not a string; quote it", v.Format(time.RFC3339))
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Bool:
		return rv.Bool(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int(), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return rv.Uint(), nil
	case reflect.Float32, reflect.Float64:
		f := rv.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, policyErr(path, "%v is not a JSON number", f)
		}
		return f, nil
	case reflect.String:
		return parseString(path, rv.String())
	case reflect.Slice, reflect.Array:
		out := make(tlist, rv.Len())
		for i := range out {
			n, err := compileNode(fmt.Sprintf("%s[%d]", path, i), rv.Index(i).Interface(), depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case reflect.Map:
		keys := make([]string, 0, rv.Len())
		vals := make(map[string]any, rv.Len())
		iter := rv.MapRange()
		for iter.Next() {
			k, ok := iter.Key().Interface().(string)
			if !ok {
				return nil, policyErr(path, "map key %v is not a string", iter.Key().Interface())
			}
			keys = append(keys, k)
			vals[k] = iter.Value().Interface()
		}
		sort.Strings(keys)
		out := make(tmap, 0, len(keys))
		for _, k := range keys {
			kp := childPath(path, k)
			key, err := parseString(kp, k)
			if err != nil {
				return nil, err
			}
			val, err := compileNode(kp, vals[k], depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, tentry{key: key, val: val})
		}
		return out, nil
	}
	return nil, policyErr(path, "%T is not a JSON value", v)
}

// childPath names the member k of the object at path: .Name for plain
// names, ["..."] for anything else.
func childPath(path, k string) string {
	plain := k != ""
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			plain = false
			break
		}
	}
	switch {
	case !plain:
		return fmt.Sprintf("%s[%q]", path, k)
	case path == "":
		return k
	default:
		return path + "." + k
	}
}

func renderNode(path string, n node, v PolicyVars) (any, error) {
	switch n := n.(type) {
	case tstr:
		return n.render(v), nil
	case tlist:
		out := make([]any, len(n))
		for i, e := range n {
			r, err := renderNode(fmt.Sprintf("%s[%d]", path, i), e, v)
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	case tmap:
		out := make(map[string]any, len(n))
		for _, e := range n {
			k := e.key.render(v)
			kp := childPath(path, k)
			if _, dup := out[k]; dup {
				return nil, policyErr(kp, "two keys render to the same name")
			}
			r, err := renderNode(kp, e.val, v)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	}
	return n, nil
}

func walkStrings(n node, f func(tstr)) {
	switch n := n.(type) {
	case tstr:
		f(n)
	case tlist:
		for _, e := range n {
			walkStrings(e, f)
		}
	case tmap:
		for _, e := range n {
			f(e.key)
			walkStrings(e.val, f)
		}
	}
}

// fields indexes an object by literal key, rejecting keys outside allowed.
// A key in forbidden gets its own reason.
func fields(path string, m tmap, allowed []string, forbidden map[string]string) (map[string]node, error) {
	out := make(map[string]node, len(m))
	for _, e := range m {
		k, lit := e.key.literal()
		kp := childPath(path, k)
		if !lit {
			return nil, policyErr(childPath(path, rawKey(e.key)), "placeholders are not allowed in this key")
		}
		if why, bad := forbidden[k]; bad {
			return nil, policyErr(kp, "%s", why)
		}
		known := false
		for _, a := range allowed {
			known = known || a == k
		}
		if !known {
			return nil, policyErr(kp, "unknown key (want one of %s)", strings.Join(allowed, ", "))
		}
		out[k] = e.val
	}
	return out, nil
}

// rawKey is the key as written in the template.
func rawKey(s tstr) string {
	var b strings.Builder
	for _, p := range s {
		if p.v == varNone {
			b.WriteString(p.lit)
			continue
		}
		for name, k := range placeholders {
			if k == p.v {
				b.WriteString("${" + name + "}")
			}
		}
	}
	return b.String()
}

func checkPolicy(root node) error {
	m, ok := root.(tmap)
	if !ok {
		return policyErr("", "not an object (got %s)", kindOf(root))
	}
	f, err := fields("", m, []string{"Version", "Id", "Statement"}, nil)
	if err != nil {
		return err
	}
	v, ok := f["Version"]
	if !ok {
		return policyErr("Version", "missing (want %q)", policyVersion)
	}
	if s, ok := v.(tstr); !ok || !isLiteral(s, policyVersion) {
		return policyErr("Version", "must be %q", policyVersion)
	}
	if id, ok := f["Id"]; ok {
		if _, ok := id.(tstr); !ok {
			return policyErr("Id", "must be a string, not %s", kindOf(id))
		}
	}
	st, ok := f["Statement"]
	if !ok {
		return policyErr("Statement", "missing")
	}
	switch st := st.(type) {
	case tmap:
		return checkStatement("Statement", st)
	case tlist:
		if len(st) == 0 {
			return policyErr("Statement", "empty")
		}
		for i, e := range st {
			p := fmt.Sprintf("Statement[%d]", i)
			m, ok := e.(tmap)
			if !ok {
				return policyErr(p, "must be an object, not %s", kindOf(e))
			}
			if err := checkStatement(p, m); err != nil {
				return err
			}
		}
		return nil
	default:
		return policyErr("Statement", "must be an object or a list of objects, not %s", kindOf(st))
	}
}

var statementKeys = []string{"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}

var forbiddenStatementKeys = map[string]string{
	"Principal":    "Principal is not allowed in a session policy",
	"NotPrincipal": "NotPrincipal is not allowed in a session policy",
}

func checkStatement(path string, m tmap) error {
	f, err := fields(path, m, statementKeys, forbiddenStatementKeys)
	if err != nil {
		return err
	}
	if sid, ok := f["Sid"]; ok {
		s, isStr := sid.(tstr)
		lit, isLit := s.literal()
		if !isStr || !isLit || strings.IndexFunc(lit, func(r rune) bool { return !isSidChar(r) }) >= 0 {
			return policyErr(path+".Sid", "must be letters and digits only")
		}
	}
	eff, ok := f["Effect"]
	if !ok {
		return policyErr(path+".Effect", "missing (want Allow or Deny)")
	}
	es, _ := eff.(tstr)
	allow := isLiteral(es, "Allow")
	if !allow && !isLiteral(es, "Deny") {
		return policyErr(path+".Effect", "must be Allow or Deny")
	}

	actKey, act, err := oneOf(path, f, "Action", "NotAction")
	if err != nil {
		return err
	}
	if _, err := stringList(path+"."+actKey, act); err != nil {
		return err
	}
	resKey, res, err := oneOf(path, f, "Resource", "NotResource")
	if err != nil {
		return err
	}
	resources, err := stringList(path+"."+resKey, res)
	if err != nil {
		return err
	}
	scopingCondition := false
	if c, ok := f["Condition"]; ok {
		if scopingCondition, err = checkCondition(path+".Condition", c); err != nil {
			return err
		}
	}
	if !allow {
		return nil
	}
	if actKey == "NotAction" {
		return policyErr(path+".NotAction", "an Allow statement with NotAction is too broad to scope to a cluster; list the actions")
	}
	if resKey == "NotResource" {
		return policyErr(path+".NotResource", "an Allow statement with NotResource is too broad to scope to a cluster; list the resources")
	}
	if scopingCondition {
		return nil
	}
	for i, r := range resources {
		if r.mentionsCluster() {
			continue
		}
		p := path + ".Resource"
		if _, isList := res.(tlist); isList {
			p = fmt.Sprintf("%s[%d]", p, i)
		}
		return policyErr(p, "Allow statement not scoped to the cluster: %q does not mention ${cluster.name} or ${cluster.namespace}, and no Condition ties the statement to them", rawKey(r))
	}
	return nil
}

// oneOf returns which of the keys a and b the statement has; exactly one is required.
func oneOf(path string, f map[string]node, a, b string) (string, node, error) {
	va, hasA := f[a]
	vb, hasB := f[b]
	switch {
	case hasA && hasB:
		return "", nil, policyErr(path, "has both %s and %s", a, b)
	case hasA:
		return a, va, nil
	case hasB:
		return b, vb, nil
	}
	return "", nil, policyErr(path+"."+a, "missing (a statement needs %s or %s)", a, b)
}

// stringList accepts a non-empty string or a non-empty list of them.
func stringList(path string, n node) ([]tstr, error) {
	if s, ok := n.(tstr); ok {
		if isLiteral(s, "") {
			return nil, policyErr(path, "empty string")
		}
		return []tstr{s}, nil
	}
	l, ok := n.(tlist)
	if !ok {
		return nil, policyErr(path, "must be a string or a list of strings, not %s", kindOf(n))
	}
	if len(l) == 0 {
		return nil, policyErr(path, "empty list")
	}
	out := make([]tstr, len(l))
	for i, e := range l {
		s, ok := e.(tstr)
		if !ok || isLiteral(s, "") {
			return nil, policyErr(fmt.Sprintf("%s[%d]", path, i), "must be a non-empty string")
		}
		out[i] = s
	}
	return out, nil
}

// scopingOperators are the condition operators under which a mention of
// the cluster restricts the statement to it. Negated operators, Null,
// IfExists and ForAllValues: also match requests without the cluster.
var scopingOperators = map[string]bool{
	"StringEquals":           true,
	"StringEqualsIgnoreCase": true,
	"StringLike":             true,
	"ArnEquals":              true,
	"ArnLike":                true,
}

// checkCondition validates a Condition block and reports whether it scopes
// the statement to the cluster.
func checkCondition(path string, n node) (bool, error) {
	ops, ok := n.(tmap)
	if !ok || len(ops) == 0 {
		return false, policyErr(path, "must be a non-empty object of condition operators")
	}
	scoped := false
	for _, op := range ops {
		name, lit := op.key.literal()
		if !lit {
			return false, policyErr(childPath(path, rawKey(op.key)), "placeholders are not allowed in a condition operator")
		}
		opPath := childPath(path, name)
		if name == "" {
			return false, policyErr(opPath, "empty condition operator")
		}
		entries, ok := op.val.(tmap)
		if !ok || len(entries) == 0 {
			return false, policyErr(opPath, "must be a non-empty object of condition keys")
		}
		positive := scopingOperators[strings.TrimPrefix(name, "ForAnyValue:")]
		for _, e := range entries {
			keyPath := childPath(opPath, rawKey(e.key))
			if isLiteral(e.key, "") {
				return false, policyErr(keyPath, "empty condition key")
			}
			values, err := conditionValues(keyPath, e.val)
			if err != nil {
				return false, err
			}
			if !positive {
				continue
			}
			all := len(values) > 0
			for _, v := range values {
				all = all && v.mentionsCluster()
			}
			scoped = scoped || e.key.mentionsCluster() || all
		}
	}
	return scoped, nil
}

// conditionValues accepts a string, bool or number, or a non-empty list of
// them, and returns the strings among them.
func conditionValues(path string, n node) ([]tstr, error) {
	list, isList := n.(tlist)
	if !isList {
		list = tlist{n}
	} else if len(list) == 0 {
		return nil, policyErr(path, "empty list")
	}
	var out []tstr
	for i, e := range list {
		switch e := e.(type) {
		case tstr:
			out = append(out, e)
		case tmap, tlist:
			p := path
			if isList {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			return nil, policyErr(p, "must be a string, number or boolean, not %s", kindOf(e))
		default:
			// A bool or number never mentions the cluster: a list holding
			// one cannot scope, so count it as an unscoped value.
			out = append(out, tstr{{lit: fmt.Sprint(e)}})
		}
	}
	return out, nil
}

func isSidChar(r rune) bool { return isLowerAlnum(r) || r >= 'A' && r <= 'Z' }

func isLiteral(s tstr, want string) bool {
	lit, ok := s.literal()
	return ok && lit == want
}

func kindOf(n node) string {
	switch n.(type) {
	case tstr:
		return "a string"
	case tmap:
		return "an object"
	case tlist:
		return "a list"
	case bool:
		return "a boolean"
	}
	return "a number"
}
