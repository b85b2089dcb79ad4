// Package page implements the admin API's pagination (AIP-158): page sizes
// with a default and a maximum, and opaque page tokens.
//
// A token is base64url(JSON) of a position in one listing (a time and
// sequence number, or a key) together with the listing's name and a digest
// of the request's filters. Tokens are opaque to clients but not secret: the
// admin API is only for admins, who may list everything anyway, so a token
// is not signed (which also keeps it valid across restarts and replicas).
// What matters is that nothing a client sends is trusted blindly: a token is
// decoded strictly, and one that is malformed, from another listing, or
// presented with other filters is refused, so that a page never silently
// belongs to a different query.
package page

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalid matches every error about a bad page size or token; the admin
// API answers it with INVALID_ARGUMENT.
var ErrInvalid = errors.New("page: invalid")

// Size returns the page size for a request's page_size: def for 0, max for
// anything above max (AIP-158 coerces rather than refuses), and an error
// wrapping ErrInvalid for a negative size.
func Size(requested int32, def, max int) (int, error) {
	switch {
	case requested < 0:
		return 0, fmt.Errorf("page_size must not be negative: %w", ErrInvalid)
	case requested == 0:
		return def, nil
	case int(requested) > max:
		return max, nil
	}
	return int(requested), nil
}

// Position is where a listing resumes: after the item at Time and Seq (a
// time-ordered listing), at Seq (a sequence), or after Key (a listing by
// key). Which fields mean something is up to the listing.
type Position struct {
	Time time.Time
	Seq  uint64
	Key  string
}

// maxTokenLen bounds what Decode reads; real tokens are far shorter.
const maxTokenLen = 2048

type token struct {
	Version int    `json:"v"`
	List    string `json:"l"`
	Filter  string `json:"f"`
	Time    int64  `json:"t,omitempty"`
	Seq     uint64 `json:"s,omitempty"`
	Key     string `json:"k,omitempty"`
}

const version = 1

// Filter is a digest of a request's filter values, which a token is bound
// to. Pass every filter field in a fixed order.
func Filter(values ...string) string {
	h := sha256.New()
	for _, v := range values {
		// Length-prefixed, so that ("a", "bc") and ("ab", "c") differ.
		fmt.Fprintf(h, "%d:%s;", len(v), v)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Encode returns the token for resuming listing list (with filter digest
// filter) at p.
func Encode(list, filter string, p Position) string {
	t := token{Version: version, List: list, Filter: filter, Seq: p.Seq, Key: p.Key}
	if !p.Time.IsZero() {
		t.Time = p.Time.UnixNano()
	}
	b, err := json.Marshal(t)
	if err != nil {
		panic(err) // a struct of strings and integers always marshals
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode returns the position in s, which must be a token that Encode made
// for the same listing and filter digest. Errors wrap ErrInvalid and are safe
// to show to the caller.
func Decode(s, list, filter string) (Position, error) {
	bad := func(why string) (Position, error) {
		return Position{}, fmt.Errorf("page_token is %s: %w", why, ErrInvalid)
	}
	if len(s) > maxTokenLen {
		return bad("too long")
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return bad("not a page token")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var t token
	if err := dec.Decode(&t); err != nil || dec.More() {
		return bad("not a page token")
	}
	switch {
	case t.Version != version:
		return bad("from another version of the broker")
	case t.List != list:
		return bad("from another listing")
	case t.Filter != filter:
		return bad("for other filters; repeat the first request's filters with its tokens")
	case t.Time < 0 || strings.ContainsRune(t.Key, 0):
		return bad("not a page token")
	}
	p := Position{Seq: t.Seq, Key: t.Key}
	if t.Time != 0 {
		p.Time = time.Unix(0, t.Time).UTC()
	}
	return p, nil
}
