//go:build !linux && !darwin

package broker

import (
	"fmt"
	"runtime"
)

// peerCredOf fails on systems where this package has no way to ask the
// kernel for a unix-socket peer's uid: without it the admin socket cannot
// tell an admin from anyone else, so it admits no one.
func peerCredOf(int) (PeerCred, error) {
	return PeerCred{}, fmt.Errorf("peer credentials are not supported on %s", runtime.GOOS)
}
