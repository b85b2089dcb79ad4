package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/issuers/jwt"
)

type listedKey struct {
	Issuer   string `json:"issuer"`
	Kid      string `json:"kid"`
	Replica  string `json:"replica"`
	Alg      string `json:"alg"`
	State    string `json:"state"`
	NotAfter string `json:"not_after"`
}

// TestKeysRotateAtTheRealBroker: keys rotate replaces the real broker's
// signing key without a restart: tokens minted after carry the new kid and
// verify against the JWKS it serves; without --retire-previous a token of
// the previous key still verifies, with it a token of the key it retires
// no longer does. Each rotation is on record naming the admin; keys list
// shows the states.
func TestKeysRotateAtTheRealBroker(t *testing.T) {
	t.Parallel()
	b := startDevBroker(t)
	controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
	mint := func() string {
		t.Helper()
		c, err := issueDev(controller, "")
		if err != nil {
			t.Fatal(err)
		}
		return c.GetToken().GetToken()
	}
	// As a relying party verifies: against the JWKS served over HTTP now.
	verifies := func(token string) error {
		resp, err := http.Get("http://" + b.httpAddr + jwt.JWKSPath)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		jwks, err := io.ReadAll(resp.Body)
		if err == nil {
			_, err = jwt.Verify(jwks, token)
		}
		return err
	}
	keys := func() map[string]listedKey {
		t.Helper()
		out := map[string]listedKey{}
		for _, k := range ctlJSON[[]listedKey](t, b.socket, "keys", "list") {
			out[k.Kid] = k
		}
		return out
	}

	first := mint()
	firstKID := kidOf(t, first)
	if k := keys()[firstKID]; k.State != "SIGNING_KEY_STATE_ACTIVE" || k.Alg != "ES256" || k.Issuer != "local" {
		t.Fatalf("keys list before rotating: %+v, want %s active", keys(), firstKID)
	}

	r := ctl(t, b.socket, "keys", "rotate")
	wantCode(t, r, 0)
	second := mint()
	secondKID := kidOf(t, second)
	if secondKID == firstKID || !strings.Contains(r.stdout, "key "+secondKID+" signs from now on, replacing "+firstKID) {
		t.Fatalf("after keys rotate the token's kid is %s (was %s); output:\n%s", secondKID, firstKID, r.stdout)
	}
	if err := verifies(second); err != nil {
		t.Fatalf("a token of the new key against the JWKS: %v", err)
	}
	if err := verifies(first); err != nil {
		t.Fatalf("a token of the previous key, not retired, against the JWKS: %v", err)
	}
	listed := keys()
	if listed[secondKID].State != "SIGNING_KEY_STATE_ACTIVE" || listed[firstKID].State != "SIGNING_KEY_STATE_RETIRED" || listed[firstKID].NotAfter == "" {
		t.Fatalf("keys list after rotating: %+v", listed)
	}
	rec := findRecord(auditRecords(t, b.socket), "key_rotated", "rotated by unix:uid=", secondKID, firstKID)
	if rec == nil || rec["upstream_ref"] != secondKID || rec["issuer"] != "local" {
		t.Fatalf("no key_rotated record naming the admin and both keys: %v", rec)
	}

	r = ctl(t, b.socket, "keys", "rotate", "--retire-previous")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "warning: --retire-previous") || !strings.Contains(r.stdout, "key "+secondKID+" withdrawn from the JWKS") {
		t.Fatalf("keys rotate --retire-previous: %+v", r)
	}
	third := mint()
	if err := verifies(third); err != nil {
		t.Fatalf("a token of the newest key against the JWKS: %v", err)
	}
	if err := verifies(second); err == nil || !strings.Contains(err.Error(), "is not in the JWKS") {
		t.Fatalf("a token of the retired key verified against the JWKS: %v", err)
	}
	if err := verifies(first); err != nil {
		t.Fatalf("a token of the key retired earlier (without --retire-previous) stopped verifying: %v", err)
	}
	if _, ok := keys()[secondKID]; ok {
		t.Fatal("keys list still shows the retired key")
	}

	r = ctl(t, b.socket, "keys", "rotate", "--issuer", "nope")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, `"nope" is not a local JWT issuer`) {
		t.Fatalf("unknown issuer: %+v", r)
	}
}

// kidOf returns the kid in a JWT's header.
func kidOf(t *testing.T, token string) string {
	t.Helper()
	header, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &h); err != nil || h.Kid == "" {
		t.Fatalf("token header %s: %v", raw, err)
	}
	return h.Kid
}

// TestKeysRotateFailingAfterItsRecord: a rotation whose last step (the new
// key's file replacing the old one) fails leaves the previous key signing,
// and the record that stated the rotation is followed by one saying it
// failed.
func TestKeysRotateFailingAfterItsRecord(t *testing.T) {
	t.Parallel()
	b := startDevBroker(t)
	controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
	c, err := issueDev(controller, "")
	if err != nil {
		t.Fatal(err)
	}
	kid := kidOf(t, c.GetToken().GetToken())
	// The key file turned into a non-empty directory: nothing can replace it.
	keyFile := filepath.Join(b.dir, "jwt_signing_key_local.pem")
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(keyFile, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, b.socket, "keys", "rotate")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "could not be rotated; the previous key still signs (on record)") {
		t.Fatalf("keys rotate: %+v", r)
	}
	if c, err = issueDev(controller, ""); err != nil || kidOf(t, c.GetToken().GetToken()) != kid {
		t.Fatalf("after the failed rotation: %v; signing with the previous key: %v", err, kidOf(t, c.GetToken().GetToken()) == kid)
	}
	recs := auditRecords(t, b.socket)
	rotated := findRecord(recs, "key_rotated", "replacing key "+kid)
	failed := findRecord(recs, "failed", "failed after its record")
	if rotated == nil || failed == nil || failed["upstream_ref"] != rotated["upstream_ref"] || failed["seq"].(float64) <= rotated["seq"].(float64) {
		t.Fatalf("records: rotated %v, failed %v", rotated, failed)
	}
	if _, err := os.Stat(keyFile + ".rotating"); !os.IsNotExist(err) {
		t.Fatalf("the unused key's file was left behind: %v", err)
	}
}
