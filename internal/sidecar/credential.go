package sidecar

import (
	"fmt"
	"log/slog"
	"time"
)

// Credential is one set of temporary AWS credentials. Its String and
// LogValue methods never show the secret parts, so a Credential that ends
// up in a log line or an error leaks nothing.
type Credential struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	// IssuanceID is the broker's id for the issuance (audit reference).
	IssuanceID string
}

// String shows the access key id, issuance id and expiry only.
func (c Credential) String() string {
	return fmt.Sprintf("credential{access_key_id=%s issuance_id=%s expires=%s}", c.AccessKeyID, c.IssuanceID, c.Expiration.UTC().Format(time.RFC3339))
}

// GoString is String, so that %#v does not print secrets either.
func (c Credential) GoString() string { return c.String() }

// LogValue implements slog.LogValuer without the secret parts.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("access_key_id", c.AccessKeyID),
		slog.String("issuance_id", c.IssuanceID),
		slog.Time("expires", c.Expiration.UTC()),
	)
}
