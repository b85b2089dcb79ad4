package broker

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// peerCredOf asks the kernel who is at the other end of the unix socket fd
// (SO_PEERCRED: the peer's uid, gid and pid when it connected).
func peerCredOf(fd int) (PeerCred, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return PeerCred{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	return PeerCred{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}
