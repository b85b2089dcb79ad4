package jwtsvid

import (
	"errors"
	"testing"
)

func TestRedact(t *testing.T) {
	const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlZ21lbnQtaGVyZQ"
	for _, msg := range []string{"bad token " + token, "bad signature c2lnbmF0dXJlLXNlZ21lbnQtaGVyZQ"} {
		if got := redact(errors.New(msg), token).Error(); got != "jwtsvid: invalid token" {
			t.Errorf("redact(%q) = %q", msg, got)
		}
	}
	orig := errors.New("jwtsvid: token has expired")
	if got := redact(orig, token); got != orig {
		t.Errorf("redact changed a safe error: %v", got)
	}
}
