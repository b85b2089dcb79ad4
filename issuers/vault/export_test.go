package vault

import (
	"testing"
	"time"
)

// AwaitLogins waits until i has logged in at least n times.
func AwaitLogins(t *testing.T, i *Issuer, n uint64) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		count, next := i.loginState()
		if count >= n {
			return
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatalf("vault: %d logins after 30s, want %d", count, n)
		}
	}
}
