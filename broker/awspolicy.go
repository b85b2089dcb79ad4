package broker

import (
	"context"
	"errors"
	"time"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// AWSPolicy is the IAM deny document that takes back at AWS the STS
// sessions some revocations cover (issuers/awssts compiles it), and how the
// broker's own application of it stands.
type AWSPolicy struct {
	// Document is the policy (compact JSON); empty when nothing is denied.
	Document string
	// Entries is how many revocations it enforces.
	Entries int
	// Omitted are the revocations in effect left out for size (not
	// enforced at AWS), oldest first.
	Omitted []string
	// Chars is its size as IAM counts it.
	Chars int
	// Roles is, for each role the broker applies revocations to itself,
	// how the last attempt went.
	Roles []AWSRoleStatus
}

// AWSRoleStatus is how the broker's application of its deny document to
// one role stands.
type AWSRoleStatus struct {
	RoleARN, PolicyName string
	// InSync reports whether the role's policy is what is wanted now.
	InSync bool
	// Entries, Omitted and Chars describe the document last applied.
	Entries, Omitted, Chars int
	// AppliedAt is when it was last written or found up to date.
	AppliedAt time.Time
	// Error is the last failure as an IAM error code, empty after a success.
	Error string
}

// ErrNoRevocation is returned by an AWSPolicies for an id it does not hold.
var ErrNoRevocation = errors.New("broker: no such revocation")

// AWSPolicies compiles the AWS deny documents of revocations.
type AWSPolicies interface {
	// AWSPolicy returns the document for revocation id, or for every
	// revocation in effect when id is empty, with the status of the roles
	// the broker applies revocations to; ErrNoRevocation for an id it does
	// not hold.
	AWSPolicy(ctx context.Context, id string) (AWSPolicy, error)
}

// WithAWSPolicies makes Revoke answer with the AWS deny document of the
// revocation it made, and serves GetAWSRevocationPolicy.
func WithAWSPolicies(p AWSPolicies) RevocationOption {
	return func(v *Revocations) { v.aws = p }
}

var errNoAWS = errorf(credbrokerv1.ErrorReason_MISCONFIGURED, "no AWS STS issuer is configured; there is no AWS deny policy")

// awsPolicy returns revocation id's AWS deny document for the admin API.
func (v *Revocations) awsPolicy(ctx context.Context, id string) (*credbrokerv1.AWSRevocationPolicy, error) {
	if v.aws == nil {
		return nil, errNoAWS
	}
	p, err := v.aws.AWSPolicy(ctx, id)
	switch {
	case errors.Is(err, ErrNoRevocation):
		return nil, errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no revocation %q (lifted, expired and purged, or never made)", clip(id))
	case err != nil:
		return nil, wrapf(credbrokerv1.ErrorReason_INTERNAL, err, "cannot compile the AWS deny policy")
	}
	return AWSPolicyProto(p), nil
}

// AWSPolicyProto converts an AWS deny document to its API form.
func AWSPolicyProto(p AWSPolicy) *credbrokerv1.AWSRevocationPolicy {
	out := &credbrokerv1.AWSRevocationPolicy{Document: p.Document, Entries: int32(min(p.Entries, 1<<31-1)),
		Omitted: p.Omitted, Chars: int32(min(p.Chars, 1<<31-1))}
	for _, r := range p.Roles {
		out.Roles = append(out.Roles, &credbrokerv1.AWSRoleRevocationPolicy{
			RoleArn: r.RoleARN, PolicyName: r.PolicyName, InSync: r.InSync,
			Entries: int32(min(r.Entries, 1<<31-1)), Omitted: int32(min(r.Omitted, 1<<31-1)), Chars: int32(min(r.Chars, 1<<31-1)),
			AppliedAt: ProtoTime(r.AppliedAt), Error: r.Error,
		})
	}
	return out
}

// GetAWSRevocationPolicy implements AdminService.GetAWSRevocationPolicy.
func (a *Admin) GetAWSRevocationPolicy(ctx context.Context, req *credbrokerv1.GetAWSRevocationPolicyRequest) (*credbrokerv1.GetAWSRevocationPolicyResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	if len(req.GetRevocationId()) > 128 {
		return nil, toStatus(errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "revocation id is longer than 128 bytes"))
	}
	p, err := a.rev.awsPolicy(ctx, req.GetRevocationId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &credbrokerv1.GetAWSRevocationPolicyResponse{Policy: p}, nil
}
