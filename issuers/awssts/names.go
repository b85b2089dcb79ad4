package awssts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds STS puts on the names and tags of a session.
const (
	minSessionName = 2
	maxSessionName = 64
	maxTags        = 50
	maxTagKeyLen   = 128
	maxTagValueLen = 256
	// hashedTailLen is how much of a mapped name the hashed form keeps:
	// 8 hex digits, a '.', and 55 characters make 64.
	hashedTailLen = maxSessionName - 9
)

// Session tag keys set on every issuance.
const (
	TagSPIFFEID         = "credbroker:spiffe-id"
	TagProfile          = "credbroker:profile"
	TagClusterNamespace = "credbroker:cluster-namespace"
	TagClusterName      = "credbroker:cluster-name"
	TagIssuanceID       = "credbroker:issuance-id"
)

// SourceIdentity maps a SPIFFE ID to an STS SourceIdentity: 2–64 chars of [A-Za-z0-9_+=,.@-], stable.
//
// The SPIFFE ID spiffe://TD/p1/p2/... becomes p1.p2...@TD: each '/' of the
// path becomes '.', and every character outside [A-Za-z0-9_+=,.@-] becomes
// '-'. An ID without a path becomes @TD.
//
// The hashed form <h>.<tail> is used instead when the result is longer than
// 64 characters, shorter than 2, or ambiguous — when the mapping had to
// replace a character, or the path itself holds a '.' or '@' (which the
// mapping uses as separators), or the ID does not start with spiffe://. <h>
// is the first 8 hex digits of the SHA-256 of the full SPIFFE ID, and <tail>
// the last 55 characters of the mapped string (all of it when shorter), so
// the distinctive end — usually the service account — survives, and two IDs
// that map alike still differ.
func SourceIdentity(spiffeID string) string {
	td, path, ok := splitID(spiffeID)
	p, pathClean := mapPath(path)
	t, tdClean := mapChars(td, false)
	return sessionName(spiffeID, p+"@"+t, ok && pathClean && tdClean)
}

// RoleSessionName maps a SPIFFE ID to an STS RoleSessionName (2–64 chars, same character set), stable.
//
// It is SourceIdentity's rule applied to the path alone: spiffe://TD/p1/p2/...
// becomes p1.p2..., with the same replacements, and the same hashed form
// (hash of the full SPIFFE ID) when the result is longer than 64 characters,
// shorter than 2, or ambiguous. An ID without a path maps as SourceIdentity
// does, to @TD.
func RoleSessionName(spiffeID string) string {
	_, path, ok := splitID(spiffeID)
	if path == "" {
		return SourceIdentity(spiffeID)
	}
	p, clean := mapPath(path)
	return sessionName(spiffeID, p, ok && clean)
}

// splitID splits spiffe://TD/PATH into TD and PATH. ok is false when id
// does not start with spiffe://; then the whole id is treated as a path.
func splitID(id string) (td, path string, ok bool) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", id, false
	}
	td, path, _ = strings.Cut(rest, "/")
	return td, path, true
}

// mapPath maps a SPIFFE path: '/' becomes '.', other characters as
// mapChars. clean is also false when the path already held '.' or '@',
// which the result uses as separators.
func mapPath(path string) (string, bool) { return mapChars(path, true) }

// mapChars replaces characters outside the STS set with '-' (and, in a
// path, '/' with '.'). clean is false when anything was replaced.
func mapChars(s string, path bool) (string, bool) {
	clean := true
	var b strings.Builder
	for _, r := range s {
		switch {
		case path && r == '/':
			b.WriteByte('.')
		case path && (r == '.' || r == '@'):
			clean = false
			b.WriteRune(r)
		case isSessionNameChar(r):
			b.WriteRune(r)
		default:
			clean = false
			b.WriteByte('-')
		}
	}
	return b.String(), clean
}

func isSessionNameChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_+=,.@-", r)
}

// sessionName returns mapped when it is clean and within STS's bounds, else
// the hashed form. mapped is ASCII, so bytes are characters.
func sessionName(id, mapped string, clean bool) string {
	if clean && len(mapped) >= minSessionName && len(mapped) <= maxSessionName {
		return mapped
	}
	sum := sha256.Sum256([]byte(id))
	if len(mapped) > hashedTailLen {
		mapped = mapped[len(mapped)-hashedTailLen:]
	}
	return hex.EncodeToString(sum[:4]) + "." + mapped
}

// TagValues are the facts of one issuance that become session tags.
type TagValues struct {
	// SPIFFEID is the caller.
	SPIFFEID string
	// Profile is the profile name.
	Profile string
	// ClusterNamespace and ClusterName name the workload cluster; both are
	// empty when the credential is not scoped to one.
	ClusterNamespace, ClusterName string
	// IssuanceID names the issuance in the audit trail.
	IssuanceID string
}

// Tag is one STS session tag.
type Tag struct {
	Key, Value string
}

// SessionTags returns the STS session tags for one issuance, validated against STS limits.
//
// The tags, in this order: credbroker:spiffe-id (omitted when the SPIFFE ID
// is longer than 256 characters; SourceIdentity still names the caller),
// credbroker:profile, credbroker:cluster-namespace and credbroker:cluster-name
// (both omitted when there is no cluster), credbroker:issuance-id. STS limits
// enforced: at most 50 tags, keys of 1–128 and values of at most 256
// characters, all of [\p{L}\p{Z}\p{N}_.:/=+\-@], keys not starting with
// "aws:" (in any case) and not repeated (in any case). The SPIFFE ID,
// profile and issuance ID must not be empty, and a cluster needs both its
// namespace and its name. Errors read "awssts: session tag <key>: ...".
func SessionTags(t TagValues) ([]Tag, error) {
	if (t.ClusterNamespace == "") != (t.ClusterName == "") {
		return nil, fmt.Errorf("awssts: session tag %s: a cluster needs both a namespace and a name", TagClusterName)
	}
	var tags []Tag
	if t.SPIFFEID == "" {
		return nil, fmt.Errorf("awssts: session tag %s: empty", TagSPIFFEID)
	}
	if utf8.RuneCountInString(t.SPIFFEID) <= maxTagValueLen {
		tags = append(tags, Tag{TagSPIFFEID, t.SPIFFEID})
	}
	tags = append(tags, Tag{TagProfile, t.Profile})
	if t.ClusterName != "" {
		tags = append(tags, Tag{TagClusterNamespace, t.ClusterNamespace}, Tag{TagClusterName, t.ClusterName})
	}
	tags = append(tags, Tag{TagIssuanceID, t.IssuanceID})
	for _, tag := range tags {
		if tag.Value == "" {
			return nil, fmt.Errorf("awssts: session tag %s: empty", tag.Key)
		}
	}
	if err := checkTags(tags); err != nil {
		return nil, err
	}
	return tags, nil
}

// checkTags enforces STS's limits on session tags.
func checkTags(tags []Tag) error {
	if len(tags) > maxTags {
		return fmt.Errorf("awssts: session tags: %d tags, more than the %d STS accepts", len(tags), maxTags)
	}
	seen := make(map[string]bool, len(tags))
	for _, tag := range tags {
		lower := strings.ToLower(tag.Key)
		switch n := utf8.RuneCountInString(tag.Key); {
		case n == 0:
			return fmt.Errorf("awssts: session tag %q: empty key", tag.Key)
		case n > maxTagKeyLen:
			return fmt.Errorf("awssts: session tag %s: key is %d characters, more than %d", tag.Key, n, maxTagKeyLen)
		case strings.HasPrefix(lower, "aws:"):
			return fmt.Errorf("awssts: session tag %s: keys starting with aws: are reserved", tag.Key)
		case seen[lower]:
			return fmt.Errorf("awssts: session tag %s: repeated", tag.Key)
		}
		seen[lower] = true
		if i := strings.IndexFunc(tag.Key, notTagChar); i >= 0 {
			return fmt.Errorf("awssts: session tag %q: key has the character %q", tag.Key, firstRune(tag.Key[i:]))
		}
		if n := utf8.RuneCountInString(tag.Value); n > maxTagValueLen {
			return fmt.Errorf("awssts: session tag %s: value is %d characters, more than %d", tag.Key, n, maxTagValueLen)
		}
		if i := strings.IndexFunc(tag.Value, notTagChar); i >= 0 {
			return fmt.Errorf("awssts: session tag %s: value has the character %q", tag.Key, firstRune(tag.Value[i:]))
		}
	}
	return nil
}

// notTagChar reports a character outside [\p{L}\p{Z}\p{N}_.:/=+\-@].
// Invalid UTF-8 decodes to U+FFFD, which is outside it too.
func notTagChar(r rune) bool {
	return !(unicode.In(r, unicode.L, unicode.Z, unicode.N) || strings.ContainsRune("_.:/=+-@", r))
}

func firstRune(s string) rune {
	r, _ := utf8.DecodeRuneInString(s)
	return r
}
