package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Decision is what the broker decided for one request.
type Decision string

// Decisions recorded in the log.
const (
	// DecisionIntent is written durably before an upstream issuer is called.
	DecisionIntent Decision = "intent"
	// DecisionIssued records a credential that was minted.
	DecisionIssued Decision = "issued"
	// DecisionDenied records a request refused by attestation or policy.
	DecisionDenied Decision = "denied"
	// DecisionThrottled records a request refused by a rate limit or quota.
	DecisionThrottled Decision = "throttled"
	// DecisionFailed records an issuance that failed after its intent.
	DecisionFailed Decision = "failed"
	// DecisionRevoked records an identity or credential revoked by an admin
	// (e.g. an evicted node).
	DecisionRevoked Decision = "revoked"
	// DecisionLifted records a revocation lifted by an admin.
	DecisionLifted Decision = "lifted"
	// DecisionReset records a quota window reset by an admin.
	DecisionReset Decision = "reset"
	// DecisionApprovalRequested records a two-person approval opened by a
	// request; IssuanceID holds the approval id.
	DecisionApprovalRequested Decision = "approval_requested"
	// DecisionApprovalApproved records one admin's approval (Caller is the
	// admin principal).
	DecisionApprovalApproved Decision = "approval_approved"
	// DecisionApprovalGranted records the approval that completed one.
	DecisionApprovalGranted Decision = "approval_granted"
	// DecisionApprovalDenied records an admin's denial.
	DecisionApprovalDenied Decision = "approval_denied"
	// DecisionApprovalExpired records an approval whose window ended before
	// it was used.
	DecisionApprovalExpired Decision = "approval_expired"
	// DecisionCheckpoint records records pruned from the start of the chain
	// (Record.Checkpoint says which); only the Log writes it.
	DecisionCheckpoint Decision = "checkpoint"
	// DecisionExported records an admin's statement that the chain was
	// exported through a seq, which lets pruning go that far; only the Log
	// writes it (MarkExported).
	DecisionExported Decision = "exported"
	// DecisionPending records a request refused because it waits for
	// two-person approval (not a denial: it is served once approved).
	DecisionPending Decision = "pending"
	// DecisionKeyRotated records an admin's rotation of a local JWT
	// issuer's signing key (Issuer names it, UpstreamRef is the new kid).
	DecisionKeyRotated Decision = "key_rotated"
)

// Valid reports whether d is one of the Decision constants.
func (d Decision) Valid() bool {
	switch d {
	case DecisionIntent, DecisionIssued, DecisionDenied, DecisionThrottled, DecisionFailed, DecisionRevoked, DecisionLifted, DecisionReset,
		DecisionApprovalRequested, DecisionApprovalApproved, DecisionApprovalGranted, DecisionApprovalDenied, DecisionApprovalExpired,
		DecisionCheckpoint, DecisionExported, DecisionPending, DecisionKeyRotated:
		return true
	}
	return false
}

// MaxFieldLen bounds every string field of a Record, in bytes, so that index
// keys stay well inside bbolt's key size limit.
const MaxFieldLen = 1024

// Record is one audit entry. ID, Seq, Time, Replica, PrevHash and Hash are assigned by
// Append; whatever the caller puts in them is replaced. No field may hold a
// secret: UpstreamRef is a reference an operator can match upstream, never
// the credential.
type Record struct {
	// ID is a UUIDv7 (by default) naming this record.
	ID string `json:"id"`
	// Seq is the record's position in the chain, starting at 1.
	Seq uint64 `json:"seq"`
	// Time is when the record was committed, from the log's clock, in UTC.
	Time time.Time `json:"time"`
	// Replica names the broker replica whose chain the record is in (see
	// WithReplica); the Log stamps it. Records written before replicas were
	// named have none, and form a chain of their own (VerifyExport).
	Replica string `json:"replica,omitempty"`
	// IssuanceID links the intent and result records of one issuance.
	IssuanceID string `json:"issuance_id"`
	// Caller is the caller's SPIFFE ID, or "" when it was not established.
	Caller string `json:"caller"`
	// Attestation is how the caller proved its identity.
	Attestation string `json:"attestation"`
	// Profile is the requested profile.
	Profile string `json:"profile"`
	// Cluster is the workload cluster ("namespace/name"), or "".
	Cluster string `json:"cluster"`
	// Issuer names the issuer that was (or would have been) used.
	Issuer string `json:"issuer"`
	// Decision is what was decided.
	Decision Decision `json:"decision"`
	// Reason explains a denial, throttle or failure.
	Reason string `json:"reason,omitempty"`
	// TTL is the granted lifetime, encoded as integer nanoseconds.
	TTL time.Duration `json:"ttl_ns,omitempty"`
	// ExpiresAt is when the issued credential expires.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// UpstreamRef is a non-secret upstream reference: a token jti, an AWS
	// AccessKeyId, a Vault lease id.
	UpstreamRef string `json:"upstream_ref,omitempty"`
	// SourceIdentity is the identity the upstream records for the session
	// (AWS SourceIdentity, as seen in CloudTrail).
	SourceIdentity string `json:"source_identity,omitempty"`
	// Reused marks a credential minted for an earlier issuance and handed
	// out again; UpstreamRef names it.
	Reused bool `json:"reused,omitempty"`
	// Checkpoint, on a checkpoint record, describes the records pruned.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// PrevHash is the Hash of the record with Seq-1, or "" for Seq 1.
	PrevHash string `json:"prev_hash"`
	// Hash chains this record; see the package documentation.
	Hash string `json:"hash"`
}

// ComputeHash returns the hash r should carry given its PrevHash and other
// fields (r.Hash itself is ignored). See the package documentation.
func (r Record) ComputeHash() (string, error) {
	r.Hash = ""
	canonical, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("audit: encode record: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(r.PrevHash))
	h.Write(canonical)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Checkpoint is what a checkpoint record states about the records pruned
// just before it was written: the contiguous range [FromSeq, ThroughSeq]
// that was deleted, and ThroughHash, the hash of its last record, to which
// the first record kept (ThroughSeq+1) links. Verify starts the chain from
// the newest checkpoint's ThroughSeq and ThroughHash instead of from seq 1;
// the checkpoint itself is an ordinary record of the chain, so editing it
// breaks the chain.
type Checkpoint struct {
	// FromSeq and ThroughSeq bound the records pruned (both included).
	FromSeq    uint64 `json:"from_seq"`
	ThroughSeq uint64 `json:"through_seq"`
	// ThroughHash is the Hash of record ThroughSeq.
	ThroughHash string `json:"through_hash"`
	// Count is how many records were pruned: ThroughSeq-FromSeq+1.
	Count uint64 `json:"count"`
	// FirstTime and LastTime are the Times of records FromSeq and
	// ThroughSeq.
	FirstTime time.Time `json:"first_time"`
	LastTime  time.Time `json:"last_time"`
}

// check validates the caller-supplied fields of r.
func (r Record) check() error {
	if !r.Decision.Valid() {
		return fmt.Errorf("audit: unknown decision %q", r.Decision)
	}
	if r.Decision == DecisionCheckpoint || r.Decision == DecisionExported || r.Checkpoint != nil {
		return fmt.Errorf("audit: %s records are written by the log itself", r.Decision)
	}
	return r.checkFields()
}

// checkFields validates r's string fields.
func (r Record) checkFields() error {
	fields := []struct{ name, v string }{
		{"issuance_id", r.IssuanceID}, {"caller", r.Caller}, {"attestation", r.Attestation},
		{"profile", r.Profile}, {"cluster", r.Cluster}, {"issuer", r.Issuer},
		{"reason", r.Reason}, {"upstream_ref", r.UpstreamRef}, {"source_identity", r.SourceIdentity},
		{"replica", r.Replica},
	}
	for _, f := range fields {
		if len(f.v) > MaxFieldLen {
			return fmt.Errorf("audit: %s is longer than %d bytes", f.name, MaxFieldLen)
		}
		// encoding/json would silently replace invalid UTF-8, so the stored
		// value would differ from the indexed one.
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("audit: %s is not valid UTF-8", f.name)
		}
	}
	return nil
}

// body is the part of a record's canonical encoding that does not depend on
// its place in the chain: every member between "time" and "prev_hash", with
// the same names and omit rules as Record. Appenders encode it in their own
// goroutine, so the committer, which every append waits on, only splices the
// chain fields around it. TestBodySplicingMatchesRecordEncoding keeps the two
// encodings identical.
type body struct {
	Replica        string        `json:"replica,omitempty"`
	IssuanceID     string        `json:"issuance_id"`
	Caller         string        `json:"caller"`
	Attestation    string        `json:"attestation"`
	Profile        string        `json:"profile"`
	Cluster        string        `json:"cluster"`
	Issuer         string        `json:"issuer"`
	Decision       Decision      `json:"decision"`
	Reason         string        `json:"reason,omitempty"`
	TTL            time.Duration `json:"ttl_ns,omitempty"`
	ExpiresAt      time.Time     `json:"expires_at,omitzero"`
	UpstreamRef    string        `json:"upstream_ref,omitempty"`
	SourceIdentity string        `json:"source_identity,omitempty"`
	Reused         bool          `json:"reused,omitempty"`
	Checkpoint     *Checkpoint   `json:"checkpoint,omitempty"`
}

// encodeBody normalises r's caller-supplied times and returns its body's
// JSON members without the enclosing braces.
func (r *Record) encodeBody() ([]byte, error) {
	if !r.ExpiresAt.IsZero() {
		r.ExpiresAt = r.ExpiresAt.UTC().Round(0)
	}
	b, err := json.Marshal(body{
		Replica:    r.Replica,
		IssuanceID: r.IssuanceID, Caller: r.Caller, Attestation: r.Attestation, Profile: r.Profile,
		Cluster: r.Cluster, Issuer: r.Issuer, Decision: r.Decision, Reason: r.Reason, TTL: r.TTL,
		ExpiresAt: r.ExpiresAt, UpstreamRef: r.UpstreamRef, SourceIdentity: r.SourceIdentity, Reused: r.Reused,
		Checkpoint: r.Checkpoint,
	})
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	return b[1 : len(b)-1], nil
}

// seal assigns the chain fields of r and returns its stored encoding, built
// around members, the output of encodeBody. The stored form is the canonical
// form with the hash filled into its last member (see the package
// documentation), so a record is encoded once.
func (r *Record) seal(members []byte, id string, seq uint64, now time.Time, prevHash string) ([]byte, error) {
	r.ID = id
	r.Seq = seq
	r.Time = now.UTC().Round(0)
	r.PrevHash = prevHash
	r.Hash = ""
	idJSON, err := json.Marshal(id)
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	timeJSON, err := r.Time.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	prevJSON, err := json.Marshal(prevHash)
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	b := make([]byte, 0, len(members)+len(idJSON)+len(timeJSON)+2*sha256.Size+96)
	b = append(b, `{"id":`...)
	b = append(b, idJSON...)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"time":`...)
	b = append(b, timeJSON...)
	b = append(b, ',')
	b = append(b, members...)
	b = append(b, `,"prev_hash":`...)
	b = append(b, prevJSON...)
	b = append(b, `,"hash":""}`...)

	h := sha256.New()
	h.Write([]byte(prevHash))
	h.Write(b)
	var sum [sha256.Size]byte
	r.Hash = hex.EncodeToString(h.Sum(sum[:0]))
	stored := append(b[:len(b)-len(emptyHashSuffix)], `"hash":"`...)
	stored = append(stored, r.Hash...)
	return append(stored, `"}`...), nil
}

// emptyHashSuffix ends the canonical encoding of every record.
var emptyHashSuffix = []byte(`"hash":""}`)
