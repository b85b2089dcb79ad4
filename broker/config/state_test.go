package config

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func withState(state string) (*Config, error) {
	return Parse(strings.NewReader(string(DevYAML()) + "\nstate:\n" + state))
}

func TestStateConfig(t *testing.T) {
	c, err := Parse(bytes.NewReader(DevYAML()))
	if err != nil {
		t.Fatal(err)
	}
	if c.State.Etcd != nil {
		t.Fatalf("the default state is not the local file: %+v", c.State.Etcd)
	}

	c, err = withState("  etcd:\n    endpoints: [\"http://127.0.0.1:2379\", \"http://127.0.0.2:2379\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	if e := c.State.Etcd; e.Prefix != "/credbroker/" || e.DialTimeout != 5*time.Second || e.RequestTimeout != 5*time.Second || len(e.Endpoints) != 2 || e.UsesTLS() ||
		e.ProbeInterval != DefaultEtcdProbeInterval || e.MaxStaleness != DefaultEtcdMaxStaleness {
		t.Errorf("defaults: %+v", e)
	}

	c, err = withState(`  etcd:
    endpoints: ["https://etcd-0.etcd:2379"]
    prefix: /fleet-a/credbroker/
    tls: {ca: /etc/etcd/ca.pem, cert: /etc/etcd/client.pem, key: /etc/etcd/client-key.pem}
    dial_timeout: 2s
    request_timeout: 3s
    probe_interval: 100ms
    max_staleness: 1s
`)
	if err != nil {
		t.Fatal(err)
	}
	if e := c.State.Etcd; e.Prefix != "/fleet-a/credbroker/" || !e.UsesTLS() || e.TLS.Cert != "/etc/etcd/client.pem" || e.RequestTimeout != 3*time.Second || e.DialTimeout != 2*time.Second ||
		e.ProbeInterval != 100*time.Millisecond || e.MaxStaleness != time.Second {
		t.Errorf("mTLS: %+v", e)
	}
	var out bytes.Buffer
	if err := c.WriteState(&out); err != nil {
		t.Fatal(err)
	}
	if want := "state: etcd https://etcd-0.etcd:2379, prefix /fleet-a/credbroker/ (mTLS; request timeout 3s; revocations confirmed current every 100ms, nothing served past 1s without)"; !strings.HasPrefix(out.String(), want) {
		t.Errorf("WriteState = %q, want it to start %q", out.String(), want)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"  etcd: {}\n", "state.etcd.endpoints: name at least one"},
		{"  etcd:\n    endpoints: [\"127.0.0.1:2379\"]\n", "is not an http:// or https:// URL"},
		{"  etcd:\n    endpoints: [\"http://user:pw@127.0.0.1:2379\"]\n", "is not an http:// or https:// URL"},
		{"  etcd:\n    endpoints: [\"http://a:2379\", \"https://b:2379\"]\n", "mix http:// and https://"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    prefix: /credbroker\n", `prefix "/credbroker" must start and end`},
		{"  etcd:\n    endpoints: [\"https://a:2379\"]\n    tls: {cert: /c.pem}\n", "tls.cert and tls.key go together"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    tls: {ca: /ca.pem}\n", "use https:// endpoints"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    request_timeout: 2m\n", "request_timeout"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    dial_timeout: -1s\n", "dial_timeout"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_interval: -1s\n", "probe_interval -1s must be between 10ms and 30s"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_interval: 1ms\n", "probe_interval 1ms must be between"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_interval: 1m\n    max_staleness: 1m\n", "probe_interval 1m0s must be between"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    max_staleness: -2s\n", "max_staleness -2s must be positive and at most 1m"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    max_staleness: 2m\n", "max_staleness 2m0s must be positive and at most 1m"},
		// The default probe interval (250ms) against a bound it cannot keep.
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    max_staleness: 300ms\n", "max_staleness 300ms must be at least 2 × probe_interval (250ms)"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_interval: 1s\n    max_staleness: 1s\n", "max_staleness 1s must be at least 2 × probe_interval (1s)"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_interval: 3s\n", "max_staleness 2s must be at least 2 × probe_interval (3s)"},
		{"  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_timeout: 1s\n", "field probe_timeout not found"},
		{"  etcd:\n    endpoint: [\"http://a:2379\"]\n", "field endpoint not found"},
		{"  etcd:\n    endpoints: [\"https://a:2379\"]\n    tls: {ca: /ca.pem, certificate: /c.pem}\n", "field certificate not found"},
		{"  bbolt: {}\n", "field bbolt not found"},
	} {
		_, err := withState(tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to mention %q", tc.yaml, err, tc.want)
		}
	}
	// The bounds themselves are accepted.
	for _, b := range []struct{ probe, stale time.Duration }{
		{10 * time.Millisecond, 20 * time.Millisecond},
		{30 * time.Second, time.Minute},
	} {
		c, err := withState(fmt.Sprintf("  etcd:\n    endpoints: [\"http://a:2379\"]\n    probe_interval: %s\n    max_staleness: %s\n", b.probe, b.stale))
		if err != nil {
			t.Errorf("probe_interval %s, max_staleness %s: %v", b.probe, b.stale, err)
		} else if e := c.State.Etcd; e.ProbeInterval != b.probe || e.MaxStaleness != b.stale {
			t.Errorf("probe_interval %s, max_staleness %s read as %s, %s", b.probe, b.stale, e.ProbeInterval, e.MaxStaleness)
		}
	}
}
