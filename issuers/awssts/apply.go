package awssts

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"

	"github.com/credbroker/credbroker/internal/backoff"
)

// DefaultRevocationPolicyName is the role inline policy a
// RevocationApplier keeps: one per role, merged from every revocation in
// effect that covers the role's sessions.
const DefaultRevocationPolicyName = "credbroker-revocations"

// Defaults of a RevocationApplier.
const (
	// DefaultApplyDebounce is how long a role's worker waits after a
	// change before writing, so that a burst of revocations (a cluster
	// deletion script, say) becomes one PutRolePolicy.
	DefaultApplyDebounce = time.Second
	// DefaultApplyTimeout bounds one IAM call, the SDK's retries included.
	DefaultApplyTimeout = 20 * time.Second
)

// DefaultApplyBackoff is the wait between failed attempts to bring a
// role's policy up to date: from 1s doubling to 5 minutes, jittered.
var DefaultApplyBackoff = backoff.Policy{Min: time.Second, Max: 5 * time.Minute}

// ApplierConfig configures a RevocationApplier.
type ApplierConfig struct {
	// Region is the region whose partition's IAM endpoint is used.
	Region string
	// Endpoint overrides the IAM endpoint (VPC endpoints, tests).
	Endpoint string
	// Roles are the ARNs of the roles to keep a policy on, each with the
	// most characters its document may take (0: MaxRolePolicyChars).
	Roles map[string]int
	// PolicyName is the inline policy's name; default
	// DefaultRevocationPolicyName.
	PolicyName string
	// Debounce, Timeout and Backoff: see the defaults.
	Debounce time.Duration
	Timeout  time.Duration
	Backoff  backoff.Policy
	// Clock stamps the status; nil means time.Now.
	Clock func() time.Time
	// Report is told the outcome of every attempt, those that found the
	// policy up to date included (Action ApplyUnchanged, no Err). It runs
	// on the role's worker: keep it quick.
	Report func(ApplyReport)

	// CredentialsProvider replaces the SDK's default chain (tests); the
	// broker signs its IAM calls with the same credentials as its
	// AssumeRole calls.
	CredentialsProvider aws.CredentialsProvider
	// HTTPClient replaces the SDK's HTTP client (tests).
	HTTPClient aws.HTTPClient
}

// Apply actions.
const (
	ApplyPut       = "put"       // PutRolePolicy wrote the document
	ApplyDelete    = "delete"    // DeleteRolePolicy removed it: nothing left to deny
	ApplyUnchanged = "unchanged" // the role already had it
)

// ApplyReport is the outcome of one attempt to bring a role's policy up to
// date.
type ApplyReport struct {
	RoleARN, PolicyName string
	// Action is ApplyPut, ApplyDelete or ApplyUnchanged (with Err: what was
	// attempted).
	Action string
	// Entries and Chars describe the document (wanted, if Err is set).
	Entries, Chars int
	// Omitted are the revocations (Deny.Ref) left out for size: NOT
	// enforced at AWS.
	Omitted []string
	// Err is the failure, if any; Code its IAM error code (safe to show).
	Err  error
	Code string
	// Failures counts consecutive failures, this one included.
	Failures int
}

// RoleStatus is how a role's policy stands.
type RoleStatus struct {
	PolicyName string
	// InSync reports whether the last attempt found or left the role with
	// the document wanted now.
	InSync bool
	// Entries, Omitted and Chars describe the document last applied.
	Entries, Omitted, Chars int
	// AppliedAt is when the policy was last written or found up to date.
	AppliedAt time.Time
	// Error is the last failure's IAM error code, empty after a success.
	Error string
}

// RevocationApplier keeps, on each configured role, one inline policy
// holding the deny document of the revocations that cover the role's
// sessions (see CompileDenyPolicy), with iam:PutRolePolicy, and deletes it
// (iam:DeleteRolePolicy) once nothing is left to deny.
//
// Each role has one worker, so at most one IAM call per role is in flight.
// Set records what is wanted and wakes the worker, which waits Debounce
// (coalescing bursts), compiles the latest wanted entries, and writes only
// when the document differs from what the role holds (read with
// GetRolePolicy at first and on Verify, remembered in between): applying
// the same revocations again costs no IAM call. A failure is retried after a jittered, doubling
// backoff, with whatever is wanted by then. A revocation never waits for
// any of this: it is in force at the broker before Set is called.
type RevocationApplier struct {
	client *iam.Client
	cfg    ApplierConfig
	roles  map[string]*roleApplier
}

type roleApplier struct {
	arn, name string
	maxChars  int
	wake      chan struct{}

	mu      sync.Mutex
	want    []Deny
	wantSet bool
	status  RoleStatus
	// applied is the document the role holds, when known.
	applied      string
	appliedKnown bool
}

// NewRevocationApplier checks cfg and builds the IAM client; Run starts
// the workers.
func NewRevocationApplier(ctx context.Context, cfg ApplierConfig) (*RevocationApplier, error) {
	if cfg.Region == "" {
		return nil, errors.New("awssts: revocation applier: no region")
	}
	if cfg.Endpoint != "" {
		if u, err := url.Parse(cfg.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("awssts: IAM endpoint %q must be an absolute http(s) URL", cfg.Endpoint)
		}
	}
	if cfg.PolicyName == "" {
		cfg.PolicyName = DefaultRevocationPolicyName
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultApplyDebounce
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultApplyTimeout
	}
	if cfg.Backoff.Min == 0 {
		cfg.Backoff = DefaultApplyBackoff
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Report == nil {
		cfg.Report = func(ApplyReport) {}
	}
	a := &RevocationApplier{cfg: cfg, roles: map[string]*roleApplier{}}
	for arn, maxChars := range cfg.Roles {
		name, err := RoleName(arn)
		if err != nil {
			return nil, err
		}
		if maxChars <= 0 || maxChars > MaxRolePolicyChars {
			maxChars = MaxRolePolicyChars
		}
		a.roles[arn] = &roleApplier{arn: arn, name: name, maxChars: maxChars, wake: make(chan struct{}, 1),
			status: RoleStatus{PolicyName: cfg.PolicyName}}
	}
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(cfg.Region),
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxBackoff = maxBackoff })
		}),
	}
	if cfg.CredentialsProvider != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(cfg.CredentialsProvider))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awssts: loading AWS configuration for IAM: %w", err)
	}
	if cfg.HTTPClient != nil {
		awsCfg.HTTPClient = cfg.HTTPClient
	}
	a.client = iam.NewFromConfig(awsCfg, func(o *iam.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return a, nil
}

// RoleName returns the IAM role name of a role ARN: the last segment of
// its path (arn:aws:iam::123456789012:role/path/to/NAME is NAME), which is
// what the IAM role policy calls take.
func RoleName(arn string) (string, error) {
	_, rest, ok := strings.Cut(arn, ":role/")
	if !ok || !strings.HasPrefix(arn, "arn:") {
		return "", fmt.Errorf("awssts: %q is not an IAM role ARN", arn)
	}
	name := rest[strings.LastIndexByte(rest, '/')+1:]
	if name == "" || len(name) > 64 {
		return "", fmt.Errorf("awssts: role ARN %q has no role name of 1–64 characters", arn)
	}
	return name, nil
}

// Set records the entries wanted on role now and wakes its worker. A role
// that is not configured is ignored.
func (a *RevocationApplier) Set(roleARN string, denies []Deny) { a.set(roleARN, denies, false) }

// Verify is Set, and has the worker read the role's policy again before
// comparing (one GetRolePolicy), so that a policy changed or deleted by
// someone else is put back. Housekeeping calls it.
func (a *RevocationApplier) Verify(roleARN string, denies []Deny) { a.set(roleARN, denies, true) }

func (a *RevocationApplier) set(roleARN string, denies []Deny, reread bool) {
	r, ok := a.roles[roleARN]
	if !ok {
		return
	}
	r.mu.Lock()
	r.want, r.wantSet = append([]Deny(nil), denies...), true
	if reread {
		r.appliedKnown = false
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default: // already woken; it will read the latest want
	}
}

// Status returns how role's policy stands.
func (a *RevocationApplier) Status(roleARN string) RoleStatus {
	r, ok := a.roles[roleARN]
	if !ok {
		return RoleStatus{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Run keeps every role's policy up to date until ctx ends.
func (a *RevocationApplier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	arns := make([]string, 0, len(a.roles))
	for arn := range a.roles {
		arns = append(arns, arn)
	}
	sort.Strings(arns)
	for _, arn := range arns {
		wg.Add(1)
		go func(r *roleApplier) {
			defer wg.Done()
			a.work(ctx, r)
		}(a.roles[arn])
	}
	wg.Wait()
}

// work is one role's worker: at most one IAM call in flight for it.
func (a *RevocationApplier) work(ctx context.Context, r *roleApplier) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		if !sleep(ctx, a.cfg.Debounce) {
			return
		}
		for failures := 0; ; {
			// Changes during the debounce or a retry are in the latest want.
			select {
			case <-r.wake:
			default:
			}
			if err := a.reconcile(ctx, r, failures+1); err == nil {
				break
			}
			failures++
			if !sleep(ctx, a.cfg.Backoff.Delay(failures)) {
				return
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// reconcile brings r's policy to the latest want once.
func (a *RevocationApplier) reconcile(ctx context.Context, r *roleApplier, attempt int) error {
	r.mu.Lock()
	want, wantSet := r.want, r.wantSet
	applied, known := r.applied, r.appliedKnown
	r.mu.Unlock()
	if !wantSet {
		return nil
	}
	p, err := CompileDenyPolicy(want, r.maxChars)
	report := ApplyReport{RoleARN: r.arn, PolicyName: a.cfg.PolicyName, Entries: len(p.Included), Chars: p.Chars, Failures: attempt}
	for _, d := range p.Omitted {
		report.Omitted = append(report.Omitted, d.Ref)
	}
	if err != nil {
		// Only entries that fail Deny.Check get here, and callers filter
		// them; keep what the role holds rather than guess.
		report.Err, report.Code, report.Action = err, "Compile", ApplyPut
		a.finish(r, report, applied, known)
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	if !known {
		if applied, err = a.get(callCtx, r); err != nil {
			report.Err, report.Code, report.Action = err, errorCode(err), ApplyUnchanged
			a.finish(r, report, "", false)
			return err
		}
	}
	switch {
	case p.Document == applied:
		report.Action = ApplyUnchanged
	case p.Document == "":
		report.Action = ApplyDelete
		_, err = a.client.DeleteRolePolicy(callCtx, &iam.DeleteRolePolicyInput{RoleName: aws.String(r.name), PolicyName: aws.String(a.cfg.PolicyName)})
		if isNoSuchEntity(err) {
			err = nil // already gone
		}
	default:
		report.Action = ApplyPut
		_, err = a.client.PutRolePolicy(callCtx, &iam.PutRolePolicyInput{RoleName: aws.String(r.name), PolicyName: aws.String(a.cfg.PolicyName),
			PolicyDocument: aws.String(p.Document)})
	}
	if err != nil {
		// What the role holds is unknown after a failed write (it may
		// have landed): read it again next time.
		report.Err, report.Code = err, errorCode(err)
		a.finish(r, report, "", false)
		return err
	}
	a.finish(r, report, p.Document, true)
	return nil
}

// finish records an attempt's outcome and reports it.
func (a *RevocationApplier) finish(r *roleApplier, rep ApplyReport, applied string, known bool) {
	now := a.cfg.Clock()
	r.mu.Lock()
	r.applied, r.appliedKnown = applied, known
	if rep.Err != nil {
		r.status.InSync, r.status.Error = false, rep.Code
	} else {
		r.status = RoleStatus{PolicyName: rep.PolicyName, InSync: true, Entries: rep.Entries, Omitted: len(rep.Omitted), Chars: rep.Chars, AppliedAt: now}
	}
	r.mu.Unlock()
	a.cfg.Report(rep)
}

// get reads the document the role holds ("" when it has none).
func (a *RevocationApplier) get(ctx context.Context, r *roleApplier) (string, error) {
	out, err := a.client.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String(r.name), PolicyName: aws.String(a.cfg.PolicyName)})
	if isNoSuchEntity(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	doc := aws.ToString(out.PolicyDocument)
	// IAM returns the document URL-encoded (RFC 3986).
	if dec, err := url.PathUnescape(doc); err == nil {
		doc = dec
	}
	return doc, nil
}

func isNoSuchEntity(err error) bool {
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "NoSuchEntity"
}

// errorCode is an IAM failure as it may be shown: its error code, never
// IAM's text.
func errorCode(err error) string {
	var api smithy.APIError
	switch {
	case errors.As(err, &api):
		return api.ErrorCode()
	case errors.Is(err, context.DeadlineExceeded):
		return "Timeout"
	case errors.Is(err, context.Canceled):
		return "Canceled"
	}
	return "Unreachable"
}
