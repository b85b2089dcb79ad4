package record

import (
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
)

// TestStoredFormIsStable pins the bytes stores have already written: a
// change here makes existing bbolt files and etcd prefixes unreadable.
func TestStoredFormIsStable(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		name string
		enc  func() ([]byte, error)
		want string
	}{
		{"node", func() ([]byte, error) {
			return EncodeNode(state.Node{SPIFFEID: "spiffe://td/n", Cluster: "ns/c", Name: "n", Attestation: "join_token", AttestedAt: at, RenewedAt: at})
		}, `{"spiffe_id":"spiffe://td/n","cluster":"ns/c","name":"n","attestation":"join_token","attested_at":"2026-01-02T03:04:05Z","renewed_at":"2026-01-02T03:04:05Z"}`},
		{"revocation", func() ([]byte, error) {
			return EncodeRevocation(state.Revocation{ID: "r", Kind: state.RevokeCluster, Target: "ns/c", Admin: "uid:0", CreatedAt: at})
		}, `{"id":"r","kind":"cluster","target":"ns/c","admin":"uid:0","created_at":"2026-01-02T03:04:05Z"}`},
		{"join token", func() ([]byte, error) {
			return EncodeToken(jointoken.Token{ID: "t", Cluster: "ns/c", CreatedAt: at, ExpiresAt: at})
		}, `{"id":"t","cluster":"ns/c","created_at":"2026-01-02T03:04:05Z","expires_at":"2026-01-02T03:04:05Z"}`},
		{"approval", func() ([]byte, error) {
			return EncodeApproval(state.Approval{ID: "a", Digest: "d", Requester: "spiffe://td/r", Profile: "p", TTL: time.Minute, Needed: 2,
				CreatedAt: at, ExpiresAt: at, Status: state.ApprovalPending, Votes: []state.Vote{{Admin: "uid:0", At: at}}})
		}, `{"id":"a","digest":"d","requester":"spiffe://td/r","profile":"p","ttl_ns":60000000000,"needed":2,"created_at":"2026-01-02T03:04:05Z","expires_at":"2026-01-02T03:04:05Z","status":"pending","votes":[{"admin":"uid:0","at":"2026-01-02T03:04:05Z"}]}`},
	} {
		got, err := c.enc()
		if err != nil || string(got) != c.want {
			t.Errorf("%s: %s, %v\nwant %s", c.name, got, err, c.want)
		}
	}
	if _, err := DecodeNode([]byte("{")); err == nil {
		t.Error("a malformed record decoded")
	}
}
