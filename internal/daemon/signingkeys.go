package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers/jwt"
)

// keyMaintainInterval is how often a local JWT issuer publishes its keys,
// rotates them when due and re-reads the other replicas': well inside the
// shortest publish_ahead (6m), so a new key is in every replica's JWKS
// long before it signs.
const keyMaintainInterval = 30 * time.Second

// signingKeyStore is the state seam's published signing keys, as one local
// JWT issuer (by name) sees them.
type signingKeyStore struct {
	keys   state.SigningKeys
	issuer string
}

// PublishKey implements jwt.KeyStore.
func (s signingKeyStore) PublishKey(ctx context.Context, k jwt.PublishedKey, now time.Time) error {
	return s.keys.PublishKey(ctx, state.PublicKey{Issuer: s.issuer, Replica: k.Replica, KID: k.KID, JWK: k.JWK, NotAfter: k.NotAfter}, now)
}

// ListKeys implements jwt.KeyStore.
func (s signingKeyStore) ListKeys(ctx context.Context, now time.Time) ([]jwt.PublishedKey, error) {
	keys, err := s.keys.ListKeys(ctx, s.issuer, now)
	if err != nil {
		return nil, err
	}
	out := make([]jwt.PublishedKey, len(keys))
	for i, k := range keys {
		out[i] = jwt.PublishedKey{Replica: k.Replica, KID: k.KID, JWK: k.JWK, NotAfter: k.NotAfter}
	}
	return out, nil
}

// maxTokenTTL is the longest lifetime of a token a local issuer may sign
// (any profile's max_ttl, and at least an hour for the tokens other
// issuers sign with it): a key stays in the JWKS that long after it
// stopped signing.
func maxTokenTTL(cfg *config.Config) time.Duration {
	ttl := time.Hour
	for _, p := range cfg.Profiles {
		ttl = max(ttl, p.MaxTTL)
	}
	return ttl
}

// maintainKeys keeps iss's keys published, rotated and its JWKS current
// until ctx ends.
func maintainKeys(ctx context.Context, iss *jwt.Issuer, log *slog.Logger) {
	t := time.NewTicker(keyMaintainInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := iss.Maintain(ctx); err != nil && ctx.Err() == nil {
				log.Warn("signing keys: publishing or listing failed; the JWKS keeps the keys last listed", slog.Any("error", err))
			}
		}
	}
}

// recordAbandonedRotations puts on record every signing-key rotation on
// demand that a local JWT issuer found cut short at start: the process
// stopped after the rotation's key_rotated record, perhaps, but before the
// new key signed. The issuer has withdrawn that key and the previous key
// signs on; without this record the trail would say the rotation happened.
// A record that cannot be written fails the start, as the audit does
// everywhere.
func recordAbandonedRotations(set *issuerSet, l broker.AuditLog, self string, newID func() (string, error), log *slog.Logger) error {
	for name, iss := range implementing[interface{ AbandonedRotation() string }](set) {
		kid := iss.AbandonedRotation()
		if kid == "" {
			continue
		}
		text := fmt.Sprintf("a rotation on demand of issuer %s to key %s was cut short by a stop before the key signed: the key is withdrawn, the previous key still signs", name, kid)
		id, err := newID()
		if err != nil {
			return err
		}
		rec := audit.Record{IssuanceID: id, Caller: self, Attestation: "broker", Decision: audit.DecisionFailed, Issuer: name, UpstreamRef: kid, Reason: text}
		if _, err := l.Append(rec); err != nil {
			return fmt.Errorf("issuers.%s: putting on record a key rotation cut short: %w", name, err)
		}
		log.Warn("signing key rotation cut short by a stop; the previous key still signs", slog.String("issuer", name), slog.String("kid", kid))
	}
	return nil
}
