package jwtsvid_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jwtsvid"
)

// The fuzz key is derived from a fixed label, so that the committed seeds
// under testdata/fuzz (made with it) verify in every run.
const (
	fuzzKID      = "fuzz-key"
	fuzzAudience = "credbroker"
)

var (
	fuzzTD       = spiffeid.RequireTrustDomainFromString("fuzz.test")
	fuzzSubjects = []spiffeid.ID{
		spiffeid.RequireFromPath(fuzzTD, "/ns/capi-system/sa/capa"),
		spiffeid.RequireFromPath(fuzzTD, "/capi/cluster/team-a/alpha/node/ip-10-0-1-23.ec2.internal"),
	}
)

func fuzzKey(tb testing.TB) *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("credbroker attest/jwtsvid fuzz key"))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// fuzzToken signs claims with the fuzz key under header kid.
func fuzzToken(tb testing.TB, key *ecdsa.PrivateKey, kid string, claims jwt.MapClaims) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// FuzzAuthenticate: whatever authorization value a caller sends, the
// authenticator either refuses it with a "jwtsvid: " error that is valid
// UTF-8 and never contains the token, or accepts a token the fuzz key
// signed for one of the subjects, with that subject's constraints and an
// expiry still ahead.
func FuzzAuthenticate(f *testing.F) {
	key := fuzzKey(f)
	now := time.Now()
	for _, sub := range fuzzSubjects {
		f.Add("Bearer " + fuzzToken(f, key, fuzzKID, jwt.MapClaims{
			"sub": sub.String(), "aud": []string{fuzzAudience}, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		}))
	}
	f.Add("Bearer " + fuzzToken(f, key, "other-kid", jwt.MapClaims{"sub": fuzzSubjects[0].String(), "aud": fuzzAudience, "exp": now.Add(time.Minute).Unix()}))
	f.Add("Bearer " + fuzzToken(f, key, fuzzKID, jwt.MapClaims{"sub": "spiffe://evil.org/x", "aud": fuzzAudience, "exp": now.Add(time.Minute).Unix()}))
	f.Add("Basic dXNlcjpwYXNz")
	f.Add("")

	bundle := jwtbundle.New(fuzzTD)
	if err := bundle.AddJWTAuthority(fuzzKID, key.Public()); err != nil {
		f.Fatal(err)
	}
	a := jwtsvid.New(bundle, []string{fuzzAudience})
	f.Fuzz(func(t *testing.T, auth string) {
		caller, err := a.Authenticate(metadata.NewIncomingContext(context.Background(), metadata.Pairs(jwtsvid.MetadataKey, auth)))
		if err != nil {
			msg := err.Error()
			if errors.Is(err, attest.ErrNoEvidence) {
				t.Fatalf("one authorization value %q reported as no evidence", auth)
			}
			if !strings.HasPrefix(msg, "jwtsvid: ") || !utf8.ValidString(msg) {
				t.Fatalf("refusal %q is not a clean jwtsvid error", msg)
			}
			if _, tok, ok := strings.Cut(auth, " "); ok && len(tok) >= 16 && strings.Contains(msg, tok) {
				t.Fatalf("refusal echoes the token: %q", msg)
			}
			return
		}
		if !slices.Contains(fuzzSubjects, caller.ID) {
			t.Fatalf("accepted a token for %s, which the fuzz key never signed", caller.ID)
		}
		if caller.Method != attest.MethodJWTSVID || caller.Constraints != attest.ConstraintsFor(caller.ID) {
			t.Fatalf("caller %+v: wrong method or constraints", caller)
		}
		if !time.Now().Before(caller.ExpiresAt) {
			t.Fatalf("accepted a token that expired at %s", caller.ExpiresAt)
		}
	})
}
