package config

import (
	"fmt"
	"path"
	"regexp"
	"time"

	"github.com/credbroker/credbroker/attest"
)

// NodeAttestation configures how nodes of workload clusters prove themselves
// and the node SVIDs they get. Join tokens (credbrokerctl join-token create)
// are always accepted once this section is present.
type NodeAttestation struct {
	// SVIDTTL is the lifetime of node SVIDs; default 1h. Nodes renew at about
	// half of it.
	SVIDTTL time.Duration `yaml:"svid_ttl"`
	// CADir holds the node CA (ca.pem, ca_key.pem; key 0600), created on first
	// start; default DATA_DIR/node-ca. With --dev the dev CA signs node SVIDs.
	// Outside --dev, add the node CA's certificate to the bundle that callers
	// and the broker use for the broker's trust domain.
	CADir string `yaml:"ca_dir"`
	// K8sPSAT accepts projected service account tokens of workload clusters.
	K8sPSAT *K8sPSAT `yaml:"k8s_psat"`
	// AWSIID accepts EC2 instance identity documents.
	AWSIID *AWSIID `yaml:"aws_iid"`
}

// K8sPSAT lists the workload clusters whose service account tokens are
// accepted.
type K8sPSAT struct {
	// Clusters by "namespace/name".
	Clusters map[string]PSATCluster `yaml:"clusters"`
}

// PSATCluster is one workload cluster's service-account issuer.
type PSATCluster struct {
	// Issuer is the cluster's service-account issuer (the tokens' iss).
	Issuer string `yaml:"issuer"`
	// Audience the tokens must carry; default "credbroker".
	Audience string `yaml:"audience"`
	// JWKSFile holds the cluster's service-account signing keys; without it
	// they are fetched through the issuer's discovery document.
	JWKSFile string `yaml:"jwks_file"`
	// ServiceAccounts ("namespace:name") whose tokens may attest a node.
	ServiceAccounts []string `yaml:"service_accounts"`
}

// AWSIID accepts EC2 instances of listed accounts.
type AWSIID struct {
	// Certificates are PEM files of AWS's instance identity certificates
	// (per region); the only trust anchors.
	Certificates []string `yaml:"certificates"`
	// Accounts by AWS account id.
	Accounts map[string]AWSIIDAccount `yaml:"accounts"`
	// MaxAge rejects documents of instances launched longer ago (replay
	// bound); 0 disables the check.
	MaxAge time.Duration `yaml:"max_age"`
}

// AWSIIDAccount says where an account's instances may join.
type AWSIIDAccount struct {
	Regions []string `yaml:"regions"`
	// Clusters are "namespace/name" patterns (path.Match) the instances may join.
	Clusters []string `yaml:"clusters"`
}

var (
	accountRE = regexp.MustCompile(`^[0-9]{12}$`)
	saRE      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?:[a-z0-9]([-.a-z0-9]*[a-z0-9])?$`)
)

func (na *NodeAttestation) validate() []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("config: node_attestation."+format, a...))
	}
	if na.SVIDTTL < time.Minute || na.SVIDTTL > 24*time.Hour {
		bad("svid_ttl %s must be between 1m and 24h", na.SVIDTTL)
	}
	if p := na.K8sPSAT; p != nil {
		if len(p.Clusters) == 0 {
			bad("k8s_psat.clusters is empty")
		}
		for _, name := range sortedKeys(p.Clusters) {
			c := p.Clusters[name]
			if !attest.ValidCluster(name) {
				bad("k8s_psat.clusters %q: want \"namespace/name\"", name)
			}
			if c.Issuer == "" {
				bad("k8s_psat.clusters[%s].issuer is required", name)
			}
			if len(c.ServiceAccounts) == 0 {
				bad("k8s_psat.clusters[%s].service_accounts is required (the node agent's \"namespace:name\")", name)
			}
			for _, sa := range c.ServiceAccounts {
				if !saRE.MatchString(sa) {
					bad("k8s_psat.clusters[%s].service_accounts %q: want \"namespace:name\"", name, sa)
				}
			}
		}
	}
	if a := na.AWSIID; a != nil {
		if len(a.Certificates) == 0 {
			bad("aws_iid.certificates is required (AWS's instance identity certificates, PEM)")
		}
		if len(a.Accounts) == 0 {
			bad("aws_iid.accounts is empty")
		}
		for _, id := range sortedKeys(a.Accounts) {
			acct := a.Accounts[id]
			if !accountRE.MatchString(id) {
				bad("aws_iid.accounts %q: want a 12-digit account id", id)
			}
			if len(acct.Regions) == 0 || len(acct.Clusters) == 0 {
				bad("aws_iid.accounts[%s]: regions and clusters are required", id)
			}
			for _, pat := range acct.Clusters {
				if _, err := path.Match(pat, "x/y"); err != nil {
					bad("aws_iid.accounts[%s].clusters %q: %v", id, pat, err)
				}
			}
		}
		if a.MaxAge < 0 {
			bad("aws_iid.max_age must not be negative")
		}
	}
	return errs
}
