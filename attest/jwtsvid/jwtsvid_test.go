package jwtsvid_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jwtsvid"
	"github.com/credbroker/credbroker/internal/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td       = spiffeid.RequireTrustDomainFromString("broker.test")
	evilTD   = spiffeid.RequireTrustDomainFromString("evil.org")
	workload = spiffeid.RequireFromPath(td, "/ns/capi-system/sa/capa")
	aud      = []string{"credbroker"}
)

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func newCA(t *testing.T, td spiffeid.TrustDomain) *ca.CA {
	t.Helper()
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mint(t *testing.T, c *ca.CA, id spiffeid.ID, audience []string, ttl time.Duration) string {
	t.Helper()
	tok, err := c.MintJWTSVID(id, audience, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func withAuth(values ...string) context.Context {
	md := metadata.MD{}
	for _, v := range values {
		md.Append("authorization", v)
	}
	return metadata.NewIncomingContext(context.Background(), md)
}

func TestValidToken(t *testing.T) {
	c := newCA(t, td)
	auth := jwtsvid.New(jwtbundle.NewSet(c.JWTBundle()), aud)
	tok := mint(t, c, workload, aud, 5*time.Minute)
	exp := parseExp(t, tok)

	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		got, err := auth.Authenticate(withAuth(scheme + " " + tok))
		if err != nil {
			t.Fatalf("%s: %v", scheme, err)
		}
		want := attest.Caller{ID: workload, Method: attest.MethodJWTSVID, ExpiresAt: exp}
		if !got.ExpiresAt.Equal(exp) {
			t.Errorf("ExpiresAt = %v, want %v", got.ExpiresAt, exp)
		}
		got.ExpiresAt = exp
		if got != want {
			t.Errorf("caller = %+v, want %+v", got, want)
		}
	}
}

func parseExp(t *testing.T, tok string) time.Time {
	t.Helper()
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, claims); err != nil {
		t.Fatal(err)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil {
		t.Fatal(err)
	}
	return exp.Time
}

func TestNodeTokenGetsConstraints(t *testing.T) {
	c := newCA(t, td)
	auth := jwtsvid.New(c.JWTBundle(), aud)
	node, err := attest.NodeID(td, attest.ClusterRef{Namespace: "default", Name: "prod-1"}, "n-1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := auth.Authenticate(withAuth("Bearer " + mint(t, c, node, aud, time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if want := (attest.Constraints{Cluster: "default/prod-1", Node: "n-1"}); got.Constraints != want {
		t.Errorf("constraints = %+v, want %+v", got.Constraints, want)
	}
}

func TestNoEvidence(t *testing.T) {
	auth := jwtsvid.New(jwtbundle.New(td), aud)
	for name, ctx := range map[string]context.Context{
		"no metadata":      context.Background(),
		"no authorization": metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-other", "1")),
	} {
		if _, err := auth.Authenticate(ctx); !errors.Is(err, attest.ErrNoEvidence) {
			t.Errorf("%s: %v, want ErrNoEvidence", name, err)
		}
	}
}

func TestRejected(t *testing.T) {
	now := time.Now()
	c := newCA(t, td)
	foreign := newCA(t, evilTD)
	rotated := newCA(t, td) // same trust domain, key not in our bundle
	bundles := jwtbundle.NewSet(c.JWTBundle())
	auth := jwtsvid.New(bundles, aud)

	good := mint(t, c, workload, aud, 5*time.Minute)
	other := mint(t, c, spiffeid.RequireFromPath(td, "/admin"), aud, 5*time.Minute)
	parts := strings.Split(good, ".")
	otherParts := strings.Split(other, ".")

	for name, tc := range map[string]struct {
		auth  *jwtsvid.Authenticator
		value []string // authorization values
		want  string   // substring of the error
	}{
		"wrong audience": {auth, []string{"Bearer " + mint(t, c, workload, []string{"someone-else"}, time.Minute)}, "audience"},
		"expired": {auth, []string{"Bearer " + mustMint(t, c.With(ca.WithClock(fixed(now.Add(-time.Hour)))), workload, aud, 5*time.Minute)},
			"jwtsvid: token has expired"},
		"expired by injected clock": {jwtsvid.New(bundles, aud, jwtsvid.WithClock(fixed(now.Add(time.Hour)))),
			[]string{"Bearer " + good}, "jwtsvid: token has expired"},
		"foreign trust domain": {auth, []string{"Bearer " + mint(t, foreign, spiffeid.RequireFromPath(evilTD, "/x"), aud, time.Minute)},
			`no bundle found for trust domain "evil.org"`},
		"unknown kid": {auth, []string{"Bearer " + mint(t, rotated, workload, aud, time.Minute)}, "no JWT authority"},
		"tampered signature": {auth, []string{"Bearer " + parts[0] + "." + parts[1] + "." + flip(parts[2])},
			"jwtsvid: unable to get claims from token"},
		"payload swapped": {auth, []string{"Bearer " + parts[0] + "." + otherParts[1] + "." + parts[2]},
			"jwtsvid: unable to get claims from token"},
		"alg none":             {auth, []string{"Bearer " + unsigned(t, "none", workload)}, "jwtsvid: unable to parse JWT token"},
		"alg HS256":            {auth, []string{"Bearer " + hmacSigned(t, c, workload)}, "jwtsvid: unable to parse JWT token"},
		"not a JWT":            {auth, []string{"Bearer not-a-token"}, "jwtsvid: unable to parse JWT token"},
		"basic scheme":         {auth, []string{"Basic " + good}, `jwtsvid: authorization is not of the form "Bearer <token>"`},
		"no scheme":            {auth, []string{good}, `jwtsvid: authorization is not of the form "Bearer <token>"`},
		"bearer without token": {auth, []string{"Bearer "}, `jwtsvid: authorization is not of the form "Bearer <token>"`},
		"two tokens in value":  {auth, []string{"Bearer " + good + " " + good}, `jwtsvid: authorization is not of the form "Bearer <token>"`},
		"two values":           {auth, []string{"Bearer " + good, "Bearer " + good}, "jwtsvid: more than one authorization value"},
		"huge token":           {auth, []string{"Bearer " + strings.Repeat("a", 9<<10)}, "jwtsvid: token longer than"},
		"no audiences configured": {jwtsvid.New(bundles, []string{""}), []string{"Bearer " + good},
			"jwtsvid: no audience configured"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := tc.auth.Authenticate(withAuth(tc.value...))
			if err == nil || errors.Is(err, attest.ErrNoEvidence) {
				t.Fatalf("Authenticate = %+v, %v; want an error", got, err)
			}
			if !strings.HasPrefix(err.Error(), "jwtsvid: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
			for _, v := range tc.value {
				tok := strings.TrimSpace(v[strings.IndexByte(v, ' ')+1:])
				sig := tok[strings.LastIndexByte(tok, '.')+1:]
				if (tok != "" && strings.Contains(err.Error(), tok)) || (len(sig) > 8 && strings.Contains(err.Error(), sig)) {
					t.Errorf("error %q echoes the token", err)
				}
			}
		})
	}
}

func mustMint(t *testing.T, c *ca.CA, id spiffeid.ID, audience []string, ttl time.Duration) string {
	t.Helper()
	return mint(t, c, id, audience, ttl)
}

// flip changes one character in the middle of a base64url segment.
func flip(s string) string {
	b := []byte(s)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func claims(id spiffeid.ID) jwt.MapClaims {
	return jwt.MapClaims{"sub": id.String(), "aud": aud, "exp": time.Now().Add(time.Minute).Unix()}
}

// unsigned builds a token with the given alg and an empty signature.
func unsigned(t *testing.T, alg string, id spiffeid.ID) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, claims(id))
	tok.Header["alg"] = alg
	s, err := tok.SigningString()
	if err != nil {
		t.Fatal(err)
	}
	return s + "."
}

// hmacSigned signs with HS256 keyed by the CA's kid, the classic algorithm
// confusion attack shape.
func hmacSigned(t *testing.T, c *ca.CA, id spiffeid.ID) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(id))
	tok.Header["kid"] = c.JWTKeyID()
	s, err := tok.SignedString([]byte(base64.StdEncoding.EncodeToString([]byte(c.JWTKeyID()))))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestOverGRPC sends the token as real gRPC metadata over a loopback socket.
func TestOverGRPC(t *testing.T) {
	c := newCA(t, td)
	auth := jwtsvid.New(c.JWTBundle(), aud)
	results := make(chan error, 1)
	var caller attest.Caller
	srv := grpc.NewServer(grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			cl, err := auth.Authenticate(ctx)
			caller = cl
			results <- err
			if err != nil {
				return nil, status.Error(codes.Unauthenticated, err.Error())
			}
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); <-done }()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tok := mint(t, c, workload, aud, time.Minute)
	if _, err := client.Check(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := <-results; err != nil || caller.ID != workload {
		t.Fatalf("Authenticate = %+v, %v", caller, err)
	}

	_, err = client.Check(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+flip(tok)), &healthpb.HealthCheckRequest{})
	if <-results == nil || status.Code(err) != codes.Unauthenticated {
		t.Fatalf("tampered token: client got %v", err)
	}
	if strings.Contains(status.Convert(err).Message(), flip(tok)) {
		t.Error("status message echoes the token")
	}

	_, err = client.Check(ctx, &healthpb.HealthCheckRequest{})
	if got := <-results; !errors.Is(got, attest.ErrNoEvidence) || status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: Authenticate %v, client %v", got, err)
	}
}

// selfSigned returns a token with exactly the given claims, signed by a key
// the returned bundle trusts: for claim shapes the CA does not mint.
func selfSigned(t *testing.T, claims jwt.MapClaims) (string, *jwtbundle.Bundle) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b := jwtbundle.New(td)
	if err := b.AddJWTAuthority("k1", key.Public()); err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

// TestLifetimeIsBounded: a bearer token that lives longer than the
// configured maximum (from iat or nbf, or from now) is refused, whatever its
// signature; one without exp is refused too.
func TestLifetimeIsBounded(t *testing.T) {
	now := time.Now()
	c := newCA(t, td)
	bundles := jwtbundle.NewSet(c.JWTBundle())
	earlier := c.With(ca.WithClock(fixed(now.Add(-2 * time.Hour))))
	type tcase struct {
		token   string
		bundles jwtbundle.Source
		opts    []jwtsvid.Option
		want    string // substring of the error; "" accepts
	}
	minted := func(c *ca.CA, ttl time.Duration, want string, opts ...jwtsvid.Option) tcase {
		return tcase{mint(t, c, workload, aud, ttl), bundles, opts, want}
	}
	custom := func(claims jwt.MapClaims, want string) tcase {
		claims["sub"], claims["aud"] = workload.String(), aud
		tok, b := selfSigned(t, claims)
		return tcase{tok, b, nil, want}
	}
	for name, tc := range map[string]tcase{
		"five minutes":                  minted(c, 5*time.Minute, ""),
		"one hour":                      minted(c, time.Hour, ""),
		"ten years":                     minted(c, 10*365*24*time.Hour, "more than the 1h0m0s the broker accepts"),
		"over a configured bound":       minted(c, 20*time.Minute, "more than the 10m0s", jwtsvid.WithMaxLifetime(10*time.Minute)),
		"long from iat, short from now": minted(earlier, 2*time.Hour+30*time.Minute, "(iat to exp) is 2h30m0s"),
		"long from nbf":                 custom(jwt.MapClaims{"nbf": now.Add(-3 * time.Hour).Unix(), "exp": now.Add(30 * time.Minute).Unix()}, "(nbf to exp)"),
		"no iat, far exp":               custom(jwt.MapClaims{"exp": now.Add(10 * 365 * 24 * time.Hour).Unix()}, "token expires in"),
		"no exp":                        custom(jwt.MapClaims{"iat": now.Unix()}, "missing exp"),
		"short, self-signed":            custom(jwt.MapClaims{"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}, ""),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := jwtsvid.New(tc.bundles, aud, tc.opts...).Authenticate(withAuth("Bearer " + tc.token))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
