package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
)

// MinSecretLen is the shortest HMAC secret LoadSecret accepts: a shorter one
// could be guessed from a captured delivery.
const MinSecretLen = 16

// Secret is an HMAC key. Its String, GoString and LogValue print a
// placeholder, so a Secret that reaches a log line, a %v or an error message
// shows nothing of the key. It is held in memory only: credbroker never
// writes it anywhere.
type Secret struct{ b []byte }

// NewSecret wraps key (copied).
func NewSecret(key []byte) Secret { return Secret{b: bytes.Clone(key)} }

// Bytes returns the key; only signing and verification should need it.
func (s Secret) Bytes() []byte { return s.b }

// String hides the key.
func (s Secret) String() string { return "[redacted]" }

// GoString hides the key from %#v.
func (s Secret) GoString() string { return "webhook.Secret{[redacted]}" }

// LogValue hides the key from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// MarshalText hides the key from encoders (JSON, YAML).
func (s Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// LoadSecret reads a secret from the environment variable env or from file
// (exactly one must be set). A trailing newline is not part of the key, so
// `echo KEY > file` works. Errors name the variable or file, never the
// value.
func LoadSecret(env, file string) (Secret, error) {
	var raw []byte
	switch {
	case env != "" && file != "":
		return Secret{}, errors.New("webhook: secret_env and secret_file exclude each other")
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok {
			return Secret{}, fmt.Errorf("webhook: secret environment variable %s is not set", env)
		}
		raw = []byte(v)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return Secret{}, fmt.Errorf("webhook: secret file: %w", err)
		}
		raw = b
	default:
		return Secret{}, errors.New("webhook: a secret is required (secret_env or secret_file)")
	}
	raw = bytes.TrimRight(raw, "\r\n")
	if len(raw) < MinSecretLen {
		src := "environment variable " + env
		if file != "" {
			src = "file " + file
		}
		return Secret{}, fmt.Errorf("webhook: secret from %s is shorter than %d bytes", src, MinSecretLen)
	}
	return Secret{b: raw}, nil
}

// CheckURL accepts only absolute http and https URLs with a host and without
// user info (credentials in a URL would travel into logs and configs
// printed for debugging).
func CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("webhook: url does not parse")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("webhook: url scheme %q: only http and https are allowed", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("webhook: url has no host")
	}
	if u.User != nil {
		return nil, errors.New("webhook: url must not carry user info; use the signing secret")
	}
	return u, nil
}
