// Package record is the stored form of the state seam's items, one encoding
// shared by every store (a bbolt file and etcd hold the same bytes). Each
// item has its own record type, separate from the state type, so that the
// encoding does not change when the state type does; times are stored
// without monotonic reading or location (state.NormTime).
package record

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
)

type approval struct {
	ID         string               `json:"id"`
	Digest     string               `json:"digest"`
	Requester  string               `json:"requester"`
	Profile    string               `json:"profile"`
	Cluster    string               `json:"cluster,omitempty"`
	Audience   string               `json:"audience,omitempty"`
	TTL        time.Duration        `json:"ttl_ns"`
	Needed     int                  `json:"needed"`
	CreatedAt  time.Time            `json:"created_at"`
	ExpiresAt  time.Time            `json:"expires_at"`
	Status     state.ApprovalStatus `json:"status"`
	Votes      []vote               `json:"votes,omitempty"`
	GrantedAt  time.Time            `json:"granted_at,omitzero"`
	DeniedBy   string               `json:"denied_by,omitempty"`
	DenyReason string               `json:"deny_reason,omitempty"`
	DeniedAt   time.Time            `json:"denied_at,omitzero"`
	ConsumedBy string               `json:"consumed_by,omitempty"`
	ConsumedAt time.Time            `json:"consumed_at,omitzero"`
}

type vote struct {
	Admin string    `json:"admin"`
	At    time.Time `json:"at"`
}

// EncodeApproval is the stored form of a.
func EncodeApproval(a state.Approval) ([]byte, error) {
	rec := approval{
		ID: a.ID, Digest: a.Digest, Requester: a.Requester, Profile: a.Profile, Cluster: a.Cluster, Audience: a.Audience,
		TTL: a.TTL, Needed: a.Needed, CreatedAt: state.NormTime(a.CreatedAt), ExpiresAt: state.NormTime(a.ExpiresAt), Status: a.Status,
		GrantedAt: state.NormTime(a.GrantedAt), DeniedBy: a.DeniedBy, DenyReason: a.DenyReason, DeniedAt: state.NormTime(a.DeniedAt),
		ConsumedBy: a.ConsumedBy, ConsumedAt: state.NormTime(a.ConsumedAt),
	}
	for _, v := range a.Votes {
		rec.Votes = append(rec.Votes, vote{Admin: v.Admin, At: state.NormTime(v.At)})
	}
	return encode("approval", a.ID, rec)
}

// DecodeApproval reads an approval stored by EncodeApproval.
func DecodeApproval(v []byte) (state.Approval, error) {
	var rec approval
	if err := decode("approval", v, &rec); err != nil {
		return state.Approval{}, err
	}
	a := state.Approval{
		ID: rec.ID, Digest: rec.Digest, Requester: rec.Requester, Profile: rec.Profile, Cluster: rec.Cluster, Audience: rec.Audience,
		TTL: rec.TTL, Needed: rec.Needed, CreatedAt: rec.CreatedAt, ExpiresAt: rec.ExpiresAt, Status: rec.Status,
		GrantedAt: rec.GrantedAt, DeniedBy: rec.DeniedBy, DenyReason: rec.DenyReason, DeniedAt: rec.DeniedAt,
		ConsumedBy: rec.ConsumedBy, ConsumedAt: rec.ConsumedAt,
	}
	for _, v := range rec.Votes {
		a.Votes = append(a.Votes, state.Vote(v))
	}
	return a, nil
}

type token struct {
	ID        string    `json:"id"`
	Cluster   string    `json:"cluster"`
	Node      string    `json:"node,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	UsedAt    time.Time `json:"used_at,omitzero"`
	UsedBy    string    `json:"used_by,omitempty"`
}

// EncodeToken is the stored form of a join token (which holds no secret:
// tokens are stored under their hash).
func EncodeToken(t jointoken.Token) ([]byte, error) { return encode("join token", t.ID, token(t)) }

// DecodeToken reads a join token stored by EncodeToken.
func DecodeToken(v []byte) (jointoken.Token, error) {
	return decodeAs("join token", v, func(r token) jointoken.Token { return jointoken.Token(r) })
}

type node struct {
	SPIFFEID    string    `json:"spiffe_id"`
	Cluster     string    `json:"cluster"`
	Name        string    `json:"name"`
	Attestation string    `json:"attestation"`
	Detail      string    `json:"detail,omitempty"`
	AttestedAt  time.Time `json:"attested_at"`
	RenewedAt   time.Time `json:"renewed_at"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	Serial      string    `json:"serial,omitempty"`
	EvictedAt   time.Time `json:"evicted_at,omitzero"`
}

// EncodeNode is the stored form of n.
func EncodeNode(n state.Node) ([]byte, error) { return encode("node", n.SPIFFEID, node(n)) }

// DecodeNode reads a node stored by EncodeNode.
func DecodeNode(v []byte) (state.Node, error) {
	return decodeAs("node", v, func(r node) state.Node { return state.Node(r) })
}

type revocation struct {
	ID           string               `json:"id"`
	Kind         state.RevocationKind `json:"kind"`
	Target       string               `json:"target"`
	Reason       string               `json:"reason,omitempty"`
	Admin        string               `json:"admin"`
	CreatedAt    time.Time            `json:"created_at"`
	Until        time.Time            `json:"until,omitzero"`
	CoveredUntil time.Time            `json:"covered_until,omitzero"`
	UpstreamRef  string               `json:"upstream_ref,omitempty"`
	Issuer       string               `json:"issuer,omitempty"`
	Profile      string               `json:"profile,omitempty"`
	Origin       string               `json:"origin,omitempty"`
}

// EncodeRevocation is the stored form of r.
func EncodeRevocation(r state.Revocation) ([]byte, error) {
	return encode("revocation", r.ID, revocation(r))
}

// DecodeRevocation reads a revocation stored by EncodeRevocation.
func DecodeRevocation(v []byte) (state.Revocation, error) {
	return decodeAs("revocation", v, func(r revocation) state.Revocation { return state.Revocation(r) })
}

func encode(what, id string, rec any) ([]byte, error) {
	v, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("state: encode %s %s: %w", what, id, err)
	}
	return v, nil
}

// decodeAs decodes a stored record of type R and converts it with conv.
func decodeAs[R, T any](what string, v []byte, conv func(R) T) (T, error) {
	var rec R
	if err := decode(what, v, &rec); err != nil {
		var zero T
		return zero, err
	}
	return conv(rec), nil
}

func decode(what string, v []byte, rec any) error {
	if err := json.Unmarshal(v, rec); err != nil {
		return fmt.Errorf("state: malformed %s record: %w", what, err)
	}
	return nil
}
