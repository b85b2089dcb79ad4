package daemon

import (
	"crypto/x509"
	"time"
)

// expiryCheckInterval is how often the broker looks at how much of its
// SVID's life is left. Short enough for the last sixth of a few-minute SVID
// to be seen; the check reads memory only.
const expiryCheckInterval = 10 * time.Second

// unrotatedFraction is the part of an SVID's lifetime left at which an SVID
// that has not been replaced is worth a warning. SPIRE rotates at half the
// lifetime, so an SVID still in use with a sixth left means rotation is
// failing, whatever the lifetime: 20s of a 2-minute SVID, 10m of an hour.
const unrotatedFraction = 6

// expiryWarning decides when the broker warns that its own SVID is close to
// expiry without having been rotated: once per certificate, when less than
// 1/unrotatedFraction of its lifetime is left. SVIDs that rotate on time
// never get there, however short they are; one that does not is reported
// once, not at every check.
type expiryWarning struct {
	warned *x509.Certificate // the certificate last warned about
}

// due reports whether to warn about leaf (the SVID in use) at now.
func (w *expiryWarning) due(now time.Time, leaf *x509.Certificate) bool {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if leaf.NotAfter.Sub(now) >= life/unrotatedFraction || (w.warned != nil && w.warned.Equal(leaf)) {
		return false
	}
	w.warned = leaf
	return true
}
