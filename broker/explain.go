package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// The steps of a decision, in the order issuance takes them.
const (
	stepRequest    = "request"
	stepRevocation = "revocation"
	stepPolicy     = "policy"
	stepRate       = "rate limit"
	stepApproval   = "approval"
	stepQuota      = "quota"
	stepUpstream   = "upstream"
)

// previewIssuanceID stands for the issuance id in a preview (session tags
// name it); the real one is assigned when the request is served.
const previewIssuanceID = "assigned-at-issuance"

// QuotaReader reads a quota key's current window (state.Quotas).
type QuotaReader interface {
	Usage(ctx context.Context, now time.Time, key state.QuotaKey) (state.Usage, error)
}

// explanation accumulates an ExplainPolicyResponse: each step's outcome,
// and the first refusal, which is the answer.
type explanation struct {
	out   *credbrokerv1.ExplainPolicyResponse
	first error
}

func (e *explanation) step(name string, refusal error, detail string) {
	outcome := credbrokerv1.ExplainOutcome_EXPLAIN_OUTCOME_PASS
	if refusal != nil {
		outcome = credbrokerv1.ExplainOutcome_EXPLAIN_OUTCOME_REFUSE
		if detail == "" {
			detail = reasonOf(refusal)
		}
		if e.first == nil {
			e.first = refusal
		}
	}
	e.out.Steps = append(e.out.Steps, &credbrokerv1.ExplainStep{Step: name, Outcome: outcome, Detail: detail})
}

func (e *explanation) notReached(name, why string) {
	e.out.Steps = append(e.out.Steps, &credbrokerv1.ExplainStep{Step: name, Outcome: credbrokerv1.ExplainOutcome_EXPLAIN_OUTCOME_NOT_REACHED, Detail: why})
}

// Explain answers whether IssueCredential would serve req from the identity
// id now, and why, with the decision issuance itself takes (decide), the
// limiter's own check of the rate bucket, the profile's approval rule, and
// the quota windows read from quotas. It issues nothing, takes no rate
// token, spends no quota and writes nothing. What it cannot foresee is an
// upstream failure, and a request made meanwhile by the identity itself.
func (s *Service) Explain(ctx context.Context, id spiffeid.ID, req *credbrokerv1.IssueCredentialRequest, quotas QuotaReader) (*credbrokerv1.ExplainPolicyResponse, error) {
	caller := attest.Caller{ID: id, Method: "explain", Constraints: attest.ConstraintsFor(id)}
	e := &explanation{out: &credbrokerv1.ExplainPolicyResponse{Rule: -1}}
	d := s.decide(caller, req)

	// The request: well-formed for a known profile, defaults applied.
	if !d.valid {
		e.step(stepRequest, d.err, "")
	} else {
		e.out.Cluster, e.out.Audience, e.out.Ttl, e.out.Issuer = d.grant.cluster, d.grant.audience, durationpb.New(d.grant.ttl), d.prof.IssuerName
		e.step(stepRequest, nil, fmt.Sprintf("profile %s on issuer %s, cluster %s, audience %s, ttl %s",
			d.prof.Name, d.prof.IssuerName, orNone(d.grant.cluster), d.grant.audience, d.grant.ttl))
	}

	// Revocations in force covering the identity or the cluster (checked
	// on the request's cluster even when the request is malformed).
	cluster := d.grant.cluster
	if !d.valid && attest.ValidCluster(req.GetCluster()) {
		cluster = req.GetCluster()
	}
	if r, ok := s.covering("", id.String(), cluster); ok {
		e.out.Revocation = RevocationProto(r)
		e.step(stepRevocation, revokedError(r), "")
	} else {
		e.step(stepRevocation, nil, "no revocation in force covers the identity or the cluster")
	}

	// Policy: which rule grants it, or why none does.
	if d.askedPol {
		e.out.Rule = int32(d.policy.Rule)
		if d.policy.Allowed {
			e.out.RuleId = s.policy.Rules()[d.policy.Rule].ID
			e.step(stepPolicy, nil, fmt.Sprintf("%s (id %s)", d.policy.Reason, e.out.RuleId))
		} else {
			e.step(stepPolicy, d.err, "")
		}
	} else if _, known := s.profiles[req.GetProfile()]; known && d.valid {
		// Revoked: the policy was not asked, but say what it would answer.
		p := s.policy.Allow(id, d.prof.Name, d.grant.cluster)
		e.notReached(stepPolicy, "revoked first; the policy would say: "+p.Reason)
	} else {
		e.notReached(stepPolicy, "the request is not valid")
	}
	if d.err != nil {
		e.notReached(stepRate, "refused before")
		if err := s.explainApproval(ctx, e, id, d); err != nil {
			return nil, err
		}
		e.notReached(stepQuota, "refused before")
		return e.finish(), nil
	}

	// The rate limit: the limiter's own answer, taking no token.
	res, err := s.limiter.Check(id.String(), d.grant.cluster, d.limits)
	if err != nil {
		_, refusal := limitError(err)
		e.step(stepRate, refusal, "")
	} else if d.limits.Rate == 0 {
		e.step(stepRate, nil, "unlimited")
	} else {
		e.step(stepRate, nil, fmt.Sprintf("%g/s, burst %d (%s): a token is available", float64(d.limits.Rate), d.limits.Burst, scopeName(d.limits.Scope)))
	}

	if err := s.explainApproval(ctx, e, id, d); err != nil {
		return nil, err
	}

	// The quotas the intent (or the issued record) would spend from, read
	// as Spend reads them.
	if res == nil {
		e.notReached(stepQuota, "refused before")
		return e.finish(), nil
	}
	if err := s.explainQuotas(ctx, e, res.Charges(), quotas); err != nil {
		return nil, err
	}
	// What the issuer would send upstream, for issuers that can say; what
	// it cannot build, issuance could not either.
	if pv, ok := d.prof.Issuer.(issuers.Previewer); ok {
		p, err := pv.Preview(issuers.Request{IssuanceID: previewIssuanceID, Subject: id.String(), Profile: d.prof.Name,
			Cluster: d.grant.cluster, Audience: d.grant.audience, TTL: d.grant.ttl})
		if err != nil {
			e.step(stepUpstream, issuerError(err, previewIssuanceID), "")
		} else {
			e.out.Upstream = &credbrokerv1.UpstreamPreview{Target: p.Target, SessionPolicy: p.SessionPolicy, Details: p.Details}
			e.step(stepUpstream, nil, "would ask "+p.Target)
		}
	}
	return e.finish(), nil
}

// explainApproval reports whether the profile needs two-person approval
// and, when it does, what the request would meet: its approval (found as
// RequestApproval finds it: the requester's, bound to the request's digest,
// neither consumed nor expired) granted, pending or denied, or none
// yet — a request would then open one and be refused with
// APPROVAL_REQUIRED.
func (s *Service) explainApproval(ctx context.Context, e *explanation, id spiffeid.ID, d decision) error {
	if !d.valid {
		e.notReached(stepApproval, "the request is not valid")
		return nil
	}
	rule, needed := s.ApprovalNeeded(d.prof.Name)
	if !needed {
		e.step(stepApproval, nil, "not required for profile "+d.prof.Name)
		return nil
	}
	e.out.Approvers, e.out.ApprovalWindow = int32(rule.Approvers), durationpb.New(rule.Window)
	if d.err != nil {
		e.notReached(stepApproval, fmt.Sprintf("profile %s needs %d approvals within %s; refused before", d.prof.Name, rule.Approvers, rule.Window))
		return nil
	}
	digest := RequestDigest(id.String(), d.prof.Name, d.grant.cluster, d.grant.audience, d.grant.ttl)
	a, found, err := s.approvals.open(ctx, id.String(), digest, s.now())
	if err != nil {
		return err
	}
	switch {
	case found && a.Status == state.ApprovalGranted:
		e.step(stepApproval, nil, fmt.Sprintf("approval %s of this exact request is granted (by %s); the request would use it", a.ID, joinOr(a.Admins(), "-")))
	case found && a.Status == state.ApprovalDenied:
		e.step(stepApproval, deniedError(a), "")
	case found:
		e.step(stepApproval, s.approvals.requiredError(a), "")
	default:
		why := fmt.Sprintf("profile %q needs the approval of %d distinct admins other than the requester within %s; no approval of this exact request is open, so the request would open one and be refused until it is granted",
			d.prof.Name, rule.Approvers, rule.Window)
		e.step(stepApproval, errorf(credbrokerv1.ErrorReason_APPROVAL_REQUIRED, "%s", why), "")
	}
	return nil
}

// open returns the approval of requester bound to digest that is neither
// consumed nor expired at now, as RequestApproval would find it.
func (v *Approvals) open(ctx context.Context, requester, digest string, now time.Time) (state.Approval, bool, error) {
	a, found, err := v.store.FindApproval(ctx, requester, digest, now)
	if err != nil {
		return state.Approval{}, false, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "approval store unavailable")
	}
	return a, found, nil
}

func joinOr(s []string, none string) string {
	if len(s) == 0 {
		return none
	}
	return strings.Join(s, ", ")
}

// explainQuotas reports each quota a request would spend from, and refuses
// as Spend would when one has no unit left.
func (s *Service) explainQuotas(ctx context.Context, e *explanation, charges []state.Charge, quotas QuotaReader) error {
	if len(charges) == 0 {
		e.step(stepQuota, nil, "no quota limits this request")
		return nil
	}
	now := s.now()
	var full []state.Charge
	var ends []time.Time
	var detail string
	for _, c := range charges {
		u, err := quotas.Usage(ctx, now, c.Key)
		if err != nil {
			return wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "quota store unavailable")
		}
		used, end := 0, time.Time{}
		if now.Before(u.ResetAt) {
			used, end = u.Used, u.ResetAt
			// A window never outlasts now + the configured window (Spend).
			if limit := now.Add(c.Quota.Window); end.After(limit) {
				end = limit
			}
		}
		q := &credbrokerv1.ExplainQuota{Max: clamp32(c.Quota.Max), Window: durationpb.New(c.Quota.Window), Used: clamp32(used),
			Remaining: clamp32(max(c.Quota.Max-used, 0)), ResetAt: ProtoTime(end)}
		if c.Key.Kind == state.QuotaCluster {
			q.Key = &credbrokerv1.ExplainQuota_Cluster{Cluster: c.Key.Name}
		} else {
			q.Key = &credbrokerv1.ExplainQuota_SpiffeId{SpiffeId: c.Key.Name}
		}
		e.out.Quotas = append(e.out.Quotas, q)
		if detail != "" {
			detail += "; "
		}
		detail += fmt.Sprintf("%s: %d of %d per %s used, %d left", c.Key, used, c.Quota.Max, c.Quota.Window, q.Remaining)
		if used >= c.Quota.Max {
			full, ends = append(full, c), append(ends, end)
		}
	}
	var refusal error
	if len(full) > 0 {
		var ex *state.ExhaustedError
		if errors.As(state.Exhausted(now, full, ends), &ex) {
			refusal = quotaError(ex)
		}
	}
	e.step(stepQuota, refusal, detail)
	return nil
}

// finish sets the answer: granted when no step refused, else the first
// refusal's reason and message, as IssueCredential would answer.
func (e *explanation) finish() *credbrokerv1.ExplainPolicyResponse {
	if e.first == nil {
		e.out.Granted = true
		return e.out
	}
	var ae *apiError
	if errors.As(e.first, &ae) {
		e.out.RefusalReason, e.out.Refusal = ae.reason, ae.msg
	}
	return e.out
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func scopeName(scope string) string {
	if scope == "" {
		return "the defaults"
	}
	return scope
}

// ExplainPolicy implements AdminService.ExplainPolicy (Service.Explain).
func (a *Admin) ExplainPolicy(ctx context.Context, req *credbrokerv1.ExplainPolicyRequest) (*credbrokerv1.ExplainPolicyResponse, error) {
	if a.decide == nil || a.st == nil {
		return nil, toStatus(errorf(credbrokerv1.ErrorReason_MISCONFIGURED, "policy explain is not wired into this broker"))
	}
	if len(req.GetSpiffeId()) > maxRecordedLen {
		return nil, toStatus(invalid("spiffe_id", "spiffe_id is longer than %d bytes", maxRecordedLen))
	}
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, toStatus(invalid("spiffe_id", "spiffe_id %q is not a SPIFFE ID", clip(req.GetSpiffeId())))
	}
	out, err := a.decide.Explain(ctx, id, &credbrokerv1.IssueCredentialRequest{
		Profile: req.GetProfile(), Cluster: req.GetCluster(), Ttl: req.GetTtl(), Audience: req.GetAudience(),
	}, a.st)
	return out, toStatus(err)
}
