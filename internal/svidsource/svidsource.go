// Package svidsource provides a process's own X.509 identity as go-spiffe
// sources (x509svid.Source and x509bundle.Source) that follow rotation:
// either from a SPIFFE Workload API (SPIRE agent) or from an SVID directory
// (internal/svidfile format) that something else rewrites. The broker, the
// sidecar and the command-line clients all take their identity from here, so
// they choose an SVID and explain a failure the same way.
//
// Hand the sources, not a loaded SVID, to grpccredentials so that every new
// TLS handshake presents the current SVID.
package svidsource

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Source is what both constructors return: an SVID source and a bundle
// source that must be closed when no longer used.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Close() error
}

// EndpointEnv is the environment variable that names the Workload API when
// no address is given (SPIFFE Workload Endpoint specification).
const EndpointEnv = "SPIFFE_ENDPOINT_SOCKET"

// WorkloadOption configures FromWorkloadAPI.
type WorkloadOption func(*workloadConfig)

type workloadConfig struct {
	id spiffeid.ID
}

// WithSPIFFEID makes the source serve the SVID with this SPIFFE ID among
// those the agent gives the workload, instead of the agent's default (the
// first). A workload with several registration entries otherwise gets
// whichever the agent lists first. If the agent stops serving id, the
// source has no SVID (GetX509SVID fails) until it serves it again.
func WithSPIFFEID(id spiffeid.ID) WorkloadOption {
	return func(c *workloadConfig) { c.id = id }
}

// FromWorkloadAPI connects to the Workload API at addr (for example
// "unix:///run/spire/agent.sock"; empty means the SPIFFE_ENDPOINT_SOCKET
// environment variable) and blocks until the first X.509 context arrives or
// ctx ends. The source follows rotations pushed by the agent. The caller must
// Close it.
//
// When no identity arrives, the error says why as far as can be told: the
// socket is missing, is not a socket, cannot be opened, nothing listens on
// it, the agent has no registration entry for this workload (it answers
// PermissionDenied "no identity issued"), or the agent serves other SPIFFE
// IDs than the one asked for with WithSPIFFEID.
func FromWorkloadAPI(ctx context.Context, addr string, opts ...WorkloadOption) (*workloadapi.X509Source, error) {
	var cfg workloadConfig
	for _, o := range opts {
		o(&cfg)
	}
	if addr == "" {
		addr = os.Getenv(EndpointEnv)
	}
	if addr == "" {
		return nil, fmt.Errorf("svidsource: no Workload API address: set %s or pass the socket (e.g. unix:///run/spire/agent.sock)", EndpointEnv)
	}
	rec := &errorRecorder{}
	picker := &picker{want: cfg.id}
	src, err := workloadapi.NewX509Source(ctx,
		workloadapi.WithClientOptions(workloadapi.WithAddr(addr), workloadapi.WithLogger(rec)),
		workloadapi.WithDefaultX509SVIDPicker(picker.pick))
	if err != nil {
		return nil, explain(addr, rec.last(), err)
	}
	if _, err := src.GetX509SVID(); err != nil {
		src.Close()
		return nil, fmt.Errorf("svidsource: the Workload API at %s serves this workload %s, not %s: register it under that ID, or choose one of those",
			addr, strings.Join(picker.offered(), ", "), cfg.id)
	}
	return src, nil
}

// picker chooses the SVID with the wanted ID (any zero ID: the first) and
// remembers which IDs the agent offered, for the error when none matches.
type picker struct {
	want spiffeid.ID

	mu   sync.Mutex
	seen []string
}

func (p *picker) pick(svids []*x509svid.SVID) *x509svid.SVID {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = p.seen[:0]
	for _, s := range svids {
		p.seen = append(p.seen, s.ID.String())
	}
	if p.want.IsZero() {
		if len(svids) == 0 {
			return nil
		}
		return svids[0]
	}
	i := slices.IndexFunc(svids, func(s *x509svid.SVID) bool { return s.ID == p.want })
	if i < 0 {
		return nil
	}
	return svids[i]
}

func (p *picker) offered() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return []string{"no SVID"}
	}
	return slices.Clone(p.seen)
}

// errorRecorder is the go-spiffe client's logger: it keeps the last error
// the client logged (why a watch failed), which NewX509Source itself does
// not return — it only reports that ctx ended.
type errorRecorder struct {
	mu  sync.Mutex
	err error
}

func (r *errorRecorder) Debugf(string, ...any) {}
func (r *errorRecorder) Infof(string, ...any)  {}
func (r *errorRecorder) Warnf(string, ...any)  {}

func (r *errorRecorder) Errorf(format string, args ...any) {
	err := fmt.Errorf(format, args...)
	for _, a := range args {
		if e, ok := a.(error); ok {
			err = e
		}
	}
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

func (r *errorRecorder) last() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// dialTimeout bounds the diagnostic connection attempt to the socket.
const dialTimeout = 2 * time.Second

// explain turns the failure to get a first X.509 context from addr into an
// error an operator can act on. last is the last error the client logged
// (nil if none), err what NewX509Source returned.
func explain(addr string, last, err error) error {
	prefix := "svidsource: no identity from the Workload API at " + addr
	if st, ok := status.FromError(last); ok && last != nil {
		switch st.Code() {
		case codes.PermissionDenied:
			return fmt.Errorf("%s: the agent answered but has no identity for this workload (%q): no registration entry matches it — create one (spire-server entry create, or a ClusterSPIFFEID) whose selectors match this process", prefix, st.Message())
		case codes.InvalidArgument:
			return fmt.Errorf("%s: the agent refused the request: %s", prefix, st.Message())
		}
	}
	if path, ok := unixPath(addr); ok {
		fi, serr := os.Stat(path)
		switch {
		case errors.Is(serr, os.ErrNotExist):
			return fmt.Errorf("%s: the socket %s does not exist (is the SPIRE agent running, and its socket directory mounted here?)", prefix, path)
		case errors.Is(serr, os.ErrPermission):
			return fmt.Errorf("%s: permission denied looking up the socket %s (a directory on its path is not searchable by this user)", prefix, path)
		case serr != nil:
			return fmt.Errorf("%s: %w", prefix, serr)
		case fi.Mode()&os.ModeSocket == 0:
			return fmt.Errorf("%s: %s exists but is not a socket (%s)", prefix, path, fi.Mode().Type())
		}
		c, derr := net.DialTimeout("unix", path, dialTimeout)
		switch {
		case errors.Is(derr, syscall.EACCES):
			return fmt.Errorf("%s: permission denied connecting to the socket %s (this user may not write to it)", prefix, path)
		case errors.Is(derr, syscall.ECONNREFUSED):
			return fmt.Errorf("%s: nothing listens on the socket %s (a stale socket: is the SPIRE agent running?)", prefix, path)
		case derr != nil:
			return fmt.Errorf("%s: connecting to the socket %s: %w", prefix, path, derr)
		}
		c.Close()
	}
	if last != nil {
		return fmt.Errorf("%s: %w (then: %w)", prefix, last, err)
	}
	return fmt.Errorf("%s: the agent sent no identity before the wait ended: %w", prefix, err)
}

// unixPath returns the file path of a unix:// address.
func unixPath(addr string) (string, bool) {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "unix" {
		return "", false
	}
	if u.Path != "" {
		return u.Path, true
	}
	return u.Opaque, u.Opaque != ""
}

// Options say where a command takes its identity from: an SVID directory
// or the Workload API. Commands fill them from --svid-dir,
// --workload-api-socket (default $SPIFFE_ENDPOINT_SOCKET) and --spiffe-id.
type Options struct {
	// Dir is an SVID directory (svid.pem, svid_key.pem, bundle.pem).
	Dir string
	// DirExplicit says Dir was given on the command line, not taken from
	// the environment; it then yields to no socket, and an explicit
	// socket does not yield to it.
	DirExplicit bool
	// Socket is the Workload API address, from the flag or the environment.
	Socket string
	// SocketExplicit says Socket was given on the command line; one taken
	// from SPIFFE_ENDPOINT_SOCKET yields to an explicit Dir.
	SocketExplicit bool
	// SPIFFEID, with the Workload API, chooses among the agent's SVIDs.
	SPIFFEID string
	// Timeout bounds the wait for the first SVID from the Workload API.
	Timeout time.Duration
	// OnDirError is told about failed reloads of Dir (see WithErrorHandler).
	OnDirError func(error)
}

// Resolve checks o and settles which source it names. What the command
// line gives wins over the environment (SPIFFE_ENDPOINT_SOCKET, or a
// command's SVID directory variable); a directory wins over a socket from
// the environment. Both given on the command line are an error, as is
// neither source at all. An SPIFFE ID applies to the Workload API only.
func (o Options) Resolve() (Options, error) {
	if o.Dir != "" && o.Socket != "" {
		switch {
		case o.SocketExplicit && !o.DirExplicit:
			o.Dir = ""
		case !o.SocketExplicit:
			o.Socket = ""
		}
	}
	switch {
	case o.Dir != "" && o.Socket != "":
		return o, errors.New("give either --svid-dir or --workload-api-socket, not both: they are two sources of the same identity")
	case o.Dir == "" && o.Socket == "":
		return o, fmt.Errorf("an identity is required: --workload-api-socket (or %s) for a SPIRE agent, or --svid-dir", EndpointEnv)
	case o.SPIFFEID != "" && o.Socket == "":
		return o, errors.New("--spiffe-id chooses among the Workload API's SVIDs; an --svid-dir holds one")
	}
	if o.SPIFFEID != "" {
		if _, err := spiffeid.FromString(o.SPIFFEID); err != nil {
			return o, fmt.Errorf("--spiffe-id %q: %w", o.SPIFFEID, err)
		}
	}
	return o, nil
}

// Open returns the source o names (call Resolve first). The Workload API
// wait is bounded by o.Timeout when it is positive.
func Open(ctx context.Context, o Options) (Source, error) {
	if o.Dir != "" {
		var opts []Option
		if o.OnDirError != nil {
			opts = append(opts, WithErrorHandler(o.OnDirError))
		}
		d, err := FromDir(o.Dir, opts...)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return d, nil
	}
	var opts []WorkloadOption
	if o.SPIFFEID != "" {
		id, err := spiffeid.FromString(o.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("svidsource: SPIFFE ID %q: %w", o.SPIFFEID, err)
		}
		opts = append(opts, WithSPIFFEID(id))
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	src, err := FromWorkloadAPI(ctx, strings.TrimSpace(o.Socket), opts...)
	if err != nil {
		return nil, err
	}
	return src, nil
}
