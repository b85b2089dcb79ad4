package audit

import (
	"encoding/binary"
	"time"
)

// Bucket names; see the package documentation for the key layouts.
var (
	bucketRecords  = []byte("audit.records")
	bucketMeta     = []byte("audit.meta")
	bucketID       = []byte("audit.idx.id")
	bucketIssuance = []byte("audit.idx.issuance")
	bucketCaller   = []byte("audit.idx.caller")
	bucketCluster  = []byte("audit.idx.cluster")
	bucketTime     = []byte("audit.idx.time")

	allBuckets = [][]byte{bucketRecords, bucketMeta, bucketID, bucketIssuance, bucketCaller, bucketCluster, bucketTime}

	metaHead = []byte("head")
)

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

// timeBits maps t to a uint64 that sorts like t's unix nanoseconds.
func timeBits(t time.Time) uint64 {
	return uint64(t.UnixNano()) ^ 1<<63
}

// timeFromBits inverts timeBits.
func timeFromBits(u uint64) time.Time {
	return time.Unix(0, int64(u^1<<63)).UTC()
}

// timeKey returns prefix || tk(t) || be64(seq).
func timeKey(prefix []byte, t time.Time, seq uint64) []byte {
	k := make([]byte, 0, len(prefix)+16)
	k = append(k, prefix...)
	k = binary.BigEndian.AppendUint64(k, timeBits(t))
	return binary.BigEndian.AppendUint64(k, seq)
}

// splitTimeKey returns the time and seq at the end of a timeKey.
func splitTimeKey(k []byte) (time.Time, uint64) {
	n := len(k)
	return timeFromBits(binary.BigEndian.Uint64(k[n-16 : n-8])), binary.BigEndian.Uint64(k[n-8:])
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
