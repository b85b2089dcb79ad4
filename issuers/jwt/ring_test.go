package jwt

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
)

// TestRotationWithoutStore: one broker, no key store: the key rotates on
// schedule, the new key is in the JWKS publish-ahead before it signs, and
// the old one stays until its last token expired.
func TestRotationWithoutStore(t *testing.T) {
	t.Parallel()
	now := testNow
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "jwt.key")
	iss, err := New(Config{IssuerURL: testIssuerURL, KeyFile: path, Clock: clock, RotationPeriod: 2 * time.Hour, PublishAhead: 10 * time.Minute, MaxTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kids := func() int {
		keys, err := ParseJWKS(iss.JWKS())
		if err != nil {
			t.Fatal(err)
		}
		return len(keys)
	}
	step := func(d time.Duration) {
		t.Helper()
		now = now.Add(d)
		if err := iss.Maintain(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	step(0)
	old := iss.KeyID()
	step(2*time.Hour - 10*time.Minute)
	if iss.KeyID() != old || kids() != 2 {
		t.Fatalf("publish-ahead: kid changed %v, %d keys", iss.KeyID() != old, kids())
	}
	// Without a store a key is published as soon as it is in the JWKS.
	step(10 * time.Minute)
	if iss.KeyID() == old || kids() != 2 {
		t.Fatalf("rotation: kid changed %v, %d keys", iss.KeyID() != old, kids())
	}
	tok, err := iss.Issue(context.Background(), testRequest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(iss.JWKS(), tok.Token, jwtlib.WithTimeFunc(clock)); err != nil {
		t.Fatal(err)
	}
	step(time.Hour)
	if kids() != 1 {
		t.Fatalf("%d keys an hour after the rotation, want 1", kids())
	}
	// Restarted, the issuer signs with the key it rotated to.
	again, err := New(Config{IssuerURL: testIssuerURL, KeyFile: path, Clock: clock, RotationPeriod: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != iss.KeyID() {
		t.Fatal("the rotated key did not survive a restart")
	}
}

func TestRotationConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "jwt.key")
	for _, c := range []Config{
		{RotationPeriod: time.Hour, PublishAhead: time.Hour},
		{RotationPeriod: -time.Hour},
		{Keys: nil, MaxTTL: -1},
	} {
		c.IssuerURL, c.KeyFile = testIssuerURL, path
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), "jwt:") {
			t.Fatalf("New(%+v): %v", c, err)
		}
	}
}
