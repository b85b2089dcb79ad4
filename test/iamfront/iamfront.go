// Package iamfront is a recording stand-in for AWS IAM, for tests: an HTTP
// server on loopback that speaks enough of IAM's Query protocol
// (form-encoded POST with Action=..., XML responses, as the AWS SDK for Go
// v2 sends and reads them) for the role inline policy calls the broker
// makes — PutRolePolicy, GetRolePolicy, DeleteRolePolicy — and keeps the
// documents it is given, so a test can read back exactly what the broker
// applied through the real SDK client.
//
// It also evaluates the deny statements of a document against a session's
// request context (Denies), for the condition operators the broker emits,
// so a test can say which sessions an applied document takes back.
package iamfront

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"unicode"
)

// MaxRoleChars is IAM's limit on a role's inline policies together, in
// characters not counting whitespace; a PutRolePolicy over it fails with
// LimitExceeded, as IAM's does.
const MaxRoleChars = 10240

// Call is one request the front answered.
type Call struct {
	// Action is the IAM action, e.g. PutRolePolicy.
	Action string
	// RoleName, PolicyName and Document are its parameters (Document for
	// PutRolePolicy only).
	RoleName, PolicyName, Document string
	// Code is the error code answered, empty for success.
	Code string
}

// Front is a running recording IAM front.
type Front struct {
	srv *httptest.Server

	mu       sync.Mutex
	policies map[string]map[string]string // role -> policy name -> document
	calls    []Call
	fail     []string // error codes to answer to the next calls, in order
	notify   chan struct{}
	// hold, when set, is waited on before each request is answered;
	// arrived receives each held request's action.
	hold     chan struct{}
	arrived  chan string
	inFlight int
	maxIn    int
}

// Start starts a front on loopback; it stops when the test ends (Close).
func Start() *Front {
	f := &Front{policies: map[string]map[string]string{}, notify: make(chan struct{}, 1)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

// URL is the endpoint to give the SDK client as BaseEndpoint.
func (f *Front) URL() string { return f.srv.URL }

// Close stops the server.
func (f *Front) Close() { f.srv.Close() }

// Policy returns the document of role's inline policy name, if there is one.
func (f *Front) Policy(role, name string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	doc, ok := f.policies[role][name]
	return doc, ok
}

// SetPolicy stores a document as if an operator had put it (another
// inline policy counting against the role's size limit, say).
func (f *Front) SetPolicy(role, name, doc string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.policies[role] == nil {
		f.policies[role] = map[string]string{}
	}
	f.policies[role][name] = doc
}

// Calls returns every call answered so far.
func (f *Front) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// FailNext makes the next len(codes) calls fail with these error codes
// (e.g. ServiceFailure, Throttling), one each, in order.
func (f *Front) FailNext(codes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = append(f.fail, codes...)
}

// Hold makes the front keep every request waiting, after telling Arrived,
// until the returned release is called (once).
func (f *Front) Hold() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{})
	f.hold, f.arrived = ch, make(chan string, 100)
	return func() {
		f.mu.Lock()
		f.hold = nil
		f.mu.Unlock()
		close(ch)
	}
}

// Arrived receives the action of each request held by Hold.
func (f *Front) Arrived() <-chan string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.arrived
}

// MaxInFlight is the most requests the front has been answering at once.
func (f *Front) MaxInFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxIn
}

// Changed receives (coalesced) after each call is answered.
func (f *Front) Changed() <-chan struct{} { return f.notify }

const xmlns = "https://iam.amazonaws.com/doc/2010-05-08/"

// errorStatus is the HTTP status IAM answers each error code with.
var errorStatus = map[string]int{
	"NoSuchEntity": http.StatusNotFound, "LimitExceeded": http.StatusConflict,
	"MalformedPolicyDocument": http.StatusBadRequest, "ServiceFailure": http.StatusInternalServerError,
	"Throttling": http.StatusBadRequest, "AccessDenied": http.StatusForbidden, "InvalidAction": http.StatusBadRequest,
}

func (f *Front) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		writeError(w, "AccessDenied", "unsigned or not a POST")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, "MalformedQueryString", err.Error())
		return
	}
	c := Call{Action: r.PostForm.Get("Action"), RoleName: r.PostForm.Get("RoleName"), PolicyName: r.PostForm.Get("PolicyName"),
		Document: r.PostForm.Get("PolicyDocument")}
	f.mu.Lock()
	f.inFlight++
	f.maxIn = max(f.maxIn, f.inFlight)
	hold, arrived := f.hold, f.arrived
	f.mu.Unlock()
	if hold != nil {
		arrived <- c.Action
		<-hold
	}
	f.mu.Lock()
	defer func() {
		f.calls = append(f.calls, c)
		f.inFlight--
		f.mu.Unlock()
		select {
		case f.notify <- struct{}{}:
		default:
		}
	}()
	if len(f.fail) > 0 {
		c.Code, f.fail = f.fail[0], f.fail[1:]
		writeError(w, c.Code, "injected failure")
		return
	}
	if c.RoleName == "" || c.PolicyName == "" {
		c.Code = "ValidationError"
		writeError(w, c.Code, "RoleName and PolicyName are required")
		return
	}
	role := f.policies[c.RoleName]
	switch c.Action {
	case "PutRolePolicy":
		if c.Document == "" {
			c.Code = "MalformedPolicyDocument"
			writeError(w, c.Code, "empty document")
			return
		}
		total := chars(c.Document)
		for name, doc := range role {
			if name != c.PolicyName {
				total += chars(doc)
			}
		}
		if total > MaxRoleChars {
			c.Code = "LimitExceeded"
			writeError(w, c.Code, fmt.Sprintf("Maximum policy size of %d bytes exceeded for role %s", MaxRoleChars, c.RoleName))
			return
		}
		if role == nil {
			role = map[string]string{}
			f.policies[c.RoleName] = role
		}
		role[c.PolicyName] = c.Document
		writeResult(w, "PutRolePolicy", "")
	case "GetRolePolicy":
		doc, ok := role[c.PolicyName]
		if !ok {
			c.Code = "NoSuchEntity"
			writeError(w, c.Code, fmt.Sprintf("The role policy with name %s cannot be found.", c.PolicyName))
			return
		}
		// IAM returns the document URL-encoded (RFC 3986).
		enc := strings.ReplaceAll(url.QueryEscape(doc), "+", "%20")
		writeResult(w, "GetRolePolicy", "<RoleName>"+esc(c.RoleName)+"</RoleName><PolicyName>"+esc(c.PolicyName)+
			"</PolicyName><PolicyDocument>"+esc(enc)+"</PolicyDocument>")
	case "DeleteRolePolicy":
		if _, ok := role[c.PolicyName]; !ok {
			c.Code = "NoSuchEntity"
			writeError(w, c.Code, fmt.Sprintf("The role policy with name %s cannot be found.", c.PolicyName))
			return
		}
		delete(role, c.PolicyName)
		writeResult(w, "DeleteRolePolicy", "")
	default:
		c.Code = "InvalidAction"
		writeError(w, c.Code, "the front does not serve "+c.Action)
	}
}

func chars(doc string) int {
	n := 0
	for _, r := range doc {
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func writeResult(w http.ResponseWriter, action, result string) {
	w.Header().Set("Content-Type", "text/xml")
	body := "<" + action + "Response xmlns=\"" + xmlns + "\">"
	if result != "" {
		body += "<" + action + "Result>" + result + "</" + action + "Result>"
	}
	body += "<ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata></" + action + "Response>"
	fmt.Fprint(w, body)
}

func writeError(w http.ResponseWriter, code, msg string) {
	status, ok := errorStatus[code]
	if !ok {
		status = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	typ := "Sender"
	if status >= 500 {
		typ = "Receiver"
	}
	fmt.Fprintf(w, `<ErrorResponse xmlns="%s"><Error><Type>%s</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>`,
		xmlns, typ, esc(code), esc(msg))
}

// sortedKeys is for deterministic error messages.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
