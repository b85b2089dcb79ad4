package awssts

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/credbroker/credbroker/attest"
)

// An STS session cannot be revoked on its own. What AWS does honour is a
// Deny in the role's identity policy: it applies to every request signed
// with a session of the role, already issued or not, within seconds of the
// policy change (IAM is eventually consistent). Every session the broker
// mints names its issuance (session tag credbroker:issuance-id), its caller
// (SourceIdentity, see SourceIdentity) and its cluster (session tags
// credbroker:cluster-namespace and credbroker:cluster-name), so a Deny whose
// Condition matches one of those, bounded by aws:TokenIssueTime, takes back
// exactly what a broker revocation covers:
//
//   - an issuance: StringEquals aws:PrincipalTag/credbroker:issuance-id. An
//     issuance id names one session, so no time bound is needed, and every
//     revoked issuance shares one statement.
//   - an identity: StringEquals aws:SourceIdentity (set on every session,
//     unlike the spiffe-id tag, which is left out for IDs over 256
//     characters) AND DateLessThan aws:TokenIssueTime.
//   - a cluster: StringEquals on both cluster tags AND DateLessThan
//     aws:TokenIssueTime.
//
// StringEquals with a list of values matches any of them, so entries with
// the same time bound (and, for clusters, the same namespace) share one
// statement. The time bound is what keeps a deny from outliving its purpose:
// sessions issued after it are not matched, so a deny the broker could not
// remove in time (IAM unreachable) never takes a credential issued after a
// lift or an until.

// Names of the condition keys a deny document matches.
const (
	condIssuance         = "aws:PrincipalTag/" + TagIssuanceID
	condSourceIdentity   = "aws:SourceIdentity"
	condClusterNamespace = "aws:PrincipalTag/" + TagClusterNamespace
	condClusterName      = "aws:PrincipalTag/" + TagClusterName
	condTokenIssueTime   = "aws:TokenIssueTime"
)

// MaxRolePolicyChars is IAM's limit on the inline policies of one role,
// together, in characters not counting whitespace.
const MaxRolePolicyChars = 10240

// ClockAllowance is how much later than the revocation an identity or
// cluster deny's time bound lies, so that a session issued just before the
// revocation is still matched when AWS's clock runs ahead of the broker's.
// Sessions issued in between do not exist: the broker refuses the revoked
// identity or cluster from the revocation on.
const ClockAllowance = time.Minute

// DenyKind says what a Deny matches.
type DenyKind string

// Deny kinds, one per broker revocation kind.
const (
	DenyIssuance DenyKind = "issuance"
	DenyIdentity DenyKind = "identity"
	DenyCluster  DenyKind = "cluster"
)

// Deny is one revocation as a deny document sees it.
type Deny struct {
	// Ref names the revocation it comes from (its id), for reports.
	Ref string
	// Kind says what Target is.
	Kind DenyKind
	// Target is, for DenyIssuance, the issuance id the session carries as
	// its credbroker:issuance-id tag (for a reused credential: the issuance
	// it was minted for); for DenyIdentity, the caller's SPIFFE ID; for
	// DenyCluster, the cluster as "namespace/name".
	Target string
	// IssuedBefore bounds an identity or cluster deny to the sessions
	// issued before it (see DenyBound); required for them, ignored for an
	// issuance, whose id names one session.
	IssuedBefore time.Time
	// Made is when the revocation was made. When not every entry fits,
	// the oldest are kept (see CompileDenyPolicy).
	Made time.Time
}

// DenyBound returns the IssuedBefore of an identity or cluster revocation
// made at made and ending at until (zero: when lifted): made plus
// ClockAllowance, rounded up to the minute so that revocations made close
// together share a statement — but never after until, since sessions
// issued once the revocation has ended are the caller's again, and never
// before made (rounded up to the second: aws:TokenIssueTime counts seconds).
func DenyBound(made, until time.Time) time.Time {
	made = made.UTC()
	b := made.Add(ClockAllowance)
	if t := b.Truncate(time.Minute); t.Before(b) {
		b = t.Add(time.Minute)
	}
	if !until.IsZero() && until.UTC().Truncate(time.Second).Before(b) {
		b = until.UTC().Truncate(time.Second)
	}
	if floor := ceilSecond(made); b.Before(floor) {
		b = floor
	}
	return b
}

func ceilSecond(t time.Time) time.Time {
	if f := t.Truncate(time.Second); f.Before(t) {
		return f.Add(time.Second)
	}
	return t
}

// Check reports whether d can be written as a deny condition: a known kind
// and a target of its form (one a session could carry), and a time bound
// for identity and cluster entries.
func (d Deny) Check() error {
	switch d.Kind {
	case DenyIssuance:
		if err := checkTags([]Tag{{TagIssuanceID, d.Target}}); err != nil || d.Target == "" {
			return fmt.Errorf("awssts: deny %s: issuance id %q is not a session tag value", d.Ref, d.Target)
		}
		return nil
	case DenyIdentity:
		if !strings.HasPrefix(d.Target, "spiffe://") {
			return fmt.Errorf("awssts: deny %s: identity %q is not a SPIFFE ID", d.Ref, d.Target)
		}
	case DenyCluster:
		if _, err := attest.ParseClusterRef(d.Target); err != nil {
			return fmt.Errorf("awssts: deny %s: %w", d.Ref, err)
		}
	default:
		return fmt.Errorf("awssts: deny %s: unknown kind %q", d.Ref, d.Kind)
	}
	if d.IssuedBefore.IsZero() {
		return fmt.Errorf("awssts: deny %s: an %s deny needs a time bound", d.Ref, d.Kind)
	}
	return nil
}

// DenyPolicy is a compiled deny document.
type DenyPolicy struct {
	// Document is the IAM policy, compact JSON, or empty when there is
	// nothing to deny.
	Document string
	// Included are the entries the document denies, oldest first.
	Included []Deny
	// Omitted are the entries that did not fit within the size limit,
	// oldest first. A document with omissions denies less than the broker
	// revoked; whoever applies it must say so loudly.
	Omitted []Deny
	// Chars is the document's size as IAM counts it (whitespace not
	// counted).
	Chars int
}

// CompileDenyPolicy returns the deny document for denies, within maxChars
// characters as IAM counts them (0: MaxRolePolicyChars).
//
// The document is deterministic: the same entries, in any order, give the
// same text, so applying it again changes nothing. Entries for the same
// target are merged (the later time bound covers the earlier one's
// sessions too).
//
// When the document for every entry would be longer than maxChars, the
// oldest entries (by Made, then Ref) that fit are kept and the rest are
// Omitted. Keeping the oldest means an entry once applied is never pushed
// out by a newer one; the choice of which revocations go unenforced at AWS
// is the caller's to report, never silent. Entries are never widened into a
// broader deny to make them fit: that would take credentials the admin did
// not revoke.
//
// Every entry must pass Check. The document is checked with the same
// validator as session policies (see CheckPolicyDocument).
func CompileDenyPolicy(denies []Deny, maxChars int) (DenyPolicy, error) {
	if maxChars <= 0 {
		maxChars = MaxRolePolicyChars
	}
	for _, d := range denies {
		if err := d.Check(); err != nil {
			return DenyPolicy{}, err
		}
	}
	all := merge(denies)
	// The size only grows with the number of entries taken (oldest
	// first), so the longest prefix that fits is found by bisection.
	n := sort.Search(len(all)+1, func(k int) bool {
		doc := denyDocument(all[:k])
		return k > 0 && countChars(doc) > maxChars
	}) - 1
	if n < 0 {
		n = 0
	}
	out := DenyPolicy{Included: all[:n:n], Omitted: all[n:]}
	if len(out.Omitted) == 0 {
		out.Omitted = nil
	}
	if n == 0 {
		out.Included = nil
		return out, nil
	}
	out.Document = denyDocument(out.Included)
	out.Chars = countChars(out.Document)
	if err := CheckPolicyDocument(out.Document); err != nil {
		return DenyPolicy{}, fmt.Errorf("awssts: compiled deny document does not pass the policy check: %w", err)
	}
	return out, nil
}

// merge returns denies with one entry per (kind, target): the latest time
// bound and the earliest Made (and its Ref), oldest first.
func merge(denies []Deny) []Deny {
	type key struct {
		kind   DenyKind
		target string
	}
	byKey := map[key]Deny{}
	for _, d := range denies {
		d.IssuedBefore, d.Made = d.IssuedBefore.UTC(), d.Made.UTC()
		if d.Kind == DenyIssuance {
			d.IssuedBefore = time.Time{}
		}
		k := key{d.Kind, d.Target}
		have, ok := byKey[k]
		if !ok {
			byKey[k] = d
			continue
		}
		if d.IssuedBefore.After(have.IssuedBefore) {
			have.IssuedBefore = d.IssuedBefore
		}
		if d.Made.Before(have.Made) || d.Made.Equal(have.Made) && d.Ref < have.Ref {
			have.Made, have.Ref = d.Made, d.Ref
		}
		byKey[k] = have
	}
	out := make([]Deny, 0, len(byKey))
	for _, d := range byKey {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.Made.Equal(b.Made) {
			return a.Made.Before(b.Made)
		}
		if a.Ref != b.Ref {
			return a.Ref < b.Ref
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Target < b.Target
	})
	return out
}

// denyDocument writes the document for denies (which passed Check and
// merge). Statements: one for every issuance; one per time bound for
// identities; one per (time bound, namespace) for clusters — each in a
// fixed order, values sorted.
func denyDocument(denies []Deny) string {
	if len(denies) == 0 {
		return ""
	}
	type group struct {
		kind      DenyKind
		bound     time.Time
		namespace string
		values    []string
	}
	groups := map[string]*group{}
	for _, d := range denies {
		g := group{kind: d.Kind, bound: d.IssuedBefore}
		value := d.Target
		switch d.Kind {
		case DenyIdentity:
			value = SourceIdentity(d.Target)
		case DenyCluster:
			ref, _ := attest.ParseClusterRef(d.Target)
			g.namespace, value = ref.Namespace, ref.Name
		}
		k := fmt.Sprintf("%d\x00%s\x00%s\x00%s", kindOrder(d.Kind), g.bound.Format(time.RFC3339), g.namespace, d.Kind)
		have, ok := groups[k]
		if !ok {
			have = &g
			groups[k] = have
		}
		have.values = append(have.values, value)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	counts := map[DenyKind]int{}
	stmts := make([]any, 0, len(keys))
	for _, k := range keys {
		g := groups[k]
		sort.Strings(g.values)
		g.values = compactStrings(g.values)
		counts[g.kind]++
		cond := map[string]map[string]any{}
		var sid string
		switch g.kind {
		case DenyIssuance:
			sid = "CredbrokerRevokedIssuances"
			cond["StringEquals"] = map[string]any{condIssuance: g.values}
		case DenyIdentity:
			sid = fmt.Sprintf("CredbrokerRevokedIdentities%d", counts[g.kind])
			cond["StringEquals"] = map[string]any{condSourceIdentity: g.values}
		case DenyCluster:
			sid = fmt.Sprintf("CredbrokerRevokedClusters%d", counts[g.kind])
			cond["StringEquals"] = map[string]any{condClusterNamespace: g.namespace, condClusterName: g.values}
		}
		if !g.bound.IsZero() {
			cond["DateLessThan"] = map[string]any{condTokenIssueTime: g.bound.Format(time.RFC3339)}
		}
		stmts = append(stmts, orderedStatement{sid, cond})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	// Encoding maps of strings and lists of strings cannot fail.
	_ = enc.Encode(struct {
		Version   string `json:"Version"`
		Statement []any  `json:"Statement"`
	}{policyVersion, stmts})
	return strings.TrimSuffix(buf.String(), "\n")
}

// orderedStatement encodes one deny statement with its keys in the order
// IAM shows them (encoding/json sorts only map keys).
type orderedStatement struct {
	Sid       string                    `json:"Sid"`
	Condition map[string]map[string]any `json:"-"`
}

// MarshalJSON implements json.Marshaler.
func (s orderedStatement) MarshalJSON() ([]byte, error) {
	cond, err := marshalNoEscape(s.Condition)
	if err != nil {
		return nil, err
	}
	sid, err := marshalNoEscape(s.Sid)
	if err != nil {
		return nil, err
	}
	return []byte(`{"Sid":` + sid + `,"Effect":"Deny","Action":"*","Resource":"*","Condition":` + cond + `}`), nil
}

func marshalNoEscape(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

func kindOrder(k DenyKind) int {
	switch k {
	case DenyIssuance:
		return 0
	case DenyIdentity:
		return 1
	}
	return 2
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// countChars is a policy's size as IAM counts it: characters, whitespace
// not counted.
func countChars(doc string) int {
	n := 0
	for _, r := range doc {
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}

// CheckPolicyDocument checks an IAM policy document (JSON) with the same
// rules as a session policy template (see CompilePolicy), except the
// session policy's size limit: Version, Statement, and statements of Sid,
// Effect, Action/NotAction, Resource/NotResource and Condition only, every
// Allow scoped by cluster. A document must hold no broker placeholders
// (${cluster.name}, ...): it is applied as is. Errors start with
// "awssts: session policy: ".
func CheckPolicyDocument(doc string) error {
	if !utf8.ValidString(doc) {
		return policyErr("", "not valid UTF-8")
	}
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return policyErr("", "not JSON: %v", err)
	}
	if dec.More() {
		return policyErr("", "trailing data after the document")
	}
	t, err := parsePolicy(jsonToPlain(v))
	if err != nil {
		return err
	}
	if t.usesCluster || t.usesProfile {
		return policyErr("", "holds a broker placeholder; a document is applied as is")
	}
	return nil
}

// jsonToPlain turns json.Number into the float64 or int64 the template
// compiler accepts.
func jsonToPlain(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case []any:
		for i := range v {
			v[i] = jsonToPlain(v[i])
		}
	case map[string]any:
		for k := range v {
			v[k] = jsonToPlain(v[k])
		}
	}
	return v
}
