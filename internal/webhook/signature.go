package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries a delivery's signature:
//
//	X-Credbroker-Signature: t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<body>")>
//
// t is when this attempt was signed (every retry is signed afresh), and the
// MAC covers t, a literal ".", and the raw request body byte for byte. A
// receiver recomputes the MAC over the body it read, compares in constant
// time, and refuses a t too far from its own clock, so a captured delivery
// cannot be replayed later. Receivers should accept any of several v1
// values (Verify does), which lets a sender carry two signatures while a
// secret is rotated.
const SignatureHeader = "X-Credbroker-Signature"

// DeliveryHeader carries an id that is the same for every attempt of one
// delivery, so a receiver can drop the duplicates that retries after a lost
// response produce. It is not signed; it only helps deduplicate.
const DeliveryHeader = "X-Credbroker-Delivery"

// DefaultTolerance is how far from the receiver's clock Verify accepts a
// signature's timestamp when given a tolerance of 0.
const DefaultTolerance = 5 * time.Minute

// Errors Verify returns; callers may match them with errors.Is.
var (
	// ErrNoSignature: the header is missing or has no t or v1 element.
	ErrNoSignature = errors.New("webhook: no signature")
	// ErrBadSignature: no v1 value matches the body and timestamp.
	ErrBadSignature = errors.New("webhook: signature does not match")
	// ErrStale: the timestamp is outside the tolerance.
	ErrStale = errors.New("webhook: signature timestamp outside tolerance")
)

// Sign returns the SignatureHeader value for body signed at time t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a SignatureHeader value against body and secret, and that
// its timestamp lies within tolerance of now (DefaultTolerance when
// tolerance is 0). It is what a receiver runs before trusting a delivery.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	if ts == "" || len(sigs) == 0 {
		return ErrNoSignature
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: timestamp %q", ErrNoSignature, ts)
	}
	want := mac(secret, ts, body)
	matched := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			matched = true
		}
	}
	if !matched {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed %s from now", ErrStale, d.Round(time.Second))
	}
	return nil
}
