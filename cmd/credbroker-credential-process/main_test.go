package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--svid-dir", "d", "--profile", "p"}, "--broker is required"},
		{[]string{"--broker", "b", "--profile", "p"}, "--svid-dir is required"},
		{[]string{"--broker", "b", "--svid-dir", "d"}, "--profile is required"},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "--format", "yaml"}, `--format "yaml"`},
		{[]string{"--broker", "b", "--svid-dir", "d", "--profile", "p", "extra"}, "unexpected arguments"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
	} {
		var out, errb bytes.Buffer
		t.Setenv("CREDBROKER_ADDR", "")
		t.Setenv("CREDBROKER_SVID_DIR", "")
		if code := run(context.Background(), tc.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) || out.Len() != 0 {
			t.Errorf("run(%q) = %d, stderr %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

func TestMissingSVIDDirFailsClearly(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--broker", "127.0.0.1:1", "--svid-dir", t.TempDir() + "/nope", "--profile", "p"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "svid.pem") || out.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestRenderAWS(t *testing.T) {
	exp := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := &credbrokerv1.Credential{Profile: "capa", ExpiresAt: timestamppb.New(exp), Kind: &credbrokerv1.Credential_Aws{Aws: &credbrokerv1.AWSCredentials{
		AccessKeyId: "ASIAEXAMPLE", SecretAccessKey: "secret", SessionToken: "session",
	}}}
	b, err := render(c, "aws")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Version":1,"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret","SessionToken":"session","Expiration":"2026-11-23T12:00:00Z"}` + "\n"
	if string(b) != want {
		t.Fatalf("aws format:\n got %s\nwant %s", b, want)
	}
}

func TestRenderJSONToken(t *testing.T) {
	exp := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := &credbrokerv1.Credential{IssuanceId: "id1", Profile: "dev-token", Issuer: "local", ExpiresAt: timestamppb.New(exp),
		Kind: &credbrokerv1.Credential_Token{Token: &credbrokerv1.Token{Token: "tok", TokenType: "JWT"}}}
	b, err := render(c, "json")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["token"] != "tok" || got["expiration"] != "2026-11-23T12:00:00Z" || got["issuance_id"] != "id1" {
		t.Fatalf("json format = %s", b)
	}
	if _, err := render(c, "aws"); err == nil || !strings.Contains(err.Error(), "use --format json") {
		t.Fatalf("aws format of a token: %v", err)
	}
}
