package statetest

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

func publicKey(issuer, replica, kid string, notAfter time.Time) state.PublicKey {
	return state.PublicKey{Issuer: issuer, Replica: replica, KID: kid, NotAfter: notAfter,
		JWK: []byte(fmt.Sprintf(`{"kty":"EC","crv":"P-256","x":"x-%s","y":"y-%s","kid":%q}`, kid, kid, kid))}
}

func wantKeys(t *testing.T, s state.SigningKeys, issuer string, now time.Time, want ...state.PublicKey) {
	t.Helper()
	got, err := s.ListKeys(ctx, issuer, now)
	if err != nil {
		t.Fatalf("ListKeys(%s): %v", issuer, err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ListKeys(%s) at %s\n got %+v\nwant %+v", issuer, now, got, want)
	}
}

// testSigningKeys: public keys published per issuer, replica and key id,
// listed by replica then key id until their NotAfter, replaced by a
// republication, deleted by one that ends them, never with private
// members, and shared by every replica of the store.
func testSigningKeys(t *testing.T, h Harness) {
	stores := racers(t, h)
	a, b := stores[0], stores[len(stores)-1]
	k1 := publicKey("oidc", "replica-b", "k1", epoch.Add(time.Hour))
	k2 := publicKey("oidc", "replica-a", "k2", epoch.Add(2*time.Hour))
	k3 := publicKey("oidc", "replica-a", "k3", epoch.Add(30*time.Minute))
	other := publicKey("other", "replica-a", "k4", epoch.Add(time.Hour))
	for _, k := range []state.PublicKey{k1, k2, k3, other} {
		if err := a.PublishKey(ctx, k, epoch); err != nil {
			t.Fatal(err)
		}
	}
	wantKeys(t, b, "oidc", epoch, k2, k3, k1)
	wantKeys(t, b, "other", epoch, other)
	wantKeys(t, b, "none", epoch)
	// Past k3's NotAfter it is no longer listed.
	wantKeys(t, a, "oidc", epoch.Add(30*time.Minute), k2, k1)

	// Republished with a later NotAfter (from another replica): extended.
	k3.NotAfter = epoch.Add(3 * time.Hour)
	if err := b.PublishKey(ctx, k3, epoch); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, a, "oidc", epoch.Add(time.Hour), k2, k3)
	// Ended: a NotAfter not after now deletes the key.
	k2.NotAfter = epoch.Add(time.Minute)
	if err := a.PublishKey(ctx, k2, epoch.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, b, "oidc", epoch.Add(time.Minute), k3, k1)
	// Expired keys are deleted by the next publication, not only hidden:
	// listed at a time before their end, they are gone.
	if err := a.PublishKey(ctx, publicKey("oidc", "replica-c", "k5", epoch.Add(4*time.Hour)), epoch.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, b, "oidc", epoch, publicKey("oidc", "replica-a", "k3", epoch.Add(3*time.Hour)), publicKey("oidc", "replica-c", "k5", epoch.Add(4*time.Hour)))

	for _, bad := range []state.PublicKey{
		{Issuer: "oidc", Replica: "r", KID: "p", NotAfter: epoch.Add(time.Hour), JWK: []byte(`{"kty":"EC","crv":"P-256","x":"x","y":"y","d":"secret"}`)},
		{Issuer: "oidc", Replica: "r", KID: "s", NotAfter: epoch.Add(time.Hour), JWK: []byte(`{"kty":"oct","k":"secret"}`)},
	} {
		if err := a.PublishKey(ctx, bad, epoch); !errors.Is(err, state.ErrPrivateKey) {
			t.Fatalf("PublishKey of a private JWK: %v, want ErrPrivateKey", err)
		}
	}
	for _, bad := range []state.PublicKey{
		{Issuer: "", Replica: "r", KID: "k", NotAfter: epoch.Add(time.Hour), JWK: []byte(`{}`)},
		{Issuer: "oidc", Replica: "r\x00x", KID: "k", NotAfter: epoch.Add(time.Hour), JWK: []byte(`{}`)},
		{Issuer: "oidc", Replica: "r", KID: "k", NotAfter: epoch.Add(time.Hour), JWK: []byte(`[1]`)},
		{Issuer: "oidc", Replica: "r", KID: "k", JWK: []byte(`{}`)},
	} {
		if err := a.PublishKey(ctx, bad, epoch); err == nil {
			t.Fatalf("PublishKey(%+v) accepted", bad)
		}
	}
	wantKeys(t, a, "oidc", epoch.Add(2*time.Hour), publicKey("oidc", "replica-a", "k3", epoch.Add(3*time.Hour)), publicKey("oidc", "replica-c", "k5", epoch.Add(4*time.Hour)))
}
