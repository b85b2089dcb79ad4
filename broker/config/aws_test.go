package config

import (
	"strings"
	"testing"
)

// awsBase is a valid configuration with one cluster-scoped STS profile; the
// tests below change one thing each.
const awsBase = `
trust_domain: example.org
issuers:
  oidc: {type: jwt}
  aws:
    type: aws_sts
    aws_sts:
      region: us-east-1
      endpoint: https://sts.us-east-1.amazonaws.com
      credentials: default
profiles:
  capa:
    issuer: aws
    max_ttl: 1h
    cluster: required
    aws:
      role_arn: arn:aws:iam::123456789012:role/capa-controller
      session_policy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: ["s3:PutObject"]
            Resource: ["arn:aws:s3:::capi-${cluster.namespace}-${cluster.name}/*"]
`

func TestAWSProfileIsValid(t *testing.T) {
	c, err := Parse(strings.NewReader(awsBase))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Profiles["capa"]; p.DefaultTTL.Minutes() != 15 || p.AWS.RoleARN == "" {
		t.Errorf("profile = %+v", p)
	}
}

func TestAWSConfigMistakesAreRejectedAtLoad(t *testing.T) {
	for name, tc := range map[string]struct{ old, new, want string }{
		"unknown key in aws block":    {"region: us-east-1", "region: us-east-1\n      regoin: x", "field regoin not found"},
		"no region":                   {"region: us-east-1", "region: \"\"", "aws_sts.region is required"},
		"bad endpoint":                {"https://sts.us-east-1.amazonaws.com", "sts.amazonaws.com", "absolute http(s) URL"},
		"bad credentials":             {"credentials: default", "credentials: keys", `credentials "keys"`},
		"web identity without issuer": {"credentials: default", "credentials: web_identity", "web_identity.issuer must name"},
		"web identity names a non-jwt issuer": {"credentials: default",
			"credentials: web_identity\n      web_identity: {issuer: aws}", `web_identity.issuer "aws" is not an issuer of type "jwt"`},
		"missing aws block":                            {"    aws:\n      role_arn", "    awz:\n      role_arn", "field awz not found"},
		"bad role arn":                                 {"arn:aws:iam::123456789012:role/capa-controller", "capa-controller", "not an IAM role ARN"},
		"ttl below STS minimum":                        {"max_ttl: 1h", "max_ttl: 1h\n    default_ttl: 5m", "must lie within STS's [15m0s, 12h0m0s]"},
		"ttl above STS maximum":                        {"max_ttl: 1h", "max_ttl: 13h", "must lie within STS's"},
		"scoped policy on an optional-cluster profile": {"cluster: required", "cluster: optional", `cluster must be "required"`},
		"cluster profile without a policy":             {"      session_policy:", "      session_poli:", "field session_poli not found"},
		"unscoped policy":                              {`Resource: ["arn:aws:s3:::capi-${cluster.namespace}-${cluster.name}/*"]`, `Resource: "*"`, "session_policy"},
		"aws block on a jwt profile":                   {"profiles:\n", "profiles:\n  tok: {issuer: oidc, max_ttl: 1h, aws: {role_arn: x}}\n", "profiles.tok.aws is only for"},
		"unknown key in revocation": {"role_arn: arn:aws:iam::123456789012:role/capa-controller",
			"role_arn: arn:aws:iam::123456789012:role/capa-controller\n      revocation: {apply: true, aply: true}", "field aply not found"},
		"revocation budget over IAM's limit": {"role_arn: arn:aws:iam::123456789012:role/capa-controller",
			"role_arn: arn:aws:iam::123456789012:role/capa-controller\n      revocation: {apply: true, max_chars: 20000}", "max_chars 20000 must lie within [512, 10240]"},
		"bad iam endpoint": {"credentials: default", "credentials: default\n      iam_endpoint: iam.amazonaws.com", "iam_endpoint \"iam.amazonaws.com\" must be an absolute"},
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(awsBase, tc.old) {
				t.Fatalf("test bug: %q not in the base config", tc.old)
			}
			_, err := Parse(strings.NewReader(strings.Replace(awsBase, tc.old, tc.new, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestAWSRevocationApplyDefaultsToIAMsLimit(t *testing.T) {
	c, err := Parse(strings.NewReader(strings.Replace(awsBase, "role_arn: arn:aws:iam::123456789012:role/capa-controller",
		"role_arn: arn:aws:iam::123456789012:role/capa-controller\n      revocation: {apply: true}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Profiles["capa"].AWS.Revocation; !r.Apply || r.MaxChars != 10240 {
		t.Errorf("revocation = %+v, want apply with max_chars 10240", r)
	}
}

func TestAWSRevocationApplyNeedsTheBrokersOwnCredentials(t *testing.T) {
	cfg := strings.Replace(awsBase, "role_arn: arn:aws:iam::123456789012:role/capa-controller",
		"role_arn: arn:aws:iam::123456789012:role/capa-controller\n      revocation: {apply: true}", 1)
	cfg = strings.Replace(cfg, "credentials: default", "credentials: web_identity\n      web_identity: {issuer: oidc}", 1)
	_, err := Parse(strings.NewReader(cfg))
	if err == nil || !strings.Contains(err.Error(), "revocation.apply needs AWS credentials of the broker's own") {
		t.Fatalf("err = %v", err)
	}
}

func TestAWSProfileWithoutPolicyMustNotBeClusterScoped(t *testing.T) {
	noPolicy := awsBase[:strings.Index(awsBase, "      session_policy:")]
	_, err := Parse(strings.NewReader(noPolicy))
	if err == nil || !strings.Contains(err.Error(), "session_policy is required for a cluster-scoped profile") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Parse(strings.NewReader(strings.Replace(noPolicy, "cluster: required", "cluster: none", 1))); err != nil {
		t.Fatalf("a cluster: none profile may use the role's own policy: %v", err)
	}
}

func TestAWSSessionPolicyOverThePackedLimitIsRejectedAtLoad(t *testing.T) {
	long := strings.Repeat("s3:GetObject\", \"", 150)
	cfg := strings.Replace(awsBase, `Action: ["s3:PutObject"]`, `Action: ["`+long+`s3:PutObject"]`, 1)
	_, err := Parse(strings.NewReader(cfg))
	if err == nil || !strings.Contains(err.Error(), "2048") {
		t.Fatalf("err = %v, want the packed limit named", err)
	}
}
