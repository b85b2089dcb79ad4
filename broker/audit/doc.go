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
// truncation). Someone able to rewrite the file can still remove the newest
// records and move the head back, or rewrite a whole suffix of the chain and
// the head consistently; to detect that, an AnchorPublisher publishes the
// head somewhere the broker host cannot rewrite (AnchorFile, or a sink of
// the caller's), and VerifyWith checks that the chain still reaches an
// Anchor: the record at its seq exists with its hash.
//
// # Replicas
//
// A Log opened WithReplica (or WithDefaultReplica) stamps the replica id on
// every record (Record.Replica, stored in audit.meta "replica" on first
// open and kept: a chain has one name). Each replica of a fleet keeps its
// own chain; MergeExports merges their exports into one stream ordered by
// time, replica id and seq, copying lines byte for byte, and VerifyExport
// checks such a stream offline, each replica's records as a chain of their
// own. Records written before the replica was named carry none and verify
// as the start of the chain that links to them.
//
// # Retention
//
// Prune deletes records from the start of the chain, a bounded batch per
// transaction, and appends in the same transaction a checkpoint record
// (Decision checkpoint, Record.Checkpoint) naming the range deleted and the
// hash of its last record. Verify then starts after the newest checkpoint's
// ThroughSeq, expecting the first record kept to link to its ThroughHash;
// the checkpoint is a record of the chain like any other, so editing it
// breaks the chain, and records missing from the start with no checkpoint
// accounting for them are a break. MarkExported records (Decision exported)
// how far an admin has exported the chain, for pruning that requires it.
//
// # Storage layout
//
// All buckets are top-level and prefixed "audit.", so the log can share a
// bbolt file with other broker state. Layout 2 (audit.meta "layout"):
//
//	audit.records       be64(seq) -> record JSON (its canonical form, hash filled in)
//	audit.meta          "head" -> be64(seq) || hash; "layout" -> "2";
//	                    "checkpoint" -> be64(seq of the newest checkpoint);
//	                    "exported" -> be64(seq of the export mark);
//	                    "replica" -> the replica id (WithReplica)
//	audit.idx.id        id -> be64(seq)
//	audit.idx.issuance  lp(issuance_id) || be64(seq) -> ""
//	audit.idx.links     be64(seq) -> decision || uvarint(caller_back) || uvarint(cluster_back)
//	audit.idx.heads     "c" || caller -> be64(seq); "k" || cluster -> be64(seq)
//
// lp(s) is a big-endian uint16 length followed by s. A record's link holds
// its decision as one byte (intent 1, issued 2, denied 3, throttled 4,
// failed 5, revoked 6, lifted 7, reset 8, approval_requested 9,
// approval_approved 10, approval_granted 11, approval_denied 12,
// approval_expired 13, checkpoint 14, exported 15, pending 16, key_rotated
// 17) and how many seqs back the previous record of the same caller, and of
// the same cluster, lies (0: none); heads names the newest record of each
// caller and cluster. So the
// records of one caller are a chain followed from its head, newest first,
// without an index entry that repeats the caller for every record, and every
// write appends to records and links and touches a few pages of heads,
// instead of a page per caller and per cluster. Empty caller, cluster and issuance IDs are not
// indexed.
//
// Time is not indexed: the committer never stamps a record earlier than its
// predecessor (when the clock steps back, the record takes its
// predecessor's time), so seq order is time order and a time bound is a
// binary search over the records. (Records written by layout 1 carry the
// clock's time as it was; across a backward step in them, a bound can be
// off by the size of the step.)
//
// Open upgrades a layout-1 database (indexes audit.idx.caller,
// audit.idx.cluster and audit.idx.time, keyed by value and time) once: it
// links every record, 50,000 per transaction, so an upgrade cut short
// resumes at the next Open, then drops the three old indexes. Records, the
// chain and its hashes are not touched. Every Open links whatever records
// have no link yet, so records appended by an older broker (whose lists
// then miss everything before them) are linked by the next one.
//
// New Record fields must be omitempty/omitzero so that the canonical encoding
// of existing records, and therefore their hashes, does not change.
package audit
