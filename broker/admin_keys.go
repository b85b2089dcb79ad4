package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// signingKeys serves the signing-key part of the admin API.
type signingKeys struct {
	rings  map[string]issuers.KeyRing
	audit  AuditLog
	alerts alerts.Emitter
}

// WithSigningKeys serves ListSigningKeys and RotateSigningKey over rings,
// the local JWT issuers by name: log records every rotation (before the
// new key signs) and e raises key_rotated. Without it, or with no ring,
// those methods answer FAILED_PRECONDITION (MISCONFIGURED).
func WithSigningKeys(rings map[string]issuers.KeyRing, log AuditLog, e alerts.Emitter) AdminOption {
	if e == nil {
		e = alerts.Nop{}
	}
	return func(a *Admin) { a.keys = &signingKeys{rings: rings, audit: log, alerts: e} }
}

// ring returns the ring named, or the only one when none is named.
func (a *Admin) ring(name string) (string, issuers.KeyRing, error) {
	if a.keys == nil || len(a.keys.rings) == 0 {
		return "", nil, errorf(credbrokerv1.ErrorReason_MISCONFIGURED, "no local JWT issuer is configured: there are no signing keys")
	}
	names := slices.Sorted(maps.Keys(a.keys.rings))
	if name == "" {
		if len(names) > 1 {
			return "", nil, invalid("issuer", "several local JWT issuers (%s): name one", strings.Join(names, ", "))
		}
		name = names[0]
	}
	r, ok := a.keys.rings[name]
	if !ok {
		return "", nil, invalid("issuer", "%q is not a local JWT issuer (they are: %s)", clip(name), strings.Join(names, ", "))
	}
	return name, r, nil
}

var keyStates = map[issuers.KeyState]credbrokerv1.SigningKeyState{
	issuers.KeyActive:    credbrokerv1.SigningKeyState_SIGNING_KEY_STATE_ACTIVE,
	issuers.KeyPublished: credbrokerv1.SigningKeyState_SIGNING_KEY_STATE_PUBLISHED,
	issuers.KeyRetired:   credbrokerv1.SigningKeyState_SIGNING_KEY_STATE_RETIRED,
}

// ListSigningKeys lists the keys of one local JWT issuer, or of all.
func (a *Admin) ListSigningKeys(ctx context.Context, req *credbrokerv1.ListSigningKeysRequest) (*credbrokerv1.ListSigningKeysResponse, error) {
	names := []string{req.GetIssuer()}
	if req.GetIssuer() == "" && a.keys != nil && len(a.keys.rings) > 1 {
		names = slices.Sorted(maps.Keys(a.keys.rings))
	}
	resp := &credbrokerv1.ListSigningKeysResponse{}
	for _, n := range names {
		name, ring, err := a.ring(n)
		if err != nil {
			return nil, toStatus(err)
		}
		keys, err := ring.SigningKeys(ctx)
		if err != nil {
			return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "the shared key store is unavailable"))
		}
		for _, k := range keys {
			resp.Keys = append(resp.Keys, &credbrokerv1.SigningKey{Issuer: name, Kid: k.KID, Replica: k.Replica, Alg: k.Alg,
				State: keyStates[k.State], CreatedAt: ProtoTime(k.Created), NotAfter: ProtoTime(k.NotAfter)})
		}
	}
	return resp, nil
}

// RotateSigningKey makes this replica sign with a new key at once; the
// rotation is on record before the new key signs.
func (a *Admin) RotateSigningKey(ctx context.Context, req *credbrokerv1.RotateSigningKeyRequest) (*credbrokerv1.RotateSigningKeyResponse, error) {
	name, ring, err := a.ring(req.GetIssuer())
	if err != nil {
		return nil, toStatus(err)
	}
	admin := AdminPrincipal(ctx)
	retire := req.GetRetirePrevious()
	var stored audit.Record
	var recordErr error
	rot, err := ring.RotateSigningKey(ctx, retire, func(kid, previous string) error {
		what := "published until its last token has expired"
		if retire {
			what = "withdrawn from the JWKS at once: tokens it signed no longer verify"
		}
		rec := audit.Record{Caller: clip(admin), Attestation: attestAdmin, Decision: audit.DecisionKeyRotated, Issuer: clip(name), UpstreamRef: kid,
			Reason: clip(fmt.Sprintf("signing key of issuer %s rotated by %s: key %s signs, replacing key %s, %s", name, admin, kid, previous, what))}
		stored, recordErr = a.keys.audit.Append(rec)
		return recordErr
	})
	switch {
	case recordErr != nil:
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, recordErr, "audit store unavailable; the key was not rotated"))
	case errors.Is(err, issuers.ErrTooManyKeys):
		return nil, toStatus(invalid("retire_previous", "%s; rotate with retire_previous, or later", clip(err.Error())))
	case err != nil && rot.KID == "" && stored.Seq != 0:
		// On record as rotated, yet the last step failed: the record that
		// follows says so.
		rec := audit.Record{Caller: clip(admin), Attestation: attestAdmin, Decision: audit.DecisionFailed, Issuer: clip(name), UpstreamRef: stored.UpstreamRef,
			Reason: clip(fmt.Sprintf("the rotation of seq %d failed after its record: key %s does not sign, the previous key still does", stored.Seq, stored.UpstreamRef))}
		if _, aerr := a.keys.audit.Append(rec); aerr != nil {
			return nil, toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, errors.Join(err, aerr),
				"the signing key could not be rotated (the previous key still signs), and the audit store cannot say so after record seq %d stated it", stored.Seq))
		}
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "the signing key could not be rotated; the previous key still signs (on record)"))
	case err != nil && rot.KID == "":
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "the signing key could not be rotated; the previous key still signs"))
	}
	a.keys.alerts.Emit(ctx, alerts.Event{Rule: alerts.KeyRotated, Subject: "issuer " + name, Summary: stored.Reason,
		Fields: map[string]string{"issuer": name, "kid": rot.KID, "previous_kid": rot.PreviousKID, "admin": admin,
			"retire_previous": fmt.Sprint(retire), "replica": stored.Replica}})
	if err != nil {
		// The new key signs; what failed is tidying up after it.
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "key %s signs and is on record, but the rotation did not finish cleanly", rot.KID))
	}
	return &credbrokerv1.RotateSigningKeyResponse{Issuer: name, Kid: rot.KID, PreviousKid: rot.PreviousKID,
		PreviousNotAfter: ProtoTime(rot.PreviousNotAfter), Record: RecordProto(stored)}, nil
}
