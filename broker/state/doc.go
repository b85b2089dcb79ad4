// Package state names everything the broker remembers besides its audit
// chain, and the atomic operations it needs on it. The broker core depends
// on these interfaces only; implementations live in sub-packages:
// boltstate keeps state in the broker's local bbolt file (one node, the
// embedded default), and etcdstate keeps it in etcd for replicas.
// Every implementation must pass the conformance suite in statetest.
//
// # What is kept
//
//   - Quotas: fixed windows of issuance counts per caller identity and per
//     workload cluster. Spend takes one unit from every charged key or from
//     none, and never hands out more than a charge's Max in a window, however
//     many callers (or replicas) spend at once. The limit travels with each
//     Charge rather than living in the store, so that per-rule or
//     per-profile quotas need no change here; a window keeps the end it was
//     opened with.
//
//   - Join tokens, by the SHA-256 of their secret (attest/jointoken keeps
//     the secret format and the Token type): created once, consumed at most
//     once, checked against the node name in the same atomic step so that a
//     wrong attempt does not burn the rightful node's token.
//
//   - Nodes: the registry of attested nodes, their latest SVID and whether
//     an admin evicted them (permanently, for that SPIFFE ID).
//
//   - Revocations: an admin's revocation of one issuance, a caller identity
//     or a workload cluster, with reason, admin and an optional end. The
//     broker checks them on every request through a RevocationIndex held in
//     memory, which the store keeps current through WatchRevocations
//     (boltstate notifies before each change returns; etcdstate drives it
//     from an etcd watch, and returns from a change once its own watch has
//     delivered it), and whose hooks drop reused credentials a revocation
//     covers. A deleted workload cluster is a cluster revocation without an
//     end, so cluster lifecycle needs no state of its own yet.
//
//   - Approvals: two-person approval of privileged issuances. An approval
//     is bound to the digest of one exact request and its requester; an
//     identical request finds it again (no new state), and a requester has
//     a bounded number open. Admins other than the requester vote, each
//     counted once; the Needed-th vote grants; a denial ends it; a granted
//     approval is consumed once, by the issuance whose record commits with
//     the consumption (ApprovalLedger), and expires with its window. Every
//     decision is a compare-and-swap on one approval, so etcd implements it
//     with one Txn per call.
//
//   - Budgets: token buckets of upstream calls (an AWS account's STS calls)
//     that every replica draws from, kept as one theoretical arrival time
//     (GCRA) that each take advances in one atomic step (ConformBudget), so
//     racing replicas never get more than the bucket holds.
//
// Still to come behind this seam, as its own small interface embedded in
// Store when it lands, passing the same suite: SigningKeys (each
// replica's published JWT public keys with their overlap windows, for the
// JWKS).
//
// # Time
//
// Operations that depend on time take it as an argument (now). Stores read
// no clock, so every replica decides with its own clock the same way, and
// the conformance suite drives expiry without sleeping.
//
// # Quota and the decision record
//
// A quota spend must never be separated from the audit record of the
// decision that spends it: no credential may be issued whose spend and
// record are not both durable, and a record must not be lost while its
// spend stands (or the other way round, where it would let quota be spent
// twice). Ledger is that pairing. Two implementations exist:
//
//   - boltstate.Ledger: the spend runs inside the audit log's own bbolt
//     write transaction (group commit), so spend and record commit together
//     or not at all, with one fsync shared by every append in the batch.
//   - SpendFirst: for a quota store that commits on its own (etcd) paired
//     with the replica's local bbolt audit chain. The spend is made durable
//     first, then the record is appended; if the append fails the spend is
//     refunded. A crash between the two leaves quota spent with no record:
//     that errs on the safe side (the caller got nothing, and the window
//     just has one unit less), and can never double-spend or issue
//     unrecorded.
//
// # Errors
//
// Implementations return the sentinel errors of this package (ErrNotFound,
// ErrEvicted, ErrExists, ErrUnavailable), of attest/jointoken (ErrUnknown,
// ErrUsed, ErrExpired, ErrWrongNode, ErrNoNode) and *ExhaustedError,
// possibly wrapped; anything else is a storage failure, after which nothing
// was changed, and callers fail closed on it. ErrUnavailable is the one
// exception: a shared store that did not answer in time may still commit
// the change afterwards, whole (never half of it). Every such outcome errs
// on the safe side: a unit spent with no credential issued, a join token
// used up with no node admitted, a revocation in force that the admin was
// told failed.
package state
