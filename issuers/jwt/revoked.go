package jwt

import (
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"
)

// RevokedPath is where Handler serves the revoked-token list, relative to
// the issuer URL. The discovery document advertises it under
// DiscoveryRevokedKey.
const RevokedPath = "/.well-known/credbroker-revoked-jtis.json"

// DiscoveryRevokedKey is the custom discovery-document member whose value is
// the revoked-token list's URL.
const DiscoveryRevokedKey = "credbroker_revoked_jtis_uri"

// MaxRevokedEntries bounds the revoked-token list. Past it the list keeps
// the broadest entries (identities and clusters) and the latest-expiring
// issuances, and says "complete": false, so a relying party can tell.
const MaxRevokedEntries = 10000

// revokedCacheControl is short: the list is only useful if relying parties
// see a revocation soon after it is made.
const revokedCacheControl = "public, max-age=30"

// RevokedToken is one entry of the revoked-token list. A token is revoked
// when its jti equals JTI, or when its sub equals Subject (or its cluster
// claim equals Cluster) and its iat is at most IssuedBefore. Exp is when
// the last token the entry covers expires; the entry is dropped then.
type RevokedToken struct {
	JTI          string `json:"jti,omitempty"`
	Subject      string `json:"sub,omitempty"`
	Cluster      string `json:"cluster,omitempty"`
	IssuedBefore int64  `json:"issued_before,omitempty"`
	Exp          int64  `json:"exp"`
}

// RevokedSource returns every revocation entry that may still apply,
// expired ones included (the list drops them); it is called only when the
// list is rebuilt.
type RevokedSource func() []RevokedToken

type revokedDoc struct {
	Issuer   string         `json:"issuer"`
	Complete bool           `json:"complete"`
	Revoked  []RevokedToken `json:"revoked"`
}

// revokedList caches the served document. It is rebuilt only when the
// source reports a change (Invalidate) or when an entry of the cached
// document expires, never on every request.
type revokedList struct {
	mu      sync.Mutex
	source  RevokedSource
	dirty   bool
	body    []byte
	nextExp time.Time // the earliest Exp in body; rebuild from then on
}

// SetRevokedSource makes the issuer serve the revoked-token list built from
// src. Call Invalidate whenever what src returns changes (a revocation
// watch). Without a source the list is served empty.
func (i *Issuer) SetRevokedSource(src RevokedSource) {
	i.revoked.mu.Lock()
	i.revoked.source, i.revoked.dirty = src, true
	i.revoked.mu.Unlock()
}

// InvalidateRevoked marks the revoked-token list for rebuilding on its next
// request. It is cheap and safe to call from a revocation watch.
func (i *Issuer) InvalidateRevoked() {
	i.revoked.mu.Lock()
	i.revoked.dirty = true
	i.revoked.mu.Unlock()
}

// revokedBody returns the current document, rebuilding it if a change was
// reported or an entry has expired since it was built.
func (i *Issuer) revokedBody() []byte {
	now := i.clock()
	l := &i.revoked
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.body != nil && !l.dirty && (l.nextExp.IsZero() || now.Before(l.nextExp)) {
		return l.body
	}
	l.dirty = false
	var all []RevokedToken
	if l.source != nil {
		all = l.source()
	}
	l.body, l.nextExp = buildRevoked(i.issuerURL, all, now)
	return l.body
}

// buildRevoked keeps the unexpired entries, broadest first then by latest
// expiry, at most MaxRevokedEntries of them.
func buildRevoked(issuerURL string, all []RevokedToken, now time.Time) ([]byte, time.Time) {
	live := make([]RevokedToken, 0, len(all))
	for _, e := range all {
		if e.Exp > now.Unix() {
			live = append(live, e)
		}
	}
	sort.Slice(live, func(a, b int) bool {
		ba, bb := live[a].JTI == "", live[b].JTI == ""
		if ba != bb {
			return ba
		}
		if live[a].Exp != live[b].Exp {
			return live[a].Exp > live[b].Exp
		}
		return live[a].JTI+live[a].Subject+live[a].Cluster < live[b].JTI+live[b].Subject+live[b].Cluster
	})
	doc := revokedDoc{Issuer: issuerURL, Complete: len(live) <= MaxRevokedEntries, Revoked: live}
	if !doc.Complete {
		doc.Revoked = live[:MaxRevokedEntries]
	}
	var next time.Time
	for _, e := range doc.Revoked {
		if t := time.Unix(e.Exp, 0); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	b, err := json.Marshal(doc)
	if err != nil { // plain strings and integers: cannot fail
		panic("jwt: encoding the revoked-token list: " + err.Error())
	}
	return b, next
}

func (i *Issuer) revokedHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", revokedCacheControl)
		_, _ = w.Write(i.revokedBody())
	})
}
