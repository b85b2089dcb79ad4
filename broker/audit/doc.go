// Package audit is the broker's tamper-evident audit trail: one append-only
// record per decision (intent, issued, denied, throttled, failed), stored in
// bbolt and chained with SHA-256.
//
// # Durability
//
// Append returns only after the record's bbolt transaction has committed,
// which fsyncs the file (Open refuses a DB with NoSync set). The broker writes
// an intent record before calling an issuer with an upstream side effect
// (issuers.EffectUpstream) and issues nothing when Append fails; every
// credential it hands out has its issued record, appended before the
// response (for a local issuer, the only record). The log fails closed:
// there is no best-effort mode.
//
// Appends that arrive while a commit is in flight are written together in
// the next single transaction (group commit). An idle log commits at once;
// there is no batching timer.
//
// # Hash chain
//
// Records are numbered 1, 2, 3, ... (Seq). Each record's Hash is
//
//	Hash = lowercase_hex( SHA-256( PrevHash || canonical ) )
//
// where PrevHash is the previous record's Hash as its 64 ASCII hex
// characters (the empty string for seq 1), and canonical is the record's
// encoding/json encoding with Hash set to "". Hash is always the last JSON
// member, so an outside tool can re-verify an exported JSON line (each line
// is json.Marshal of a Record, byte for byte what is stored) by replacing its
// trailing "hash":"<hex>" with "hash":"" and hashing PrevHash followed by
// the result. Record.ComputeHash does the same in Go.
//
// Verify walks the chain and reports the first record that is missing,
// undecodable, edited (hash mismatch), or does not link to its predecessor,
// and checks that the chain ends where the stored head says it does (tail
// truncation). Someone able to rewrite the file can still rewrite a whole
// suffix of the chain and the head consistently; to detect that, anchor
// VerifyResult.HeadHash (or exports) somewhere the broker host cannot write.
//
// # Storage layout
//
// All buckets are top-level and prefixed "audit.", so the log can share a
// bbolt file with other broker state:
//
//	audit.records       be64(seq) -> record JSON
//	audit.meta          "head" -> be64(seq) || hash
//	audit.idx.id        id -> be64(seq)
//	audit.idx.issuance  lp(issuance_id) || be64(seq) -> ""
//	audit.idx.caller    lp(caller) || tk(time) || be64(seq) -> decision
//	audit.idx.cluster   lp(cluster) || tk(time) || be64(seq) -> decision
//	audit.idx.time      tk(time) || be64(seq) -> decision
//
// lp(s) is a big-endian uint16 length followed by s; tk(t) is the unix
// nanosecond time as a big-endian uint64 with its sign bit flipped, so keys
// sort by time. Empty caller, cluster and issuance IDs are not indexed.
//
// New Record fields must be omitempty/omitzero so that the canonical encoding
// of existing records, and therefore their hashes, does not change.
package audit
