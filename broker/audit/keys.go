package audit

import "encoding/binary"

// Bucket names; see the package documentation for the key layouts.
var (
	bucketRecords  = []byte("audit.records")
	bucketMeta     = []byte("audit.meta")
	bucketID       = []byte("audit.idx.id")
	bucketIssuance = []byte("audit.idx.issuance")
	bucketLinks    = []byte("audit.idx.links")
	bucketHeads    = []byte("audit.idx.heads")

	allBuckets = [][]byte{bucketRecords, bucketMeta, bucketID, bucketIssuance, bucketLinks, bucketHeads}

	// The indexes of layout 1, which Open replaces by links and heads.
	oldBuckets = [][]byte{[]byte("audit.idx.caller"), []byte("audit.idx.cluster"), []byte("audit.idx.time")}

	metaHead   = []byte("head")
	metaLayout = []byte("layout")
	// metaCheckpoint names the newest checkpoint record: be64(seq).
	metaCheckpoint = []byte("checkpoint")
	// metaExported is how far an admin said the chain is exported:
	// be64(seq).
	metaExported = []byte("exported")
	// metaReplica is the replica id the chain's records carry.
	metaReplica = []byte("replica")
)

// layoutVersion is the storage layout this package writes (audit.meta
// "layout"); see the package documentation.
const layoutVersion = "2"

// Kinds of chain in audit.idx.heads: the records of one caller, and of one
// cluster.
const (
	chainCaller  byte = 'c'
	chainCluster byte = 'k'
)

// decisionCodes are the one-byte decisions stored in audit.idx.links.
var decisionCodes = map[Decision]byte{
	DecisionIntent: 1, DecisionIssued: 2, DecisionDenied: 3, DecisionThrottled: 4, DecisionFailed: 5, DecisionRevoked: 6,
	DecisionLifted: 7, DecisionReset: 8, DecisionApprovalRequested: 9, DecisionApprovalApproved: 10, DecisionApprovalGranted: 11,
	DecisionApprovalDenied: 12, DecisionApprovalExpired: 13, DecisionCheckpoint: 14, DecisionExported: 15,
	DecisionPending: 16, DecisionKeyRotated: 17,
}

// seqKey encodes seq as the 8-byte big-endian key of audit.records.
func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

// appendPrefix appends lp(s): a big-endian uint16 length and s. Lengths are
// bounded by MaxFieldLen, so the prefix of one value never prefixes another.
func appendPrefix(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// headKey is the audit.idx.heads key of the chain of kind for value.
func headKey(kind byte, value string) []byte {
	return append([]byte{kind}, value...)
}

// link is one audit.idx.links value: the record's decision and how far back
// (in seqs) the previous record of the same caller and of the same cluster
// lie, 0 for none.
type link struct {
	code                    byte
	callerBack, clusterBack uint64
}

func (k link) encode() []byte {
	b := []byte{k.code}
	b = binary.AppendUvarint(b, k.callerBack)
	return binary.AppendUvarint(b, k.clusterBack)
}

func decodeLink(v []byte) (link, bool) {
	if len(v) < 3 {
		return link{}, false
	}
	k := link{code: v[0]}
	var n, m int
	k.callerBack, n = binary.Uvarint(v[1:])
	if n <= 0 {
		return link{}, false
	}
	k.clusterBack, m = binary.Uvarint(v[1+n:])
	if m <= 0 || 1+n+m != len(v) {
		return link{}, false
	}
	return k, true
}

// back returns how far back the previous record of the chain of kind lies.
func (k link) back(kind byte) uint64 {
	if kind == chainCaller {
		return k.callerBack
	}
	return k.clusterBack
}

// encodeHead and decodeHead store the chain head in audit.meta.
func encodeHead(seq uint64, hash string) []byte {
	return append(seqKey(seq), hash...)
}

func decodeHead(v []byte) (uint64, string, bool) {
	if v == nil {
		return 0, "", true
	}
	if len(v) < 8 {
		return 0, "", false
	}
	return binary.BigEndian.Uint64(v[:8]), string(v[8:]), true
}
