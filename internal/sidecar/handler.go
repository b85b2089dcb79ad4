package sidecar

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// CredentialsPath is the URL path prefix of the credentials endpoint; the
// credential's name follows it.
const CredentialsPath = "/v1/credentials/"

// Handler serves, on loopback:
//
//	GET /v1/credentials/NAME  the AWS container-credentials endpoint
//	GET /healthz              200 when every credential is valid, else 503 naming those that are not
//	GET /metrics              Prometheus metrics (when a metrics handler is given)
//
// The credentials endpoint wants the header "Authorization: TOKEN" (the raw
// token, as the AWS SDKs send it): missing → 401, wrong → 403, then unknown
// NAME → 404, a revoked credential → 403 (code CredentialRevoked), no
// valid credential → 503, each with a JSON body
// {"code","message"} that the SDKs show; 200 is
// {"AccessKeyId","SecretAccessKey","Token","Expiration"} with
// Cache-Control: no-store. Nothing is logged per request.
type Handler struct {
	token  []byte
	creds  map[string]*Refresher
	names  []string
	mux    *http.ServeMux
	served time.Duration // 0: the credential's own expiry
	now    func() time.Time
}

// HandlerOption configures a Handler.
type HandlerOption func(*Handler)

// WithServedLifetime makes the endpoint tell the SDK that a credential
// expires at most d from now (its real expiry if sooner), with now as the
// clock. The SDKs keep a container credential until 5 minutes before the
// expiry they were told, so d = 6m has them come back about every minute:
// a revoked credential then leaves the running program within a minute
// instead of at its real expiry. The credential itself is unchanged.
func WithServedLifetime(d time.Duration, now func() time.Time) HandlerOption {
	return func(h *Handler) { h.served, h.now = d, now }
}

// NewHandler returns a Handler for the given refreshers (names must be
// unique), checking requests against token. metrics may be nil.
func NewHandler(token string, refreshers []*Refresher, metrics http.Handler, opts ...HandlerOption) (*Handler, error) {
	if token == "" {
		return nil, errors.New("sidecar: authorization token is required")
	}
	h := &Handler{token: []byte(token), creds: map[string]*Refresher{}, mux: http.NewServeMux(), now: time.Now}
	for _, o := range opts {
		o(h)
	}
	if h.served < 0 {
		return nil, errors.New("sidecar: served lifetime must not be negative")
	}
	for _, r := range refreshers {
		name := r.Spec().Name
		if _, dup := h.creds[name]; dup {
			return nil, fmt.Errorf("sidecar: credential %q is defined twice", name)
		}
		h.creds[name] = r
		h.names = append(h.names, name)
	}
	slices.Sort(h.names)
	h.mux.HandleFunc("GET "+CredentialsPath+"{name}", h.serveCredential)
	h.mux.HandleFunc("GET /healthz", h.health(true))
	if metrics != nil {
		h.mux.Handle("GET /metrics", metrics)
	}
	return h, nil
}

// MonitorHandler returns the handler of the metrics listener, which is
// reachable from outside the pod (Prometheus, the kubelet's probes):
//
//	GET /metrics  metrics (Prometheus text format)
//	GET /healthz  200 when every credential is valid, else 503 naming those that are not
//
// and 404 for anything else. It never serves a credential and never reads
// an Authorization header. Its /healthz does not say why a credential is
// missing: the broker's messages (policy, revocations and who made them)
// stay on the loopback /healthz.
func (h *Handler) MonitorHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.health(false))
	mux.Handle("GET /metrics", metrics)
	// Without a catch-all, a known path with another method would be 405;
	// everything else is simply not here.
	mux.Handle("/", http.NotFoundHandler())
	return mux
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// credentialResponse is the container-credentials contract.
type credentialResponse struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

type errorResponse struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (h *Handler) serveCredential(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	got, ok := r.Header["Authorization"]
	switch {
	case !ok || len(got) == 0 || got[0] == "":
		writeJSON(w, http.StatusUnauthorized, errorResponse{"MissingAuthorization", "the Authorization header with the sidecar's token is required"})
		return
	case len(got) != 1 || subtle.ConstantTimeCompare([]byte(got[0]), h.token) != 1:
		writeJSON(w, http.StatusForbidden, errorResponse{"InvalidAuthorization", "the Authorization header does not hold the sidecar's token"})
		return
	}
	name := r.PathValue("name")
	ref, ok := h.creds[name]
	if !ok {
		writeJSON(w, http.StatusNotFound, errorResponse{"NotFound", fmt.Sprintf("no credential named %q; this sidecar serves %s", name, strings.Join(h.names, ", "))})
		return
	}
	c, err := ref.Get(r.Context())
	switch {
	case errors.Is(err, ErrRevoked):
		// 4xx: the SDKs do not retry it, and show code and message.
		writeJSON(w, http.StatusForbidden, errorResponse{"CredentialRevoked", err.Error()})
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{"CredentialUnavailable", err.Error()})
		return
	}
	exp := c.Expiration
	if h.served > 0 {
		// Whole seconds, rounded down: never later than the cap.
		if capped := h.now().Add(h.served).Truncate(time.Second); capped.Before(exp) {
			exp = capped
		}
	}
	writeJSON(w, http.StatusOK, credentialResponse{
		AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, Token: c.SessionToken,
		Expiration: exp.UTC().Format(time.RFC3339),
	})
}

// health serves /healthz; with detail it says why each missing credential
// is missing, else it names them only.
func (h *Handler) health(detail bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		var bad []string
		for _, name := range h.names {
			if _, ok := h.creds[name].Current(); ok {
				continue
			}
			if !detail {
				bad = append(bad, name)
				continue
			}
			why := describe(h.creds[name].LastError())
			if n, revoked := h.creds[name].Revoked(); revoked {
				why = fmt.Sprintf("%v: %s", ErrRevoked, n)
			}
			bad = append(bad, fmt.Sprintf("%s: %s", name, why))
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(bad) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "no valid credential for %s\n", strings.Join(bad, "; "))
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v) // the client went away if this fails
}
