// Package boltstate keeps the broker's state (package state) in its local
// bbolt file, beside the audit chain: the embedded default for one broker.
//
// Every operation is one bbolt write or read transaction; bbolt serializes
// writers, so each check-and-change (spend, consume, evict) is atomic, and
// every commit fsyncs before it returns. Ledger runs the quota spend inside
// the audit log's own transaction, so a spend and its decision record share
// one commit, and one fsync with every other append of the group commit.
//
// # Storage layout
//
// Top-level buckets, prefixed so that they share the file with the audit
// log's "audit.*" buckets:
//
//	quota              kind "\x00" name -> version (2) || be64(start) || be64(end) || be64(count)
//	jointoken.tokens   SHA-256(secret) (32 raw bytes) -> JSON of the token
//	nodes.byid         SPIFFE ID -> JSON of the node
//	revocations        revocation id -> JSON of the revocation
//	clusters.refs      cluster "\x00" kind "\x00" item key -> flag: an index of the
//	                   items naming each workload cluster (kind n node, t join
//	                   token, r cluster revocation; flag "e" evicted node, "u"
//	                   used token), kept in the item's own transaction, so that a
//	                   page of ListClusters reads only its clusters' entries;
//	                   built on the first open of a file from before it
//	approvals          approval id -> JSON of the approval
//	approvals.byrequest  requester SPIFFE ID "\x00" request digest -> the id of
//	                   that request's latest approval (counts a requester's
//	                   open approvals; found again by an identical request)
//	signingkeys        issuer "\x00" replica "\x00" kid -> JSON of the public key
//	                   (created at the first publication; expired ones deleted
//	                   by the next)
//
// Times are Unix nanoseconds. A quota window keeps the end it was opened
// with, so a change of the configured window applies from the next window;
// records of the earlier format (version 1, without the end) read as ended.
package boltstate
