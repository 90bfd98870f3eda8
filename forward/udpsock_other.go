//go:build !linux

package forward

import (
	"net"
	"net/netip"
)

// Elsewhere replies leave from the address the kernel picks.
func enablePktinfo(*net.UDPConn) (ok, v6 bool) { return false, false }
func pktinfoDst([]byte) (netip.Addr, bool)     { return netip.Addr{}, false }
func pktinfoSrc(netip.Addr, bool) []byte       { return nil }
