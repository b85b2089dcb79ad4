// Package etcdstate keeps the broker's state (package state) in etcd, for
// broker replicas that must share it: a quota unit spent on one replica is
// spent for all, a join token is consumed once fleet-wide, and a revocation
// made on one replica reaches every replica's index through an etcd watch.
//
// # Atomicity
//
// Every check-and-change is one etcd transaction that compares the mod
// revisions of the keys it read (compare-and-swap) and writes all of its
// keys or none. A transaction that lost the race to another writer returns
// the keys' current values in its Else branch, so the retry needs no extra
// read. A lost round is another writer's commit, so an operation that
// keeps losing is waiting for the others' progress, not spinning: it tries
// until its deadline (then state.ErrUnavailable), or, as a backstop, until
// maxAttempts lost rounds (then ErrContended and state.ErrUnavailable, both
// retriable); a spend that loses while others spend a quota decides on the
// window they leave, a refusal once it is full. Within one Store, operations on the same key queue on a local
// lock, so the compare-and-swap races only between replicas, not between
// the goroutines of one replica. A Store remembers the quota windows it last
// read or wrote and starts a spend's compare-and-swap from them: one round
// trip when no other replica spent the key meanwhile (a stale window only
// fails the swap, whose Else branch reads the current one), and a refusal
// is only ever decided on a window read afresh.
//
// # Failing closed
//
// Every call runs under a deadline (the caller's, or Options.OpTimeout,
// whichever is sooner) and requires the contacted member to have a leader,
// so a member cut off from its quorum refuses at once instead of waiting.
// Any failure to reach etcd, or to hear its answer, wraps
// state.ErrUnavailable. A transaction is atomic in etcd, so nothing is ever
// half applied; but a transaction whose answer was lost may have committed
// (see package state on what that means for each operation: always the
// safe side). The client reconnects by itself: the same Store works again
// once etcd is back.
//
// # Key layout
//
// Under the configured prefix (which ends in "/"):
//
//	quota/<kind>/<name>                  JSON {start, end, count} of the key's window
//	jointoken/<hex SHA-256 of secret>    JSON of the token
//	node/<SPIFFE ID>                     JSON of the node
//	node-cluster/<cluster>\x00<SPIFFE ID> the same JSON, so a cluster's nodes list by range
//	revocation/<id>                      JSON of the revocation
//	cluster-ref/<cluster>\x00<kind>\x00<item> "e" (evicted node), "u" (used token) or ""
//	approval/<id>                        JSON of the approval
//	approval-req/<requester>\x00<digest> id of the requester's latest approval of that request
//	revocation-gen                       rewritten by every Revoke (see below)
//	budget/<name>                        unix nanoseconds: the upstream budget's theoretical arrival time
//	signingkey/<issuer>\x00<replica>\x00<kid> JSON of a replica's public signing key (no private key is ever here)
//
// Each index entry (node-cluster, cluster-ref, approval-req) is written in
// the transaction that changes its item, so it is never out of step. A
// cluster-ref entry exists for each node, join token and cluster
// revocation, so that a page of ListClusters reads the references of the
// clusters on it and no others.
//
// Purges scan their directory at one revision and delete what ended as
// they go, in transactions of up to 40 keys that each delete a key only if
// it did not change since the scan read it.
//
// A quota window keeps the end it was opened with; Spend and Usage treat a
// window whose end is not after now as gone, and PurgeQuotas deletes it. No
// lease is involved: a lease would expire on etcd's clock, while every
// decision here is made on the now passed in.
//
// # Revocation watch
//
// The Store lists the revocations at one revision R when it is created and
// watches from R+1, so no change falls between the list and the watch. The
// watch goroutine keeps a copy of the revocations it has delivered, so that
// a deletion can be reported with what was deleted, and so that, when the
// watch cannot resume (its revision was compacted away), it lists again and
// delivers the difference. Revoke, LiftRevocation and PurgeRevocations
// return once the watch has delivered their own change (or, should the
// watch lag past the operation's deadline, once the change is stored), so
// that on the replica that made it a change is in force before the call
// returns (as on one node); other replicas see it as soon as their watch
// delivers it.
//
// A replica must also be able to tell that it has every revocation made so
// far, or refuse to issue: its watch may be cut off. Every Revoke rewrites
// the revocation-gen key in its own transaction, and a Store with a probe
// interval reads that key (linearizably) at each interval: when its mod
// revision is not beyond what the watch has delivered, every revocation is
// in, and the Store calls OnCurrent. (etcd's own progress notifications do
// not serve here: a watch resumed at the next revision gets none until
// something is written.)
package etcdstate
