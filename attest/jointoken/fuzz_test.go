package jointoken_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jointoken"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{16}$`)

// FuzzParse: whatever a node presents as a join token secret, Parse either
// refuses it as an unknown token (a node rejection that does not echo it)
// or it is a canonical secret: "cbjt_" and the unpadded base64url of 32
// bytes, which encodes back to exactly the same string, keyed by its
// SHA-256, with a 16-hex-character id.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"cbjt_" + strings.Repeat("A", 43),
		"cbjt_" + strings.Repeat("A", 42) + "B", // non-canonical final character
		"cbjt_" + strings.Repeat("_", 43),
		"cbjt_" + strings.Repeat("A", 44),
		"CBJT_" + strings.Repeat("A", 43),
		"cbjt_" + strings.Repeat("A", 42) + "=",
		"cbjt_", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, secret string) {
		if id := jointoken.ID(secret); !hexID.MatchString(id) {
			t.Fatalf("ID(%q) = %q, not 16 hex characters", secret, id)
		}
		key, err := jointoken.Parse(secret)
		if err != nil {
			if !errors.Is(err, jointoken.ErrUnknown) || !errors.Is(err, attest.ErrNodeRejected) {
				t.Fatalf("Parse(%q): %v is not an unknown-token node rejection", secret, err)
			}
			if len(secret) >= 8 && strings.Contains(err.Error(), secret) {
				t.Fatalf("refusal echoes the secret: %v", err)
			}
			return
		}
		raw, derr := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(secret, "cbjt_"))
		if !strings.HasPrefix(secret, "cbjt_") || derr != nil || len(raw) != 32 || "cbjt_"+base64.RawURLEncoding.EncodeToString(raw) != secret {
			t.Fatalf("Parse accepted %q, which is not a canonical secret", secret)
		}
		if key != jointoken.KeyOf(secret) {
			t.Fatalf("Parse(%q) keyed it as %x, not by its SHA-256", secret, key)
		}
	})
}

// FuzzNewAndUsable: a token New makes from any randomness is found again by
// Parse under the key New returned; and Usable lets an attempt through only
// before the token expires, while it is unused, and when the node it joins
// as is both named and the one the token is bound to.
func FuzzNewAndUsable(f *testing.F) {
	f.Add(bytes.Repeat([]byte{7}, 32), "team-a/alpha", "ip-10-0-1-23.ec2.internal", "", int64(600), int64(30), false)
	f.Add(bytes.Repeat([]byte{1}, 32), "team-a/alpha", "", "node-1", int64(0), int64(599), false)
	f.Add(bytes.Repeat([]byte{2}, 32), "team-a/alpha", "", "", int64(60), int64(0), false)
	f.Add(bytes.Repeat([]byte{3}, 32), "team-a/alpha", "node-1", "node-2", int64(60), int64(0), false)
	f.Add(bytes.Repeat([]byte{4}, 32), "team-a/alpha", "node-1", "node-1", int64(60), int64(60), false)
	f.Add(bytes.Repeat([]byte{5}, 32), "team-a/alpha", "node-1", "node-1", int64(60), int64(1), true)
	f.Add([]byte{1, 2, 3}, "Team-A/alpha", "", "", int64(-1), int64(0), false)
	now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	f.Fuzz(func(t *testing.T, random []byte, cluster, node, attempt string, ttlSecs, elapsedSecs int64, used bool) {
		secret, key, tok, err := jointoken.New(bytes.NewReader(random), now, cluster, node, time.Duration(ttlSecs)*time.Second)
		if err != nil {
			return // refused: bad cluster, node, ttl or too little randomness
		}
		if !attest.ValidCluster(tok.Cluster) || tok.Cluster != cluster || tok.Node != node || (node != "" && !attest.ValidNodeName(node)) {
			t.Fatalf("New(%q, %q) made %+v", cluster, node, tok)
		}
		if life := tok.ExpiresAt.Sub(tok.CreatedAt); life <= 0 || life > jointoken.MaxTTL {
			t.Fatalf("token lives %s", life)
		}
		if k, err := jointoken.Parse(secret); err != nil || k != key || tok.ID != jointoken.ID(secret) {
			t.Fatalf("the secret New made does not parse to its key and id: %v", err)
		}
		if used {
			tok.UsedAt, tok.UsedBy = tok.CreatedAt, jointoken.NodeFor(tok, attempt)
		}
		at := now.Add(time.Duration(elapsedSecs) * time.Second)
		err = jointoken.Usable(tok, attempt, at)
		if err != nil {
			if !errors.Is(err, attest.ErrNodeRejected) {
				t.Fatalf("Usable: %v is not a node rejection", err)
			}
			if used && !errors.Is(err, jointoken.ErrUsed) {
				t.Fatalf("a used token was refused with %v, not as used", err)
			}
			return
		}
		joins := jointoken.NodeFor(tok, attempt)
		switch {
		case used:
			t.Fatal("a used token is usable again")
		case !at.Before(tok.ExpiresAt):
			t.Fatalf("usable at %s, after it expired at %s", at, tok.ExpiresAt)
		case joins == "":
			t.Fatal("usable with no node named by the token or the attempt")
		case tok.Node != "" && joins != tok.Node, attempt != "" && joins != attempt:
			t.Fatalf("token for node %q usable by an attempt as %q (joins as %q)", tok.Node, attempt, joins)
		}
	})
}
