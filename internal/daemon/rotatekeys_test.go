package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/internal/keyfile"

	"github.com/credbroker/credbroker/issuers"
)

// TestReplicaRotatesItsKeyOnDemand: two replicas on a real etcd. Replica
// A's key rotated on demand is published before it signs, so a token A
// mints right after verifies with B's JWKS; the previous key, kept, still
// verifies there. Rotated again with the previous key retired, that key
// leaves etcd at once: B's JWKS drops it at its next round, and a token it
// signed no longer verifies anywhere. With etcd gone a rotation is
// refused and the previous key keeps signing.
func TestReplicaRotatesItsKeyOnDemand(t *testing.T) {
	t.Parallel()
	f := newKeyFleet(t)
	const maxTTL = time.Hour
	a, b := f.replica("replica-a", 0, 0, maxTTL), f.replica("replica-b", 0, 0, maxTTL)
	f.maintain(a, b)
	ctx := context.Background()
	none := func(string, string) error { return nil }

	first := f.mint(a, "first", maxTTL)
	rot, err := a.RotateSigningKey(ctx, false, none)
	if err != nil {
		t.Fatal(err)
	}
	f.maintain(b) // B lists once: nothing of A's runs in between
	second := f.mint(a, "second", maxTTL)
	for name, tok := range map[string]string{"the previous key's": first, "the new key's": second} {
		if err := f.verifies(f.served(b), tok); err != nil {
			t.Fatalf("%s token with B's JWKS: %v", name, err)
		}
	}
	keys, err := b.SigningKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, k := range keys {
		if k.Replica == "replica-a" {
			if k.State != issuers.KeyPublished {
				t.Errorf("B lists A's key %s as %v, want published", k.KID, k.State)
			}
			seen = append(seen, k.KID)
		}
	}
	if len(seen) != 2 || !strings.Contains(strings.Join(seen, ","), rot.KID) || !strings.Contains(strings.Join(seen, ","), rot.PreviousKID) {
		t.Fatalf("B lists A's keys %v, want %s and %s", seen, rot.KID, rot.PreviousKID)
	}

	retired, err := a.RotateSigningKey(ctx, true, none)
	if err != nil {
		t.Fatal(err)
	}
	if f.kids(a)[retired.PreviousKID] {
		t.Fatal("A still serves the key it retired")
	}
	f.maintain(b)
	if f.kids(b)[retired.PreviousKID] {
		t.Fatal("B serves A's retired key after its next round")
	}
	if err := f.verifies(f.served(b), second); err == nil {
		t.Fatal("a token of the retired key verifies with B's JWKS")
	}
	if err := f.verifies(f.served(b), f.mint(a, "third", maxTTL)); err != nil {
		t.Fatalf("a token of A's newest key with B's JWKS: %v", err)
	}
	if err := f.verifies(f.served(b), first); err != nil {
		t.Fatalf("a token of the key retired earlier, kept: %v", err)
	}

	f.etcd.Stop(0)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	before := a.KeyID()
	if _, err := a.RotateSigningKey(sctx, true, func(string, string) error { t.Error("recorded without etcd"); return nil }); err == nil {
		t.Fatal("a rotation without etcd succeeded")
	}
	if a.KeyID() != before {
		t.Fatal("a refused rotation changed the signing key")
	}
}

// TestRotationCutShortIsOnRecordAtStart: a daemon that finds a rotation on
// demand cut short (the new key's file not yet moved over the key file,
// its key_rotated record perhaps written) puts on record at start that the
// rotation did not happen, naming the issuer and the key; the previous key
// still signs. A daemon that finds none writes no such record.
func TestRotationCutShortIsOnRecordAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, _, cfg := productionIdentity(t, dir)
	keyFile := filepath.Join(dir, "oidc.pem")
	cfg += `
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test/oidc", key_file: ` + keyFile + `}}
profiles:
  web-identity: {issuer: oidc, max_ttl: 1h, audiences: [sts.amazonaws.com]}
policy:
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [web-identity]
`
	startDaemon(t, dir, cfg).stop(t)
	previous, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := keyfile.EncodeEC(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile+".rotating", pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, dir, cfg)
	if !strings.Contains(d.logs.String(), "signing key rotation cut short by a stop") {
		t.Errorf("no warning logged:\n%s", d.logs.String())
	}
	d.stop(t)
	if now, err := os.ReadFile(keyFile); err != nil || !bytes.Equal(now, previous) {
		t.Fatalf("the key file changed (%v): the previous key must sign on", err)
	}
	startDaemon(t, dir, cfg).stop(t) // nothing cut short this time

	l := openAudit(t, filepath.Join(dir, "data", DBFile))
	var found []audit.Record
	if err := l.Export(0, func(r audit.Record) error {
		if r.Decision == audit.DecisionFailed && strings.Contains(r.Reason, "cut short") {
			found = append(found, r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Issuer != "oidc" || found[0].UpstreamRef == "" || !strings.Contains(found[0].Reason, found[0].UpstreamRef) {
		t.Fatalf("records of the rotation cut short: %+v, want one naming issuer oidc and the key", found)
	}
}
