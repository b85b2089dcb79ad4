package jointoken

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/credbroker/credbroker/attest"
)

const cluster = "capi-clusters/prod-eu-1"

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func mustNew(t *testing.T, node string, ttl time.Duration) (string, Key, Token) {
	t.Helper()
	secret, key, tok, err := New(rand.Reader, epoch, cluster, node, ttl)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return secret, key, tok
}

func TestNew(t *testing.T) {
	secret, key, tok := mustNew(t, "node-a", 0)
	want := Token{ID: ID(secret), Cluster: cluster, Node: "node-a", CreatedAt: epoch, ExpiresAt: epoch.Add(DefaultTTL)}
	if tok != want {
		t.Fatalf("token %+v, want %+v", tok, want)
	}
	if key != sha256.Sum256([]byte(secret)) {
		t.Fatal("key is not the SHA-256 of the secret")
	}
	if got, err := Parse(secret); err != nil || got != key {
		t.Fatalf("Parse of a new secret = %x, %v", got, err)
	}
	if _, _, tok := mustNew(t, "", MaxTTL); !tok.ExpiresAt.Equal(epoch.Add(MaxTTL)) || tok.Node != "" {
		t.Fatalf("unbound token at the longest ttl: %+v", tok)
	}
}

func TestNewUsesTheRandomSource(t *testing.T) {
	raw := bytes.Repeat([]byte{0xfb}, 32)
	r := bytes.NewReader(raw)
	secret, _, _, err := New(r, epoch, cluster, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := "cbjt_" + base64.RawURLEncoding.EncodeToString(raw); secret != want {
		t.Fatalf("secret = %q, want %q", secret, want)
	}
	// The reader is now empty: New must fail rather than use short
	// randomness.
	if _, _, _, err := New(r, epoch, cluster, "", 0); err == nil {
		t.Fatal("New with an exhausted random source succeeded")
	}
	if _, _, _, err := New(iotest.ErrReader(errors.New("no entropy")), epoch, cluster, "", 0); err == nil || !strings.HasPrefix(err.Error(), "jointoken: ") {
		t.Fatalf("New with a failing random source: err = %v", err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, cluster, node string
		ttl                 time.Duration
	}{
		{"empty cluster", "", "", 0},
		{"cluster without namespace", "prod", "", 0},
		{"cluster with uppercase", "NS/prod", "", 0},
		{"cluster with extra slash", "ns/prod/x", "", 0},
		{"bad node", cluster, "Node_1", 0},
		{"node with slash", cluster, "a/b", 0},
		{"negative ttl", cluster, "", -time.Second},
		{"ttl over max", cluster, "", MaxTTL + time.Nanosecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secret, _, tok, err := New(rand.Reader, epoch, tc.cluster, tc.node, tc.ttl)
			if err == nil {
				t.Fatalf("New(%q, %q, %s) succeeded", tc.cluster, tc.node, tc.ttl)
			}
			if !strings.HasPrefix(err.Error(), "jointoken: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if secret != "" || tok != (Token{}) {
				t.Errorf("New returned %q, %+v with an error", secret, tok)
			}
		})
	}
}

func TestID(t *testing.T) {
	const secret = "cbjt_anything"
	h := sha256.Sum256([]byte(secret))
	if got, want := ID(secret), hex.EncodeToString(h[:])[:16]; got != want {
		t.Fatalf("ID = %q, want %q", got, want)
	}
}

func TestParseRefusesMalformed(t *testing.T) {
	secret, _, _ := mustNew(t, "", 0)
	body := secret[len("cbjt_"):]
	for name, in := range map[string]string{
		"empty":          "",
		"no prefix":      body,
		"wrong prefix":   "cbxx_" + body,
		"too short":      secret[:len(secret)-1],
		"too long":       secret + "A",
		"not base64url":  "cbjt_" + strings.Repeat("+", 43),
		"padding":        "cbjt_" + body[:42] + "=",
		"noncanonical":   "cbjt_" + body[:42] + noncanonical(body[42]),
		"upper prefix":   "CBJT_" + body,
		"trailing space": secret[:len(secret)-1] + " ",
		// encoding/base64 skips \r and \n even in strict mode: three of them
		// and 40 characters (30 bytes) made 48 characters that parsed.
		"carriage returns": "cbjt_" + body[:20] + "\r\r\r" + body[20:40],
		"newline":          "cbjt_" + body[:42] + "\n",
	} {
		if _, err := Parse(in); !errors.Is(err, ErrUnknown) || !errors.Is(err, attest.ErrNodeRejected) {
			t.Errorf("%s: Parse(%q): err = %v, want ErrUnknown matching attest.ErrNodeRejected", name, in, err)
		}
	}
}

// noncanonical returns the last base64url character with its unused low bits
// set, which a lenient decoder would accept as the same bytes.
func noncanonical(c byte) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	return string(alphabet[i|3])
}

func TestSentinels(t *testing.T) {
	all := []error{ErrUnknown, ErrUsed, ErrExpired, ErrWrongNode, ErrNoNode}
	for i, err := range all {
		if !errors.Is(err, attest.ErrNodeRejected) {
			t.Errorf("%v does not match attest.ErrNodeRejected", err)
		}
		if !strings.HasPrefix(err.Error(), "jointoken: ") {
			t.Errorf("%q lacks the package prefix", err)
		}
		for j, other := range all {
			if i != j && errors.Is(err, other) {
				t.Errorf("%v matches %v", err, other)
			}
		}
	}
}

func TestUsable(t *testing.T) {
	bound := Token{ID: "0123456789abcdef", Cluster: cluster, Node: "worker-1", CreatedAt: epoch, ExpiresAt: epoch.Add(time.Hour)}
	unbound := bound
	unbound.Node = ""
	used := bound
	used.UsedAt, used.UsedBy = epoch, "worker-1"
	for name, c := range map[string]struct {
		t    Token
		node string
		now  time.Time
		want error
		as   string
	}{
		"bound, same name":       {bound, "worker-1", epoch, nil, "worker-1"},
		"bound, no name":         {bound, "", epoch, nil, "worker-1"},
		"bound, other name":      {bound, "worker-2", epoch, ErrWrongNode, ""},
		"unbound, a name":        {unbound, "worker-2", epoch, nil, "worker-2"},
		"unbound, no name":       {unbound, "", epoch, ErrNoNode, ""},
		"used":                   {used, "worker-1", epoch, ErrUsed, ""},
		"used beats wrong name":  {used, "worker-2", epoch, ErrUsed, ""},
		"expired":                {bound, "worker-1", epoch.Add(time.Hour), ErrExpired, ""},
		"last instant is usable": {bound, "worker-1", epoch.Add(time.Hour - time.Nanosecond), nil, "worker-1"},
	} {
		err := Usable(c.t, c.node, c.now)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
		if err == nil && NodeFor(c.t, c.node) != c.as {
			t.Errorf("%s: joins as %q, want %q", name, NodeFor(c.t, c.node), c.as)
		}
	}
	if err := Usable(bound, "worker-2", epoch); !strings.Contains(err.Error(), `"worker-1"`) {
		t.Errorf("a wrong name is refused without saying which node the token is for: %v", err)
	}
}
