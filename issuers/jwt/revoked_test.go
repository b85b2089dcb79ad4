package jwt

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

type servedRevoked struct {
	Issuer   string         `json:"issuer"`
	Complete bool           `json:"complete"`
	Revoked  []RevokedToken `json:"revoked"`
}

func fetchRevoked(t *testing.T, base string) servedRevoked {
	t.Helper()
	resp, err := http.Get(base + RevokedPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %s, %q", RevokedPath, resp.Status, resp.Header.Get("Content-Type"))
	}
	var d servedRevoked
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRevokedList: the list is served over HTTP next to the JWKS and
// advertised in discovery; it holds the source's unexpired entries, drops
// each at its exp without a change being reported, and is rebuilt only after
// a change or an expiry, not on every request.
func TestRevokedList(t *testing.T) {
	now := testNow
	iss, err := New(Config{IssuerURL: testIssuerURL, KeyFile: filepath.Join(t.TempDir(), "k"), Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	defer srv.Close()

	var disc map[string]any
	if err := json.Unmarshal(iss.discovery, &disc); err != nil {
		t.Fatal(err)
	}
	if disc[DiscoveryRevokedKey] != testIssuerURL+RevokedPath {
		t.Errorf("discovery %s = %v", DiscoveryRevokedKey, disc[DiscoveryRevokedKey])
	}
	if d := fetchRevoked(t, srv.URL); !d.Complete || len(d.Revoked) != 0 || d.Issuer != testIssuerURL {
		t.Errorf("without a source: %+v", d)
	}

	var calls atomic.Int32
	entries := []RevokedToken{
		{JTI: "short", Exp: now.Add(time.Minute).Unix()},
		{JTI: "long", Exp: now.Add(time.Hour).Unix()},
		{JTI: "gone", Exp: now.Unix()},
		{Subject: "spiffe://example.org/w", IssuedBefore: now.Unix(), Exp: now.Add(30 * time.Minute).Unix()},
	}
	iss.SetRevokedSource(func() []RevokedToken { calls.Add(1); return entries })
	d := fetchRevoked(t, srv.URL)
	want := []RevokedToken{entries[3], entries[1], entries[0]} // broadest first, then latest exp
	if fmt.Sprint(d.Revoked) != fmt.Sprint(want) || !d.Complete {
		t.Errorf("revoked = %+v, want %+v", d.Revoked, want)
	}
	fetchRevoked(t, srv.URL)
	if n := calls.Load(); n != 1 {
		t.Errorf("source called %d times for two requests without a change, want 1", n)
	}

	// At "short"'s exp it is dropped, with no change reported.
	now = now.Add(time.Minute)
	if d := fetchRevoked(t, srv.URL); fmt.Sprint(d.Revoked) != fmt.Sprint(want[:2]) {
		t.Errorf("after the first exp: %+v", d.Revoked)
	}
	// A change reported is seen on the next request.
	entries = append(entries, RevokedToken{JTI: "new", Exp: now.Add(2 * time.Minute).Unix()})
	iss.InvalidateRevoked()
	if d := fetchRevoked(t, srv.URL); len(d.Revoked) != 3 || d.Revoked[2].JTI != "new" {
		t.Errorf("after a change: %+v", d.Revoked)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("source called %d times, want 3 (first build, expiry, change)", n)
	}
	now = now.Add(time.Hour)
	if d := fetchRevoked(t, srv.URL); len(d.Revoked) != 0 || !d.Complete {
		t.Errorf("after every exp: %+v", d)
	}
}

// TestRevokedListIsBounded: past MaxRevokedEntries the list keeps the
// broadest and latest-expiring entries and says it is incomplete.
func TestRevokedListIsBounded(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "k"))
	srv := httptest.NewServer(iss.Handler())
	defer srv.Close()
	var entries []RevokedToken
	for n := range MaxRevokedEntries + 10 {
		entries = append(entries, RevokedToken{JTI: fmt.Sprintf("jti-%d", n), Exp: testNow.Add(time.Hour + time.Duration(n)*time.Second).Unix()})
	}
	entries = append(entries, RevokedToken{Cluster: "team-a/cluster-1", IssuedBefore: testNow.Unix(), Exp: testNow.Add(time.Minute).Unix()})
	iss.SetRevokedSource(func() []RevokedToken { return entries })
	d := fetchRevoked(t, srv.URL)
	if d.Complete || len(d.Revoked) != MaxRevokedEntries {
		t.Fatalf("complete %v, %d entries; want false, %d", d.Complete, len(d.Revoked), MaxRevokedEntries)
	}
	if d.Revoked[0].Cluster != "team-a/cluster-1" || d.Revoked[1].JTI != fmt.Sprintf("jti-%d", MaxRevokedEntries+9) {
		t.Errorf("kept first: %+v, %+v", d.Revoked[0], d.Revoked[1])
	}
	if last := d.Revoked[len(d.Revoked)-1].JTI; last != "jti-11" {
		t.Errorf("last kept = %s, want jti-11 (the earliest-expiring dropped)", last)
	}
}
