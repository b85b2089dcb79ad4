package iamfront

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/issuers/awssts"
)

// Session is the request context of a call signed with one STS session:
// what the condition keys the broker's deny documents use evaluate to.
type Session struct {
	// SourceIdentity is aws:SourceIdentity.
	SourceIdentity string
	// Tags are the session tags, each aws:PrincipalTag/<key>.
	Tags map[string]string
	// IssuedAt is aws:TokenIssueTime.
	IssuedAt time.Time
}

// value returns the context's value of a condition key, and whether the
// request has it.
func (s Session) value(key string) (string, bool) {
	switch {
	case strings.EqualFold(key, "aws:SourceIdentity"):
		return s.SourceIdentity, s.SourceIdentity != ""
	case strings.EqualFold(key, "aws:TokenIssueTime"):
		return s.IssuedAt.UTC().Format(time.RFC3339), !s.IssuedAt.IsZero()
	case len(key) > len("aws:PrincipalTag/") && strings.EqualFold(key[:len("aws:PrincipalTag/")], "aws:PrincipalTag/"):
		v, ok := s.Tags[key[len("aws:PrincipalTag/"):]]
		return v, ok
	}
	return "", false
}

// Denies reports whether doc, an identity policy, denies every action of
// session s: whether one of its statements is Effect Deny, Action "*",
// Resource "*", and its Condition holds for s. IAM's rules for what the
// evaluator knows: operators are ANDed, keys within an operator are ANDed,
// the values of one key are ORed, and a key the request lacks makes a
// StringEquals or DateLessThan false. Operators other than StringEquals and
// DateLessThan, or statements of another shape, are an error: the test
// would otherwise trust a verdict the evaluator cannot give.
func Denies(doc string, s Session) (bool, error) {
	var p struct {
		Version   string
		Statement []struct {
			Sid       string
			Effect    string
			Action    any
			Resource  any
			Condition map[string]map[string]any
		}
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return false, fmt.Errorf("iamfront: document: %w", err)
	}
	if p.Version != "2012-10-17" {
		return false, fmt.Errorf("iamfront: version %q", p.Version)
	}
	denied := false
	for _, st := range p.Statement {
		if st.Effect != "Deny" || st.Action != "*" || st.Resource != "*" {
			return false, fmt.Errorf("iamfront: statement %s is not a Deny of everything", st.Sid)
		}
		holds := true
		for _, op := range sortedKeys(st.Condition) {
			for _, key := range sortedKeys(st.Condition[op]) {
				ok, err := condition(op, key, st.Condition[op][key], s)
				if err != nil {
					return false, fmt.Errorf("iamfront: statement %s: %w", st.Sid, err)
				}
				holds = holds && ok
			}
		}
		denied = denied || holds
	}
	return denied, nil
}

func condition(op, key string, raw any, s Session) (bool, error) {
	var values []string
	switch v := raw.(type) {
	case string:
		values = []string{v}
	case []any:
		for _, e := range v {
			str, ok := e.(string)
			if !ok {
				return false, fmt.Errorf("%s %s: value %v is not a string", op, key, e)
			}
			values = append(values, str)
		}
	default:
		return false, fmt.Errorf("%s %s: values %v", op, key, raw)
	}
	have, ok := s.value(key)
	switch op {
	case "StringEquals":
		if !ok {
			return false, nil
		}
		for _, v := range values {
			if v == have {
				return true, nil
			}
		}
		return false, nil
	case "DateLessThan":
		if !ok {
			return false, nil
		}
		at, err := time.Parse(time.RFC3339, have)
		if err != nil {
			return false, err
		}
		for _, v := range values {
			bound, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return false, fmt.Errorf("%s %s: %q is not a date", op, key, v)
			}
			if at.Before(bound) {
				return true, nil
			}
		}
		return false, nil
	}
	return false, fmt.Errorf("operator %s is not one the evaluator knows", op)
}

// SessionOf is the request context of an STS session the broker minted for
// caller (and cluster "ns/name", if any) and issuance at issued: the
// SourceIdentity and session tags issuers/awssts sets on every session.
func SessionOf(tb testing.TB, caller, cluster, issuance string, issued time.Time) Session {
	tb.Helper()
	tv := awssts.TagValues{SPIFFEID: caller, Profile: "capa", IssuanceID: issuance}
	if cluster != "" {
		tv.ClusterNamespace, tv.ClusterName, _ = strings.Cut(cluster, "/")
	}
	tags, err := awssts.SessionTags(tv)
	if err != nil {
		tb.Fatal(err)
	}
	s := Session{SourceIdentity: awssts.SourceIdentity(caller), Tags: map[string]string{}, IssuedAt: issued}
	for _, tag := range tags {
		s.Tags[tag.Key] = tag.Value
	}
	return s
}
