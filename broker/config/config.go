// Package config is the broker's configuration file: its schema, strict
// loading (an unknown key is an error naming the key and line), defaults and
// validation. The embedded dev configuration is what `credbroker serve --dev`
// runs on.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/policy"
)

// Issuer types.
const (
	IssuerJWT    = "jwt"
	IssuerAWSSTS = "aws_sts"
	IssuerVault  = "vault"
)

var issuerTypes = []string{IssuerJWT, IssuerAWSSTS, IssuerVault}

// Cluster modes of a profile.
const (
	// ClusterOptional lets a request name a cluster or not.
	ClusterOptional = "optional"
	// ClusterRequired makes every request name a cluster.
	ClusterRequired = "required"
	// ClusterNone refuses requests that name a cluster.
	ClusterNone = "none"
)

// Config is the whole configuration file.
type Config struct {
	// TrustDomain is the broker's own SPIFFE trust domain.
	TrustDomain string `yaml:"trust_domain"`
	// Listen is the gRPC listener (mTLS) address.
	Listen string `yaml:"listen"`
	// HTTPListen serves /healthz, /metrics and the OIDC discovery documents.
	HTTPListen string `yaml:"http_listen"`
	// HealthListen, when set, serves the gRPC health service
	// (grpc.health.v1) and nothing else in plain text, for Kubernetes gRPC
	// probes and load balancers, which present no client certificate and
	// speak no TLS. Off by default; the health service is also served on
	// Listen.
	HealthListen string `yaml:"health_listen"`
	// GRPCReflection registers gRPC server reflection on Listen, so that
	// grpcurl works without the .proto files. It discloses the API's schema
	// (nothing else) to authenticated callers. Off by default.
	GRPCReflection bool `yaml:"grpc_reflection"`
	// DataDir holds the bbolt database, signing keys and the admin socket.
	DataDir string `yaml:"data_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// TLS is the broker's own SVID and the trust bundles it accepts callers from.
	TLS TLS `yaml:"tls"`
	// JWTSVIDAudiences are the audiences a caller's JWT-SVID must carry.
	JWTSVIDAudiences []string `yaml:"jwt_svid_audiences"`
	// JWTSVIDMaxLifetime is the longest lifetime (from iat or nbf, and from
	// now, to exp) of a JWT-SVID the broker accepts; default 1h.
	JWTSVIDMaxLifetime time.Duration `yaml:"jwt_svid_max_lifetime"`
	// Admin controls the admin API.
	Admin Admin `yaml:"admin"`
	// Issuers by name.
	Issuers map[string]Issuer `yaml:"issuers"`
	// Profiles by name.
	Profiles map[string]Profile `yaml:"profiles"`
	// Policy rules; they only grant.
	Policy []PolicyRule `yaml:"policy"`
	// Limits on issuance.
	Limits Limits `yaml:"limits"`
	// ShutdownGrace is how long in-flight RPCs may finish after SIGTERM.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// HousekeepingInterval is how often state that has ended (quota
	// windows, join tokens, nodes, revocations) is purged.
	HousekeepingInterval time.Duration `yaml:"housekeeping_interval"`
	// Audit configures the audit log's retention and external anchor.
	Audit Audit `yaml:"audit"`
	// NodeAttestation, when present, lets nodes of workload clusters attest
	// and receive node SVIDs.
	NodeAttestation *NodeAttestation `yaml:"node_attestation"`
	// Alerts configures alert rules and the webhooks that receive them.
	Alerts Alerts `yaml:"alerts"`
	// State selects where the shared state is kept: the local bbolt file
	// (default) or etcd.
	State State `yaml:"state"`
	// ReplicaID names this broker among replicas: every audit record
	// carries it, and anchors name it as their host. Empty: the host name,
	// for a database that has no id yet (a database keeps the id it was
	// first opened with; one set here must match it).
	ReplicaID string `yaml:"replica_id"`
}

// ReplicaIDPattern is what a replica id may look like: a host name (or a
// StatefulSet pod name), 1 to 253 characters.
var ReplicaIDPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)

// TLS names the broker's SVID files and the trust bundles of its callers.
type TLS struct {
	// SVIDFile is the broker's X.509-SVID chain (PEM), served on Listen.
	SVIDFile string `yaml:"svid_file"`
	// SVIDKeyFile is its private key (PEM, PKCS#8).
	SVIDKeyFile string `yaml:"svid_key_file"`
	// Bundles maps trust domain to a PEM file of its X.509 authorities.
	Bundles map[string]string `yaml:"bundles"`
	// JWTBundles maps trust domain to a JWKS file of its JWT authorities.
	JWTBundles map[string]string `yaml:"jwt_bundles"`
	// ReloadInterval is how often the files above are re-read, so that
	// rotations take effect without a restart (SIGHUP reloads at once).
	ReloadInterval time.Duration `yaml:"reload_interval"`
	// WorkloadAPISocket, e.g. "unix:///run/spire/agent.sock", takes the
	// broker's SVID and all bundles from the SPIFFE Workload API instead of
	// files (exclusive with the file keys).
	WorkloadAPISocket string `yaml:"workload_api_socket"`
	// SPIFFEID is the identity the broker serves as. With the Workload API
	// it chooses the broker's SVID among those the agent gives it (default:
	// the agent's first); with files, the SVID file must hold it.
	SPIFFEID string `yaml:"spiffe_id"`
	// WorkloadAPITimeout bounds the wait for the broker's first SVID from
	// the Workload API at start (the agent may start after the broker).
	WorkloadAPITimeout time.Duration `yaml:"workload_api_timeout"`
}

// Admin controls who may use the admin API.
type Admin struct {
	// Socket is the admin unix socket path; default DATA_DIR/admin.sock.
	Socket string `yaml:"socket"`
	// UnixUIDs may use the admin socket; default: the broker's own uid and root.
	UnixUIDs []int `yaml:"unix_uids"`
	// SPIFFEIDs may use the admin API over mTLS on Listen.
	SPIFFEIDs []string `yaml:"spiffe_ids"`
	// AllowJWTSVID lets SPIFFEIDs use the admin API with a JWT-SVID. Off by
	// default: a bearer token can be replayed by whoever obtains a copy, an
	// X.509-SVID cannot.
	AllowJWTSVID bool `yaml:"allow_jwt_svid"`
}

// Issuer configures one credential issuer.
type Issuer struct {
	// Type selects the implementation: "jwt" or "aws_sts".
	Type string `yaml:"type"`
	// JWT configures a local OIDC/JWT issuer (type jwt).
	JWT *JWTIssuer `yaml:"jwt"`
	// AWSSTS configures an AWS STS issuer (type aws_sts).
	AWSSTS *AWSSTSIssuer `yaml:"aws_sts"`
	// Vault configures a HashiCorp Vault issuer (type vault).
	Vault *VaultIssuer `yaml:"vault"`
	// Budget bounds the issuer's upstream calls, fleet-wide (types aws_sts
	// and vault); nil: no budget.
	Budget *IssuerBudget `yaml:"budget"`
}

// AWSSTSIssuer configures minting through AWS STS.
type AWSSTSIssuer struct {
	// Region is the STS region (required).
	Region string `yaml:"region"`
	// Endpoint overrides the STS endpoint (GovCloud, FIPS, VPC endpoints,
	// MinIO); default: the SDK's regional endpoint.
	Endpoint string `yaml:"endpoint"`
	// Credentials is "default" (AssumeRole with the broker's credentials from
	// the SDK's default chain) or "web_identity" (AssumeRoleWithWebIdentity
	// with tokens from the broker's own OIDC issuer; no AWS keys).
	Credentials string `yaml:"credentials"`
	// WebIdentity configures credentials: web_identity.
	WebIdentity *AWSWebIdentity `yaml:"web_identity"`
	// Timeout bounds one STS call including retries; default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxAttempts bounds the SDK's attempts per STS call; default 3.
	MaxAttempts int `yaml:"max_attempts"`
	// IAMEndpoint overrides the IAM endpoint the broker writes its
	// revocation policies through (profiles with aws.revocation.apply);
	// default: the SDK's endpoint for the region's partition.
	IAMEndpoint string `yaml:"iam_endpoint"`
}

// AWSWebIdentity names the broker's OIDC issuer whose tokens STS trusts.
type AWSWebIdentity struct {
	// Issuer names an issuer of type jwt in this file.
	Issuer string `yaml:"issuer"`
	// Audience is the tokens' aud, the IAM OIDC provider's client id;
	// default sts.amazonaws.com.
	Audience string `yaml:"audience"`
	// TokenTTL is how long a token may be exchanged; default 5m.
	TokenTTL time.Duration `yaml:"token_ttl"`
}

// AWSProfile is what a profile on an aws_sts issuer assumes.
type AWSProfile struct {
	// RoleARN is the IAM role to assume (required).
	RoleARN string `yaml:"role_arn"`
	// ExternalID is sent with AssumeRole when set.
	ExternalID string `yaml:"external_id"`
	// SessionPolicy is the inline session policy template (an IAM policy
	// document in YAML, with ${cluster.namespace}, ${cluster.name} and
	// ${profile}); required for cluster-scoped profiles.
	SessionPolicy any `yaml:"session_policy"`
	// Revocation says whether the broker itself enforces revocations at
	// AWS for this profile's role.
	Revocation *AWSRevocation `yaml:"revocation"`
}

// AWSRevocation configures the deny policy the broker keeps on a role.
type AWSRevocation struct {
	// Apply: the broker keeps the deny document of every revocation in
	// effect that covers sessions of the role as one inline policy of the
	// role (credbroker-revocations), with iam:PutRolePolicy and
	// iam:DeleteRolePolicy. Needs credentials: default on the issuer.
	Apply bool `yaml:"apply"`
	// MaxChars bounds the document, in characters as IAM counts them;
	// default and at most 10240, IAM's limit for all of a role's inline
	// policies together: lower it by what the role's other inline policies
	// take.
	MaxChars int `yaml:"max_chars"`
}

// JWTIssuer configures the broker's own OIDC issuer.
type JWTIssuer struct {
	// IssuerURL is the `iss` claim and where discovery is served; default
	// http://HTTP_LISTEN.
	IssuerURL string `yaml:"issuer_url"`
	// KeyFile is the ES256 signing key; default DATA_DIR/jwt_signing_key.pem,
	// created on first start. Each replica has its own (in its data
	// directory); every replica's public key is published through the
	// state (etcd) and served in every replica's JWKS.
	KeyFile string `yaml:"key_file"`
	// RotationPeriod, when set (at least 1h), replaces the signing key this
	// often without a restart; 0 keeps the key.
	RotationPeriod time.Duration `yaml:"rotation_period"`
	// PublishAhead is how long a new key is in the JWKS before it signs;
	// default 10m, at least 6m (the JWKS is cacheable for 5m), less than
	// half the rotation period.
	PublishAhead time.Duration `yaml:"publish_ahead"`
}

// Profile is one kind of credential callers may ask for.
type Profile struct {
	// Issuer names the issuer that mints it.
	Issuer string `yaml:"issuer"`
	// DefaultTTL is granted when the request names none.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	// MaxTTL is the most a request may ask for.
	MaxTTL time.Duration `yaml:"max_ttl"`
	// Audiences a request may ask for; the first is the default. Default: the
	// profile name.
	Audiences []string `yaml:"audiences"`
	// Cluster is optional, required or none.
	Cluster string `yaml:"cluster"`
	// AWS configures profiles of aws_sts issuers.
	AWS *AWSProfile `yaml:"aws"`
	// Vault configures profiles of vault issuers.
	Vault *VaultProfile `yaml:"vault"`
	// Limits are this profile's own issuance limits over the limits block
	// (a policy rule's own limits win over them).
	Limits *LimitsOverride `yaml:"limits"`
	// Approval, when set, makes every credential of this profile wait for
	// the approval of distinct admins other than the requester.
	Approval *Approval `yaml:"approval"`
}

// Approval is a profile's two-person approval: Approvers distinct admin
// principals (never the requester) must approve the exact request within
// Window of its first refusal; the approval is then good for one
// credential until the window ends.
type Approval struct {
	Approvers int           `yaml:"approvers"`
	Window    time.Duration `yaml:"window"`
}

// Bounds of an approval's window: long enough for admins to answer, short
// enough that a granted approval does not sit waiting for weeks.
const (
	MinApprovalWindow = 5 * time.Second
	MaxApprovalWindow = 7 * 24 * time.Hour
	// MaxApprovers is the most approvers a profile may require.
	MaxApprovers = 16
)

// adminPrincipals is how many admin principals could approve: the admin
// SPIFFE IDs and the admin socket uids (by default the broker's own uid and
// root).
func (a Admin) adminPrincipals() int {
	uids := map[int]bool{}
	for _, u := range a.UnixUIDs {
		uids[u] = true
	}
	if len(a.UnixUIDs) == 0 {
		uids[os.Getuid()], uids[0] = true, true
	}
	ids := map[string]bool{}
	for _, id := range a.SPIFFEIDs {
		ids[id] = true
	}
	return len(uids) + len(ids)
}

func (c *Config) validateApproval(name string, a *Approval) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: profiles.%s.approval: "+format, append([]any{name}, args...)...))
	}
	if a.Approvers < 1 || a.Approvers > MaxApprovers {
		bad("approvers %d: want 1 to %d", a.Approvers, MaxApprovers)
	} else if n := c.Admin.adminPrincipals(); a.Approvers > n {
		bad("approvers %d: only %d admin principals are configured (admin.spiffe_ids and admin.unix_uids), so it could never be approved", a.Approvers, n)
	}
	if a.Window < MinApprovalWindow || a.Window > MaxApprovalWindow {
		bad("window %s: want %s to %s", a.Window, MinApprovalWindow, MaxApprovalWindow)
	}
	return errs
}

// PolicyRule is a policy rule (see policy.Rule) with, optionally, its own
// issuance limits for the requests it grants.
type PolicyRule struct {
	policy.Rule `yaml:",inline"`
	// Limits override the profile's and the limits block's.
	Limits *LimitsOverride `yaml:"limits"`
}

// LimitsOverride is a profile's or a policy rule's own issuance limits; an
// absent key inherits. Precedence: rule over profile over the limits block,
// key by key.
type LimitsOverride struct {
	Rate          *float64 `yaml:"rate"`
	Burst         *int     `yaml:"burst"`
	IdentityQuota *Quota   `yaml:"identity_quota"`
	ClusterQuota  *Quota   `yaml:"cluster_quota"`
}

func (o *LimitsOverride) limits() limits.Override {
	var out limits.Override
	if o == nil {
		return out
	}
	if o.Rate != nil {
		r := rate.Limit(*o.Rate)
		out.Rate = &r
	}
	out.Burst = o.Burst
	if o.IdentityQuota != nil {
		q := limits.Quota(*o.IdentityQuota)
		out.IdentityQuota = &q
	}
	if o.ClusterQuota != nil {
		q := limits.Quota(*o.ClusterQuota)
		out.ClusterQuota = &q
	}
	return out
}

// PolicyRules returns the policy rules without their limits.
func (c *Config) PolicyRules() []policy.Rule {
	out := make([]policy.Rule, len(c.Policy))
	for i, r := range c.Policy {
		out[i] = r.Rule
	}
	return out
}

// LimitTable returns the issuance limits: the limits block as the defaults,
// with the profiles' and the policy rules' own limits over them.
func (c *Config) LimitTable() limits.Table {
	t := limits.Table{
		Default: limits.Config{
			Rate:          rate.Limit(c.Limits.Rate),
			Burst:         c.Limits.Burst,
			IdentityQuota: limits.Quota(c.Limits.IdentityQuota),
			ClusterQuota:  limits.Quota(c.Limits.ClusterQuota),
		},
		Profiles: map[string]limits.Override{},
		Rules:    make([]limits.Override, len(c.Policy)),
	}
	for name, p := range c.Profiles {
		if p.Limits != nil {
			t.Profiles[name] = p.Limits.limits()
		}
	}
	for i, r := range c.Policy {
		t.Rules[i] = r.Limits.limits()
	}
	return t
}

// Limits bounds issuance.
type Limits struct {
	// Rate is requests per second per identity (0: unlimited).
	Rate float64 `yaml:"rate"`
	// Burst is the token bucket size.
	Burst int `yaml:"burst"`
	// IdentityQuota bounds issuances per identity per window.
	IdentityQuota Quota `yaml:"identity_quota"`
	// ClusterQuota bounds issuances per workload cluster per window.
	ClusterQuota Quota `yaml:"cluster_quota"`
	// Requests bound every call per method, before anything is read or
	// written; unlike the issuance limits above they are never unlimited.
	Requests Requests `yaml:"requests"`
	// RefusalRecords bound how many refusals are written to the audit log.
	RefusalRecords RefusalRecords `yaml:"refusal_records"`
	// WatchStreams bound the revocation watches open at once.
	WatchStreams WatchStreams `yaml:"watch_streams"`
	// OpenApprovals bounds the two-person approvals the broker holds over
	// all identities (each identity has at most 8 open on its own).
	OpenApprovals int `yaml:"open_approvals"`
	// Connections bound the connections to the gRPC (mTLS) listener before
	// any request is read.
	Connections Connections `yaml:"connections"`
}

// Connections bound the gRPC listener's connections, per source IP address
// and in all: open at once, and accepted per second (Accept: rate and burst
// per address, total_rate and total_burst in all). Nodes behind one NAT
// address share its per-address bounds. Zero fields take the default.
type Connections struct {
	PerAddress int          `yaml:"per_address"`
	Total      int          `yaml:"total"`
	Accept     SharedBucket `yaml:"accept"`
}

// Default connection bounds; README's configuration reference lists them.
// MaxConnections is the most Total may be.
const (
	DefaultConnectionsPerAddress = 512
	DefaultConnectionsTotal      = 8192
	MaxConnections               = 1 << 20
)

// DefaultConnectionsAccept is limits.connections.accept when not set.
var DefaultConnectionsAccept = SharedBucket{Rate: 20, Burst: 100, TotalRate: 200, TotalBurst: 1000}

// ApplyDefaults fills in the default of every zero field.
func (c *Connections) ApplyDefaults() {
	if c.PerAddress == 0 {
		c.PerAddress = DefaultConnectionsPerAddress
	}
	if c.Total == 0 {
		c.Total = DefaultConnectionsTotal
	}
	c.Accept.applyDefaults(DefaultConnectionsAccept)
}

func (c Connections) validate() error {
	if c.PerAddress < 1 || c.Total < c.PerAddress || c.Total > MaxConnections {
		return fmt.Errorf("config: limits.connections: per_address must be at least 1 and total from per_address to %d (got %d, %d)", MaxConnections, c.PerAddress, c.Total)
	}
	return c.Accept.validate("limits.connections.accept")
}

// DefaultOpenApprovals is limits.open_approvals when it is not set; README's
// configuration reference lists it. MaxOpenApprovals is the most it may be:
// a request that would open an approval reads every approval held.
const (
	DefaultOpenApprovals = 1024
	MaxOpenApprovals     = 65536
)

// Bucket is a token bucket per key: Rate per second, Burst saved up. Zero
// fields take the default.
type Bucket struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

// SharedBucket is a token bucket per key behind one bucket shared by all
// keys (TotalRate, TotalBurst). Zero fields take the default.
type SharedBucket struct {
	Rate       float64 `yaml:"rate"`
	Burst      int     `yaml:"burst"`
	TotalRate  float64 `yaml:"total_rate"`
	TotalBurst int     `yaml:"total_burst"`
}

// Requests are the rate limits of each kind of call.
type Requests struct {
	// Issue bounds IssueCredential per caller identity.
	Issue Bucket `yaml:"issue"`
	// Renew bounds RenewNodeSVID per node.
	Renew Bucket `yaml:"renew"`
	// Admin bounds the admin API per admin principal.
	Admin Bucket `yaml:"admin"`
	// Attest bounds AttestNode per source address and in total.
	Attest SharedBucket `yaml:"attest"`
	// Unauthenticated bounds calls whose identity does not verify, per
	// source address and in total.
	Unauthenticated SharedBucket `yaml:"unauthenticated"`
	// Watch bounds the starts of WatchRevocations streams per caller
	// identity (a sidecar restarts its watch when a credential is renewed).
	Watch Bucket `yaml:"watch"`
	// Health bounds gRPC health checks (and Watch starts) per source
	// address and in total: they need no identity.
	Health SharedBucket `yaml:"health"`
	// Reflection bounds the starts of server reflection streams per caller
	// identity.
	Reflection Bucket `yaml:"reflection"`
}

// WatchStreams bound the WatchRevocations streams open at once: each holds
// a goroutine and a subscription until it ends.
type WatchStreams struct {
	// PerIdentity is the most one caller identity may hold open.
	PerIdentity int `yaml:"per_identity"`
	// Total is the most open over all identities.
	Total int `yaml:"total"`
}

// Default stream caps; README's configuration reference lists them. A
// sidecar holds one watch; the replicas of a controller share one SPIFFE ID
// (its service account), and a rolling update briefly doubles them.
const (
	DefaultWatchStreamsPerIdentity = 8
	DefaultWatchStreamsTotal       = 2000
)

// ApplyDefaults fills in the default of every zero field.
func (w *WatchStreams) ApplyDefaults() {
	if w.PerIdentity == 0 {
		w.PerIdentity = DefaultWatchStreamsPerIdentity
	}
	if w.Total == 0 {
		w.Total = DefaultWatchStreamsTotal
	}
}

func (w WatchStreams) validate() error {
	if w.PerIdentity < 1 || w.Total < w.PerIdentity {
		return fmt.Errorf("config: limits.watch_streams: per_identity must be at least 1 and total at least per_identity (got %d, %d)", w.PerIdentity, w.Total)
	}
	return nil
}

// RefusalRecords bound the audit records of refusals; what is left out is
// counted and summarised in the next record of the same key.
type RefusalRecords struct {
	// Identity: per caller identity and in total over identities.
	Identity SharedBucket `yaml:"identity"`
	// Address: per source address (callers without an identity) and in total.
	Address SharedBucket `yaml:"address"`
}

// Default limits; README's configuration reference lists them.
var (
	DefaultIssueRequests           = Bucket{Rate: 100, Burst: 500}
	DefaultRenewRequests           = Bucket{Rate: 0.1, Burst: 5}
	DefaultAdminRequests           = Bucket{Rate: 20, Burst: 100}
	DefaultWatchRequests           = Bucket{Rate: 1, Burst: 20}
	DefaultHealthRequests          = SharedBucket{Rate: 5, Burst: 20, TotalRate: 200, TotalBurst: 1000}
	DefaultReflectionRequests      = Bucket{Rate: 1, Burst: 20}
	DefaultAttestRequests          = SharedBucket{Rate: 5, Burst: 20, TotalRate: 50, TotalBurst: 200}
	DefaultUnauthenticatedRequests = SharedBucket{Rate: 10, Burst: 100, TotalRate: 100, TotalBurst: 500}
	DefaultIdentityRefusalRecords  = SharedBucket{Rate: 1, Burst: 20, TotalRate: 20, TotalBurst: 100}
	DefaultAddressRefusalRecords   = SharedBucket{Rate: 1, Burst: 20, TotalRate: 10, TotalBurst: 100}
)

func (b *Bucket) applyDefaults(d Bucket) {
	if b.Rate == 0 {
		b.Rate = d.Rate
	}
	if b.Burst == 0 {
		b.Burst = d.Burst
	}
}

func (b *SharedBucket) applyDefaults(d SharedBucket) {
	pk := Bucket{b.Rate, b.Burst}
	pk.applyDefaults(Bucket{d.Rate, d.Burst})
	total := Bucket{b.TotalRate, b.TotalBurst}
	total.applyDefaults(Bucket{d.TotalRate, d.TotalBurst})
	*b = SharedBucket{pk.Rate, pk.Burst, total.Rate, total.Burst}
}

func (b Bucket) validate(key string) error {
	if !(b.Rate > 0) || math.IsInf(b.Rate, 0) || b.Burst < 1 {
		return fmt.Errorf("config: %s: rate must be positive and burst at least 1 (got rate %g, burst %d); these limits cannot be switched off", key, b.Rate, b.Burst)
	}
	return nil
}

func (b SharedBucket) validate(key string) error {
	return errors.Join(Bucket{b.Rate, b.Burst}.validate(key), Bucket{b.TotalRate, b.TotalBurst}.validate(key+" (total_rate, total_burst)"))
}

// PerKey is the per-key bucket.
func (b SharedBucket) PerKey() limits.Spec {
	return limits.Spec{Rate: rate.Limit(b.Rate), Burst: b.Burst}
}

// Total is the bucket shared by all keys.
func (b SharedBucket) Total() limits.Spec {
	return limits.Spec{Rate: rate.Limit(b.TotalRate), Burst: b.TotalBurst}
}

// ApplyDefaults fills in the default of every zero field.
func (r *Requests) ApplyDefaults() {
	r.Issue.applyDefaults(DefaultIssueRequests)
	r.Renew.applyDefaults(DefaultRenewRequests)
	r.Admin.applyDefaults(DefaultAdminRequests)
	r.Attest.applyDefaults(DefaultAttestRequests)
	r.Unauthenticated.applyDefaults(DefaultUnauthenticatedRequests)
	r.Watch.applyDefaults(DefaultWatchRequests)
	r.Health.applyDefaults(DefaultHealthRequests)
	r.Reflection.applyDefaults(DefaultReflectionRequests)
}

// ApplyDefaults fills in the default of every zero field.
func (r *RefusalRecords) ApplyDefaults() {
	r.Identity.applyDefaults(DefaultIdentityRefusalRecords)
	r.Address.applyDefaults(DefaultAddressRefusalRecords)
}

func (l Limits) validateBuckets() []error {
	r, rr := l.Requests, l.RefusalRecords
	return []error{
		r.Issue.validate("limits.requests.issue"),
		r.Renew.validate("limits.requests.renew"),
		r.Admin.validate("limits.requests.admin"),
		r.Attest.validate("limits.requests.attest"),
		r.Unauthenticated.validate("limits.requests.unauthenticated"),
		r.Watch.validate("limits.requests.watch"),
		r.Health.validate("limits.requests.health"),
		r.Reflection.validate("limits.requests.reflection"),
		l.WatchStreams.validate(),
		l.validateOpenApprovals(),
		l.Connections.validate(),
		rr.Identity.validate("limits.refusal_records.identity"),
		rr.Address.validate("limits.refusal_records.address"),
	}
}

func (l Limits) validateOpenApprovals() error {
	if l.OpenApprovals < 1 || l.OpenApprovals > MaxOpenApprovals {
		return fmt.Errorf("config: limits.open_approvals must be 1 to %d (got %d)", MaxOpenApprovals, l.OpenApprovals)
	}
	return nil
}

// Quota is at most Max issuances per Window (Max 0: unlimited).
type Quota struct {
	Max    int           `yaml:"max"`
	Window time.Duration `yaml:"window"`
}

//go:embed dev.yaml
var devYAML []byte

// DevYAML returns the embedded development configuration.
func DevYAML() []byte { return bytes.Clone(devYAML) }

// LoadFile reads, defaults and validates a configuration file.
func LoadFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly: unknown keys are errors.
func Parse(r io.Reader) (*Config, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("config: file is empty")
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: more than one YAML document")
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Listen, "127.0.0.1:8443")
	def(&c.HTTPListen, "127.0.0.1:8444")
	def(&c.DataDir, "./data")
	def(&c.LogLevel, "info")
	if c.HousekeepingInterval == 0 {
		c.HousekeepingInterval = time.Minute
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	c.Audit.applyDefaults()
	c.Limits.Requests.ApplyDefaults()
	c.Limits.RefusalRecords.ApplyDefaults()
	c.Alerts.ApplyDefaults()
	c.Limits.WatchStreams.ApplyDefaults()
	c.Limits.Connections.ApplyDefaults()
	if c.Limits.OpenApprovals == 0 {
		c.Limits.OpenApprovals = DefaultOpenApprovals
	}
	if c.State.Etcd != nil {
		c.State.Etcd.applyDefaults()
	}
	if c.TLS.ReloadInterval == 0 {
		c.TLS.ReloadInterval = 30 * time.Second
	}
	if c.TLS.WorkloadAPITimeout == 0 {
		c.TLS.WorkloadAPITimeout = 30 * time.Second
	}
	if na := c.NodeAttestation; na != nil && na.SVIDTTL == 0 {
		na.SVIDTTL = time.Hour
	}
	if c.JWTSVIDMaxLifetime == 0 {
		c.JWTSVIDMaxLifetime = time.Hour
	}
	if len(c.JWTSVIDAudiences) == 0 {
		c.JWTSVIDAudiences = []string{"credbroker"}
	}
	for name, p := range c.Profiles {
		def(&p.Cluster, ClusterOptional)
		if len(p.Audiences) == 0 {
			p.Audiences = []string{name}
		}
		if p.DefaultTTL == 0 {
			p.DefaultTTL = min(p.MaxTTL, 15*time.Minute)
		}
		c.Profiles[name] = p
	}
}

// ResolvePaths makes the data-dir relative defaults concrete. Call after
// overriding DataDir or HTTPListen (e.g. from flags).
func (c *Config) ResolvePaths() {
	if c.Admin.Socket == "" {
		c.Admin.Socket = filepath.Join(c.DataDir, "admin.sock")
	}
	if na := c.NodeAttestation; na != nil && na.CADir == "" {
		na.CADir = filepath.Join(c.DataDir, "node-ca")
	}
	for name, is := range c.Issuers {
		if is.Type == IssuerJWT {
			j := JWTIssuer{}
			if is.JWT != nil {
				j = *is.JWT
			}
			if j.KeyFile == "" {
				j.KeyFile = filepath.Join(c.DataDir, "jwt_signing_key_"+name+".pem")
			}
			if j.IssuerURL == "" {
				j.IssuerURL = "http://" + c.HTTPListen
			}
			is.JWT = &j
			c.Issuers[name] = is
		}
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// Validate checks the configuration and reports every problem it finds.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("config: "+format, a...)) }

	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		bad("trust_domain %q: %v", c.TrustDomain, err)
	}
	for key, addr := range map[string]string{"listen": c.Listen, "http_listen": c.HTTPListen, "health_listen": c.HealthListen} {
		if addr == "" && key == "health_listen" {
			continue // off
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("%s %q: %v", key, addr, err)
		}
	}
	if c.ReplicaID != "" && !ReplicaIDPattern.MatchString(c.ReplicaID) {
		bad("replica_id %q: use 1 to 253 letters, digits, '.', '_' and '-', starting and ending with a letter or digit", c.ReplicaID)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if (c.TLS.SVIDFile == "") != (c.TLS.SVIDKeyFile == "") {
		bad("tls.svid_file and tls.svid_key_file go together")
	}
	if c.TLS.WorkloadAPISocket != "" {
		if c.TLS.SVIDFile != "" || len(c.TLS.Bundles) > 0 || len(c.TLS.JWTBundles) > 0 {
			bad("tls.workload_api_socket excludes tls.svid_file, tls.bundles and tls.jwt_bundles: the agent provides them")
		}
		if !strings.HasPrefix(c.TLS.WorkloadAPISocket, "unix://") && !strings.HasPrefix(c.TLS.WorkloadAPISocket, "tcp://") {
			bad("tls.workload_api_socket %q: want unix:///path/to/agent.sock (or tcp://host:port)", c.TLS.WorkloadAPISocket)
		}
	}
	if c.TLS.WorkloadAPITimeout < 0 {
		bad("tls.workload_api_timeout must be positive")
	}
	if c.TLS.SPIFFEID != "" {
		if id, err := spiffeid.FromString(c.TLS.SPIFFEID); err != nil {
			bad("tls.spiffe_id %q: %v", c.TLS.SPIFFEID, err)
		} else if id.TrustDomain().Name() != c.TrustDomain {
			bad("tls.spiffe_id %s is not in trust_domain %q", id, c.TrustDomain)
		}
	}
	for td := range c.TLS.Bundles {
		if _, err := spiffeid.TrustDomainFromString(td); err != nil {
			bad("tls.bundles %q: %v", td, err)
		}
	}
	for td := range c.TLS.JWTBundles {
		if _, err := spiffeid.TrustDomainFromString(td); err != nil {
			bad("tls.jwt_bundles %q: %v", td, err)
		}
	}
	if c.JWTSVIDMaxLifetime < 0 {
		bad("jwt_svid_max_lifetime must be positive")
	}
	for _, id := range c.Admin.SPIFFEIDs {
		if _, err := spiffeid.FromString(id); err != nil {
			bad("admin.spiffe_ids %q: %v", id, err)
		}
	}
	for _, name := range sortedKeys(c.Issuers) {
		is := c.Issuers[name]
		if !nameRE.MatchString(name) {
			bad("issuer name %q: use lowercase letters, digits, '.', '_' and '-'", name)
		}
		switch {
		case is.Type == "":
			bad("issuers.%s.type is missing (want one of %s)", name, strings.Join(issuerTypes, ", "))
		case !slices.Contains(issuerTypes, is.Type):
			bad("issuers.%s.type %q is not known (want one of %s)", name, is.Type, strings.Join(issuerTypes, ", "))
		}
		if is.JWT != nil && is.Type != IssuerJWT {
			bad("issuers.%s.jwt is only for type %q", name, IssuerJWT)
		}
		if j := is.JWT; j != nil && is.Type == IssuerJWT {
			if j.RotationPeriod != 0 && j.RotationPeriod < time.Hour {
				bad("issuers.%s.jwt.rotation_period %s: 0 (never) or at least 1h", name, j.RotationPeriod)
			}
			if ahead := j.PublishAhead; ahead != 0 && (ahead < 6*time.Minute || (j.RotationPeriod > 0 && 2*ahead > j.RotationPeriod)) {
				bad("issuers.%s.jwt.publish_ahead %s: at least 6m (the JWKS may be cached 5m) and at most half the rotation_period", name, ahead)
			}
		}
		if is.AWSSTS != nil && is.Type != IssuerAWSSTS {
			bad("issuers.%s.aws_sts is only for type %q", name, IssuerAWSSTS)
		}
		if is.Vault != nil && is.Type != IssuerVault {
			bad("issuers.%s.vault is only for type %q", name, IssuerVault)
		}
		switch is.Type {
		case IssuerAWSSTS:
			errs = append(errs, c.validateAWSSTS(name, is.AWSSTS)...)
		case IssuerVault:
			errs = append(errs, c.validateVault(name, is.Vault)...)
		}
	}
	errs = append(errs, c.validateBudgets()...)
	if len(c.Profiles) == 0 {
		bad("no profiles: nothing could be issued")
	}
	for _, name := range sortedKeys(c.Profiles) {
		p := c.Profiles[name]
		if !nameRE.MatchString(name) {
			bad("profile name %q: use lowercase letters, digits, '.', '_' and '-'", name)
		}
		if _, ok := c.Issuers[p.Issuer]; !ok {
			bad("profiles.%s.issuer %q is not a configured issuer", name, p.Issuer)
		}
		if p.MaxTTL <= 0 {
			bad("profiles.%s.max_ttl must be positive", name)
		}
		if p.DefaultTTL <= 0 || p.DefaultTTL > p.MaxTTL {
			bad("profiles.%s.default_ttl %s must be positive and at most max_ttl %s", name, p.DefaultTTL, p.MaxTTL)
		}
		if !slices.Contains([]string{ClusterOptional, ClusterRequired, ClusterNone}, p.Cluster) {
			bad("profiles.%s.cluster %q: want optional, required or none", name, p.Cluster)
		}
		if slices.Contains(p.Audiences, "") {
			// A token whose aud is "" names no relying party.
			bad("profiles.%s.audiences: an audience must not be empty", name)
		}
		if c.Issuers[p.Issuer].Type == IssuerAWSSTS {
			errs = append(errs, validateAWSProfile(name, p)...)
			errs = append(errs, validateAWSRevocationIssuer(name, p, c.Issuers[p.Issuer].AWSSTS)...)
		} else if p.AWS != nil {
			bad("profiles.%s.aws is only for profiles of %q issuers", name, IssuerAWSSTS)
		}
		if p.Approval != nil {
			errs = append(errs, c.validateApproval(name, p.Approval)...)
		}
		if c.Issuers[p.Issuer].Type == IssuerVault {
			errs = append(errs, validateVaultProfile(name, p)...)
		} else if p.Vault != nil {
			bad("profiles.%s.vault is only for profiles of %q issuers", name, IssuerVault)
		}
	}
	if _, err := policy.New(c.PolicyRules()); err != nil {
		errs = append(errs, fmt.Errorf("config: %w", err))
	}
	for i, r := range c.Policy {
		for _, p := range r.Profiles {
			if _, ok := c.Profiles[p]; !ok && p != "*" {
				bad("policy rule %d grants unknown profile %q", i, p)
			}
		}
	}
	l := c.Limits
	if err := c.LimitTable().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("config: %w", err))
	}
	if l.Rate < 0 || l.Burst < 0 || (l.Rate > 0 && l.Burst == 0) {
		bad("limits: rate and burst must be non-negative, and burst positive when rate is set")
	}
	for key, q := range map[string]Quota{"identity_quota": l.IdentityQuota, "cluster_quota": l.ClusterQuota} {
		if q.Max < 0 || (q.Max > 0 && q.Window <= 0) {
			bad("limits.%s: max must be non-negative and window positive when max is set", key)
		}
	}
	for _, err := range l.validateBuckets() {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.HousekeepingInterval < time.Second || c.HousekeepingInterval > 24*time.Hour {
		bad("housekeeping_interval must be between 1s and 24h")
	}
	if c.ShutdownGrace < 0 {
		bad("shutdown_grace must not be negative")
	}
	errs = append(errs, c.validateAudit()...)
	if c.NodeAttestation != nil {
		errs = append(errs, c.NodeAttestation.validate()...)
	}
	if c.TLS.ReloadInterval < time.Second {
		bad("tls.reload_interval must be at least 1s")
	}
	errs = append(errs, c.Alerts.validate()...)
	if c.State.Etcd != nil {
		errs = append(errs, c.State.Etcd.validate()...)
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
