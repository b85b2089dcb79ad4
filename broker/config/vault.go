package config

import (
	"fmt"
	"net/url"
	"time"
)

// VaultIssuer configures minting through HashiCorp Vault.
type VaultIssuer struct {
	// Address of Vault (required), e.g. https://vault.example.org:8200.
	Address string `yaml:"address"`
	// Namespace is sent as X-Vault-Namespace (Vault Enterprise).
	Namespace string `yaml:"namespace"`
	// CAFile verifies Vault's TLS certificate; ServerName overrides the name
	// checked.
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
	// Timeout bounds one request to Vault; default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxRetries on 5xx and 429, with short waits; default 1; -1 for none.
	MaxRetries int `yaml:"max_retries"`
	// Auth is how the broker logs in to Vault.
	Auth VaultAuth `yaml:"auth"`
}

// VaultAuth is how the broker authenticates to Vault.
type VaultAuth struct {
	// Method is jwt (the broker's own OIDC issuer; no static secret),
	// approle, or token_file.
	Method string `yaml:"method"`
	// Mount is the auth mount path; default the method's name.
	Mount string `yaml:"mount"`
	// Role is the jwt auth role.
	Role string `yaml:"role"`
	// Issuer names the jwt issuer (in this file) whose tokens Vault trusts.
	Issuer string `yaml:"issuer"`
	// Audience is the login token's aud; default "vault".
	Audience string `yaml:"audience"`
	// RoleIDFile and SecretIDFile hold the AppRole ids (mode 0600).
	RoleIDFile   string `yaml:"role_id_file"`
	SecretIDFile string `yaml:"secret_id_file"`
	// TokenFile holds a Vault token (mode 0600).
	TokenFile string `yaml:"token_file"`
}

// VaultProfile is what a profile on a vault issuer mints.
type VaultProfile struct {
	// Kind is aws (an AWS secrets engine path), token (a Vault token) or
	// secret (any leased secret, returned as JSON).
	Kind string `yaml:"kind"`
	// Path is read for aws and secret, e.g. aws/sts/capa or database/creds/ro.
	Path string `yaml:"path"`
	// TokenRole (token kind) is the token role to create tokens through; make
	// it orphan so tokens do not end with the broker's own.
	TokenRole string `yaml:"token_role"`
	// Policies (token kind) of the created tokens.
	Policies []string `yaml:"policies"`
	// NumUses (token kind) limits a token's uses; 0 = unlimited.
	NumUses int `yaml:"num_uses"`
}

// Vault auth methods.
const (
	VaultAuthJWT       = "jwt"
	VaultAuthAppRole   = "approle"
	VaultAuthTokenFile = "token_file"
)

func (c *Config) validateVault(name string, v *VaultIssuer) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: issuers.%s.vault."+format, append([]any{name}, args...)...))
	}
	if v == nil {
		return []error{fmt.Errorf("config: issuers.%s.vault is required for type %q (address and auth at least)", name, IssuerVault)}
	}
	if u, err := url.Parse(v.Address); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		bad("address %q must be an absolute http(s) URL", v.Address)
	}
	if v.Timeout < 0 || v.MaxRetries < -1 {
		bad("timeout must not be negative and max_retries at least -1")
	}
	a := v.Auth
	switch a.Method {
	case VaultAuthJWT:
		if a.Role == "" {
			bad("auth.role is required for method jwt")
		}
		if c.Issuers[a.Issuer].Type != IssuerJWT {
			bad("auth.issuer %q must name an issuer of type %q (the broker's own OIDC issuer, which Vault trusts)", a.Issuer, IssuerJWT)
		}
	case VaultAuthAppRole:
		if a.RoleIDFile == "" || a.SecretIDFile == "" {
			bad("auth.role_id_file and auth.secret_id_file are required for method approle")
		}
	case VaultAuthTokenFile:
		if a.TokenFile == "" {
			bad("auth.token_file is required for method token_file")
		}
	default:
		bad("auth.method %q: want %s, %s or %s", a.Method, VaultAuthJWT, VaultAuthAppRole, VaultAuthTokenFile)
	}
	return errs
}

func validateVaultProfile(name string, p Profile) []error {
	bad := func(format string, args ...any) []error {
		return []error{fmt.Errorf("config: profiles.%s.vault."+format, append([]any{name}, args...)...)}
	}
	v := p.Vault
	if v == nil {
		return []error{fmt.Errorf("config: profiles.%s.vault is required for a %q issuer (kind at least)", name, IssuerVault)}
	}
	switch v.Kind {
	case "aws", "secret":
		if v.Path == "" {
			return bad("path is required for kind %s", v.Kind)
		}
		if v.TokenRole != "" || len(v.Policies) > 0 || v.NumUses != 0 {
			return bad("token_role, policies and num_uses are only for kind token")
		}
	case "token":
		if v.TokenRole == "" {
			return bad("token_role is required for kind token (an orphan token role)")
		}
		if v.Path != "" || v.NumUses < 0 {
			return bad("path is not for kind token, and num_uses must not be negative")
		}
	default:
		return bad("kind %q: want aws, token or secret", v.Kind)
	}
	return nil
}
