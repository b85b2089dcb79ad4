package vaulttest

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
)

// callerIdentity is GetCallerIdentity's answer. Vault only checks that the
// call succeeds.
const callerIdentity = `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:iam::000000000000:user/vaulttest</Arn>
    <UserId>vaulttest</UserId>
    <Account>000000000000</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>vaulttest</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>`

// STSProxy returns the URL of a loopback proxy to the STS endpoint (a MinIO
// server's URL) for Vault's AWS secrets engine: before every STS call Vault
// pings sts:GetCallerIdentity and, when it fails, answers "could not obtain
// sts client". MinIO does not implement that action, so the proxy answers it
// (unauthenticated, with a fixed identity) and forwards every other request,
// Host header and body unchanged so that signatures still verify. The proxy
// closes when the test ends.
func STSProxy(t testing.TB, endpoint string) string {
	t.Helper()
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatalf("vaulttest: STSProxy: %v", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	proxy := &httputil.ReverseProxy{Transport: tr, Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host // signed by the client; must reach MinIO as sent
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		form, _ := url.ParseQuery(string(body))
		if r.Method == http.MethodPost && form.Get("Action") == "GetCallerIdentity" {
			w.Header().Set("Content-Type", "text/xml")
			_, _ = io.WriteString(w, callerIdentity)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	return srv.URL
}
