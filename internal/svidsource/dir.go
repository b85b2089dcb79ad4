package svidsource

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/svidfile"
)

// DefaultCheckInterval is how often, at most, a Dir looks at its files.
const DefaultCheckInterval = time.Second

// Dir is an SVID directory as a source. Every Get call stats the three files
// (at most once per check interval) and reloads them when any changed. A
// reload that fails — typically a rotation caught half-way, a new
// certificate with the old key — keeps the last good SVID and bundle and is
// reported to the error callback; the next change is tried again. An SVID
// that has expired is never returned silently: the files are re-read at
// once, and if they hold nothing valid GetX509SVID fails.
//
// Dir is safe for concurrent use.
type Dir struct {
	dir      string
	now      func() time.Time
	interval time.Duration
	onError  func(error)

	mu        sync.Mutex
	svid      *x509svid.SVID
	bundle    *x509bundle.Bundle
	seen      fingerprint // of the files last tried, good or not
	checked   time.Time   // when the files were last stat'ed
	closed    bool
	lastError error
}

// Option configures a Dir.
type Option func(*Dir)

// WithClock sets the clock used for the check interval and expiry (default
// time.Now).
func WithClock(now func() time.Time) Option { return func(d *Dir) { d.now = now } }

// WithCheckInterval sets how often, at most, the files are stat'ed (default
// DefaultCheckInterval; 0 means on every call).
func WithCheckInterval(i time.Duration) Option { return func(d *Dir) { d.interval = i } }

// WithErrorHandler sets a function told about every failed reload (the last
// good SVID stays in use). It is called without locks held, but must not
// call back into the Dir.
func WithErrorHandler(f func(error)) Option { return func(d *Dir) { d.onError = f } }

// FromDir loads the SVID directory dir (svid.pem, svid_key.pem, bundle.pem)
// and returns a source that follows changes to it. It fails if the files
// cannot be loaded now or the SVID has expired.
func FromDir(dir string, opts ...Option) (*Dir, error) {
	d := &Dir{dir: dir, now: time.Now, interval: DefaultCheckInterval}
	for _, o := range opts {
		o(d)
	}
	fp, err := stat(dir)
	if err != nil {
		return nil, err
	}
	svid, bundle, err := svidfile.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("svidsource: %w", err)
	}
	now := d.now()
	if exp := svid.Certificates[0].NotAfter; !now.Before(exp) {
		return nil, fmt.Errorf("svidsource: SVID in %s expired at %s", dir, exp.UTC().Format(time.RFC3339))
	}
	d.svid, d.bundle, d.seen, d.checked = svid, bundle, fp, now
	return d, nil
}

// GetX509SVID returns the current X.509-SVID. It implements x509svid.Source.
func (d *Dir) GetX509SVID() (*x509svid.SVID, error) {
	svid, _, err := d.current()
	return svid, err
}

// GetX509BundleForTrustDomain returns the bundle when td is the SVID's trust
// domain. It implements x509bundle.Source.
func (d *Dir) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	_, bundle, err := d.current()
	if err != nil {
		return nil, err
	}
	if bundle.TrustDomain() != td {
		return nil, fmt.Errorf("svidsource: no bundle for trust domain %q", td)
	}
	return bundle, nil
}

// Close makes later Get calls fail. It never fails.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// current returns the SVID and bundle after reloading them if due.
func (d *Dir) current() (*x509svid.SVID, *x509bundle.Bundle, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, nil, errors.New("svidsource: source is closed")
	}
	reloadErr := d.maybeReloadLocked()
	svid, bundle := d.svid, d.bundle
	now := d.now()
	d.mu.Unlock()

	if reloadErr != nil && d.onError != nil {
		d.onError(reloadErr)
	}
	if exp := svid.Certificates[0].NotAfter; !now.Before(exp) {
		err := fmt.Errorf("svidsource: SVID in %s expired at %s and no valid replacement is on disk", d.dir, exp.UTC().Format(time.RFC3339))
		if reloadErr != nil {
			err = fmt.Errorf("%w: %w", err, reloadErr)
		}
		return nil, nil, err
	}
	return svid, bundle, nil
}

// maybeReloadLocked re-reads the files when the interval has passed and they
// changed, or at once when the SVID has expired. It returns the error of a
// failed reload, once per change of the files.
func (d *Dir) maybeReloadLocked() error {
	now := d.now()
	expired := !now.Before(d.svid.Certificates[0].NotAfter)
	if !expired && now.Sub(d.checked) < d.interval {
		return nil
	}
	d.checked = now
	fp, err := stat(d.dir)
	if err != nil {
		return d.failedLocked(fingerprint{}, err)
	}
	if fp.equal(d.seen) && !expired {
		return nil
	}
	if fp.equal(d.seen) && expired && d.lastError == nil {
		return nil // already loaded what is on disk; current reports the expiry
	}
	svid, bundle, err := svidfile.Load(d.dir)
	if err != nil {
		return d.failedLocked(fp, fmt.Errorf("svidsource: reload kept the previous SVID: %w", err))
	}
	if !now.Before(svid.Certificates[0].NotAfter) {
		return d.failedLocked(fp, fmt.Errorf("svidsource: reload kept the previous SVID: SVID in %s expired at %s", d.dir, svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339)))
	}
	d.svid, d.bundle, d.seen, d.lastError = svid, bundle, fp, nil
	return nil
}

// failedLocked records a failed reload of the files with fingerprint fp and
// returns err the first time this state is seen, nil after.
func (d *Dir) failedLocked(fp fingerprint, err error) error {
	if fp.equal(d.seen) && d.lastError != nil {
		return nil
	}
	d.seen, d.lastError = fp, err
	return err
}

// fingerprint identifies the versions of the three files cheaply: an atomic
// replace changes the inode even when size and mtime look the same.
type fingerprint [3]os.FileInfo

func stat(dir string) (fingerprint, error) {
	var fp fingerprint
	for i, name := range []string{svidfile.CertFile, svidfile.KeyFile, svidfile.BundleFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return fingerprint{}, fmt.Errorf("svidsource: %w", err)
		}
		fp[i] = fi
	}
	return fp, nil
}

func (a fingerprint) equal(b fingerprint) bool {
	for i := range a {
		if a[i] == nil || b[i] == nil {
			if a[i] != b[i] {
				return false
			}
			continue
		}
		if !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()) {
			return false
		}
	}
	return true
}
