package sidecar

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
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

// CheckMetricsListen accepts HOST:PORT for the metrics listener, where HOST
// is an IP literal or empty (every interface): it is meant to be reachable
// from outside the pod, by Prometheus and the kubelet, and serves no
// credential. It must not share a port with the credentials listener at
// listen (the same address, or the same port on a wildcard host): one
// address serving both would put the credentials endpoint where the metrics
// are scraped. Port 0 (pick one) never overlaps.
func CheckMetricsListen(addr, listen string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("sidecar: metrics listen address %q: %w", addr, err)
	}
	var ip netip.Addr
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil || ip.Zone() != "" {
			return fmt.Errorf("sidecar: metrics listen address %q: the host must be an IP literal or empty (every interface), e.g. :9912", addr)
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("sidecar: metrics listen address %q: the port must be a number from 0 to 65535", addr)
	}
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return nil // CheckListen reports a bad listen address
	}
	if ln, err := strconv.ParseUint(lport, 10, 16); err != nil || n == 0 || n != ln {
		return nil
	}
	lip, _ := netip.ParseAddr(lhost)
	if host == "" || ip.IsUnspecified() || ip.Unmap() == lip.Unmap() {
		return fmt.Errorf("sidecar: metrics listen address %q overlaps the credentials listen address %q: give the metrics listener a port of its own (it must never serve credentials)", addr, listen)
	}
	return nil
}
