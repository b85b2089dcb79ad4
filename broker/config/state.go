package config

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// State says where the broker keeps its state besides the audit chain
// (quota windows, join tokens, nodes, revocations, approvals). Without
// etcd it is the local bbolt file in the data directory, beside the audit
// chain: the embedded default for one broker.
type State struct {
	// Etcd, when present, keeps the state in etcd instead, shared by every
	// replica that names the same endpoints and prefix. The audit chain
	// stays in each replica's own bbolt file.
	Etcd *EtcdState `yaml:"etcd"`
}

// EtcdState is how to reach the etcd cluster that holds the shared state.
type EtcdState struct {
	// Endpoints are the members' client URLs, http:// or https://.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is put before every key; replicas sharing state use the same
	// one. Must end in "/"; default "/credbroker/".
	Prefix string `yaml:"prefix"`
	// TLS names the CA that signed the members' certificates and, for
	// mTLS, the broker's client certificate and key (PEM files). Used with
	// https:// endpoints.
	TLS EtcdTLS `yaml:"tls"`
	// DialTimeout bounds connecting at startup; default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds each state operation (all its round trips and
	// retries): past it the operation fails and the request that needed it
	// is refused UNAVAILABLE; default 5s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// ProbeInterval is how often the replica confirms with etcd that its
	// revocation watch has every revocation made; default
	// DefaultEtcdProbeInterval.
	ProbeInterval time.Duration `yaml:"probe_interval"`
	// MaxStaleness is how old that confirmation may be before the replica
	// refuses everything that needs the shared state (UNAVAILABLE) and
	// reports NOT_SERVING: the longest a replica cut off from etcd goes on
	// issuing under revocations it may not have seen. Default
	// DefaultEtcdMaxStaleness.
	MaxStaleness time.Duration `yaml:"max_staleness"`
}

// Defaults and bounds of the etcd currency probe (state.etcd.probe_interval
// and max_staleness).
const (
	DefaultEtcdProbeInterval = 250 * time.Millisecond
	DefaultEtcdMaxStaleness  = 2 * time.Second
	// minEtcdProbeInterval keeps one replica's probes (one linearizable
	// read each) from loading etcd; maxEtcdProbeInterval and
	// maxEtcdMaxStaleness keep a revocation unseen by a partitioned replica
	// from being ignored for longer than a minute.
	minEtcdProbeInterval = 10 * time.Millisecond
	maxEtcdProbeInterval = 30 * time.Second
	maxEtcdMaxStaleness  = time.Minute
	// etcdProbesPerStaleness is how many probe intervals max_staleness
	// must span at least, so that one late or lost probe does not turn a
	// connected replica away.
	etcdProbesPerStaleness = 2
)

// EtcdTLS names the PEM files of the etcd client's TLS.
type EtcdTLS struct {
	// CA verifies the members' server certificates; empty: the system roots.
	CA string `yaml:"ca"`
	// Cert and Key are the client certificate and its key, for members that
	// require client certificates (--client-cert-auth).
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

func (e *EtcdState) applyDefaults() {
	if e.Prefix == "" {
		e.Prefix = "/credbroker/"
	}
	if e.DialTimeout == 0 {
		e.DialTimeout = 5 * time.Second
	}
	if e.RequestTimeout == 0 {
		e.RequestTimeout = 5 * time.Second
	}
	if e.ProbeInterval == 0 {
		e.ProbeInterval = DefaultEtcdProbeInterval
	}
	if e.MaxStaleness == 0 {
		e.MaxStaleness = DefaultEtcdMaxStaleness
	}
}

// UsesTLS reports whether the endpoints are https (they are all alike).
func (e *EtcdState) UsesTLS() bool {
	return len(e.Endpoints) > 0 && strings.HasPrefix(e.Endpoints[0], "https://")
}

func (e *EtcdState) validate() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("config: state.etcd."+format, a...)) }
	if len(e.Endpoints) == 0 {
		bad("endpoints: name at least one member's client URL")
	}
	schemes := map[string]bool{}
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") {
			bad("endpoints: %q is not an http:// or https:// URL of a member (host:port, nothing else)", ep)
			continue
		}
		schemes[u.Scheme] = true
	}
	if len(schemes) > 1 {
		bad("endpoints: mix http:// and https://; use one")
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") {
		bad("prefix %q must start and end with \"/\"", e.Prefix)
	}
	if (e.TLS.Cert == "") != (e.TLS.Key == "") {
		bad("tls.cert and tls.key go together")
	}
	if (e.TLS.CA != "" || e.TLS.Cert != "") && schemes["http"] {
		bad("tls is set but the endpoints are http://: use https:// endpoints")
	}
	if e.DialTimeout < 0 || e.DialTimeout > time.Minute {
		bad("dial_timeout must be between 0 (default 5s) and 1m")
	}
	if e.RequestTimeout < 0 || e.RequestTimeout > time.Minute {
		bad("request_timeout must be between 0 (default 5s) and 1m")
	}
	probeOK := e.ProbeInterval >= minEtcdProbeInterval && e.ProbeInterval <= maxEtcdProbeInterval
	if !probeOK {
		bad("probe_interval %s must be between %s and %s (default %s)", e.ProbeInterval, minEtcdProbeInterval, maxEtcdProbeInterval, DefaultEtcdProbeInterval)
	}
	switch {
	case e.MaxStaleness <= 0 || e.MaxStaleness > maxEtcdMaxStaleness:
		bad("max_staleness %s must be positive and at most %s (default %s)", e.MaxStaleness, maxEtcdMaxStaleness, DefaultEtcdMaxStaleness)
	case probeOK && e.MaxStaleness < etcdProbesPerStaleness*e.ProbeInterval:
		bad("max_staleness %s must be at least %d × probe_interval (%s), so that one late probe does not refuse service", e.MaxStaleness, etcdProbesPerStaleness, e.ProbeInterval)
	}
	return errs
}

// WriteState prints where the state is kept and what that means for limits:
// `credbroker check-config` shows it first.
func (c *Config) WriteState(w io.Writer) error {
	e := c.State.Etcd
	if e == nil {
		_, err := fmt.Fprintf(w, "state: the local bbolt file in %s, beside the audit chain (one broker)\n", c.DataDir)
		return err
	}
	auth := "no TLS"
	switch {
	case e.TLS.Cert != "":
		auth = "mTLS"
	case e.UsesTLS():
		auth = "TLS, no client certificate"
	}
	_, err := fmt.Fprintf(w, "state: etcd %s, prefix %s (%s; request timeout %s; revocations confirmed current every %s, nothing served past %s without), shared by every replica on it:\n"+
		"  quotas, join tokens, nodes, revocations, approvals, upstream budgets and the published public signing keys are fleet-wide; rate limits, the audit chain and each signing key are per replica\n",
		strings.Join(e.Endpoints, ", "), e.Prefix, auth, e.RequestTimeout, e.ProbeInterval, e.MaxStaleness)
	return err
}
