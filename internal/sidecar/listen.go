package sidecar

import (
	"fmt"
	"net"
	"net/netip"
)

// CheckListen accepts only HOST:PORT where HOST is a loopback IP literal
// (127.0.0.0/8 or ::1). Host names, even "localhost", are refused: they may
// resolve elsewhere, and the endpoint hands out credentials to anyone who
// can reach it with the token.
func CheckListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("sidecar: listen address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" || ip.Is4In6() || !ip.IsLoopback() {
		return fmt.Errorf("sidecar: listen address %q: the host must be a loopback IP literal (127.0.0.0/8 or [::1]), e.g. 127.0.0.1:9911", addr)
	}
	return nil
}
