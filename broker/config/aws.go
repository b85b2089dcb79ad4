package config

import (
	"fmt"
	"net/url"
	"regexp"

	"github.com/credbroker/credbroker/issuers/awssts"
)

// roleARNRE accepts IAM role ARNs in any partition (aws, aws-cn,
// aws-us-gov, ...) and STS-compatible services that use their own (MinIO:
// arn:minio:iam:REGION::role/ID).
var roleARNRE = regexp.MustCompile(`^arn:[a-z][a-z0-9-]*:iam:[a-z0-9-]*:[0-9]*:role/[\w+=,.@/-]{1,512}$`)

// minRevocationChars is the smallest revocation policy budget accepted: room
// for one statement of a few entries.
const minRevocationChars = 512

// validateAWSSTS checks an aws_sts issuer block and fills in its defaults.
func (c *Config) validateAWSSTS(name string, a *AWSSTSIssuer) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: issuers.%s.aws_sts."+format, append([]any{name}, args...)...))
	}
	if a == nil {
		return []error{fmt.Errorf("config: issuers.%s.aws_sts is required for type %q (region at least)", name, IssuerAWSSTS)}
	}
	if a.Region == "" {
		bad("region is required")
	}
	if a.Endpoint != "" {
		if u, err := url.Parse(a.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("endpoint %q must be an absolute http(s) URL", a.Endpoint)
		}
	}
	switch a.Credentials {
	case awssts.CredentialsDefault:
		if a.WebIdentity != nil {
			bad("web_identity is only for credentials: %s", awssts.CredentialsWebIdentity)
		}
	case awssts.CredentialsWebIdentity:
		switch {
		case a.WebIdentity == nil || a.WebIdentity.Issuer == "":
			bad("web_identity.issuer must name the jwt issuer whose tokens STS trusts")
		case c.Issuers[a.WebIdentity.Issuer].Type != IssuerJWT:
			bad("web_identity.issuer %q is not an issuer of type %q", a.WebIdentity.Issuer, IssuerJWT)
		}
		if a.WebIdentity != nil && a.WebIdentity.TokenTTL < 0 {
			bad("web_identity.token_ttl must not be negative")
		}
	default:
		bad("credentials %q: want %q or %q", a.Credentials, awssts.CredentialsDefault, awssts.CredentialsWebIdentity)
	}
	if a.IAMEndpoint != "" {
		if u, err := url.Parse(a.IAMEndpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("iam_endpoint %q must be an absolute http(s) URL", a.IAMEndpoint)
		}
	}
	if a.Timeout < 0 || a.MaxAttempts < 0 {
		bad("timeout and max_attempts must not be negative")
	}
	return errs
}

// validateAWSProfile checks the AWS part of profile name: the role, STS's
// lifetime limits, and that a cluster-scoped profile carries a session policy
// that scopes it to the cluster.
func validateAWSProfile(name string, p Profile) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: profiles.%s."+format, append([]any{name}, args...)...))
	}
	if p.AWS == nil {
		return []error{fmt.Errorf("config: profiles.%s.aws is required for an %q issuer (role_arn at least)", name, IssuerAWSSTS)}
	}
	if !roleARNRE.MatchString(p.AWS.RoleARN) {
		bad("aws.role_arn %q is not an IAM role ARN (arn:PARTITION:iam::ACCOUNT:role/NAME)", p.AWS.RoleARN)
	}
	if p.MaxTTL > awssts.MaxDuration || p.DefaultTTL < awssts.MinDuration {
		bad("default_ttl %s and max_ttl %s must lie within STS's [%s, %s]", p.DefaultTTL, p.MaxTTL, awssts.MinDuration, awssts.MaxDuration)
	}
	if r := p.AWS.Revocation; r != nil {
		switch {
		case r.MaxChars == 0 && r.Apply:
			r.MaxChars = awssts.MaxRolePolicyChars
		case r.MaxChars != 0 && (r.MaxChars < minRevocationChars || r.MaxChars > awssts.MaxRolePolicyChars):
			bad("aws.revocation.max_chars %d must lie within [%d, %d] (IAM's limit for a role's inline policies together)", r.MaxChars, minRevocationChars, awssts.MaxRolePolicyChars)
		}
	}
	switch {
	case p.AWS.SessionPolicy != nil:
		tmpl, err := awssts.CompilePolicy(p.AWS.SessionPolicy)
		if err != nil {
			bad("aws.session_policy: %v", err)
			break
		}
		if tmpl.UsesCluster() && p.Cluster != ClusterRequired {
			bad("cluster must be %q: its session policy is scoped by cluster", ClusterRequired)
		}
	case p.Cluster != ClusterNone:
		bad("aws.session_policy is required for a cluster-scoped profile (or set cluster: %s to hand out the role's full permissions)", ClusterNone)
	}
	return errs
}

// validateAWSRevocationIssuer checks that a profile whose revocations the
// broker applies at AWS is on an issuer with AWS credentials of the
// broker's own: IAM calls are signed with them (web identity mode has none).
func validateAWSRevocationIssuer(name string, p Profile, a *AWSSTSIssuer) []error {
	if p.AWS == nil || p.AWS.Revocation == nil || !p.AWS.Revocation.Apply || a == nil || a.Credentials == awssts.CredentialsDefault {
		return nil
	}
	return []error{fmt.Errorf("config: profiles.%s.aws.revocation.apply needs AWS credentials of the broker's own for IAM: issuer %s must use credentials: %s",
		name, p.Issuer, awssts.CredentialsDefault)}
}
