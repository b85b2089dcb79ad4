package config

import (
	"bytes"
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
	if e := c.State.Etcd; e.Prefix != "/credbroker/" || e.DialTimeout != 5*time.Second || e.RequestTimeout != 5*time.Second || len(e.Endpoints) != 2 || e.UsesTLS() {
		t.Errorf("defaults: %+v", e)
	}

	c, err = withState(`  etcd:
    endpoints: ["https://etcd-0.etcd:2379"]
    prefix: /fleet-a/credbroker/
    tls: {ca: /etc/etcd/ca.pem, cert: /etc/etcd/client.pem, key: /etc/etcd/client-key.pem}
    dial_timeout: 2s
    request_timeout: 3s
`)
	if err != nil {
		t.Fatal(err)
	}
	if e := c.State.Etcd; e.Prefix != "/fleet-a/credbroker/" || !e.UsesTLS() || e.TLS.Cert != "/etc/etcd/client.pem" || e.RequestTimeout != 3*time.Second || e.DialTimeout != 2*time.Second {
		t.Errorf("mTLS: %+v", e)
	}
	var out bytes.Buffer
	if err := c.WriteState(&out); err != nil {
		t.Fatal(err)
	}
	if want := "state: etcd https://etcd-0.etcd:2379, prefix /fleet-a/credbroker/ (mTLS; request timeout 3s)"; !strings.HasPrefix(out.String(), want) {
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
		{"  etcd:\n    endpoint: [\"http://a:2379\"]\n", "field endpoint not found"},
		{"  etcd:\n    endpoints: [\"https://a:2379\"]\n    tls: {ca: /ca.pem, certificate: /c.pem}\n", "field certificate not found"},
		{"  bbolt: {}\n", "field bbolt not found"},
	} {
		_, err := withState(tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to mention %q", tc.yaml, err, tc.want)
		}
	}
}
