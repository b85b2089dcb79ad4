package broker

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// xucredVersion is XUCRED_VERSION from <sys/ucred.h>, which x/sys/unix does
// not export: a struct of another layout is refused, not misread.
const xucredVersion = 0

// peerCredOf asks the kernel who is at the other end of the unix socket fd.
// macOS has no SO_PEERCRED; LOCAL_PEERCRED gives the peer's effective uid and
// groups (the first group is its effective gid) and LOCAL_PEERPID its pid,
// both as of connect(2).
func peerCredOf(fd int) (PeerCred, error) {
	x, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return PeerCred{}, fmt.Errorf("LOCAL_PEERCRED: %w", err)
	}
	if x.Version != xucredVersion || x.Ngroups < 1 {
		return PeerCred{}, fmt.Errorf("LOCAL_PEERCRED: unexpected xucred (version %d, %d groups)", x.Version, x.Ngroups)
	}
	pid, err := unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	if err != nil {
		return PeerCred{}, fmt.Errorf("LOCAL_PEERPID: %w", err)
	}
	return PeerCred{UID: x.Uid, GID: x.Groups[0], PID: int32(pid)}, nil
}
