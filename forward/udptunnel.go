package forward

import (
	"strings"
	"time"
)

// The UDP side of a Tunnel's configuration: defaults and checks. A UDP
// tunnel has no host name to route by, so it owns its address and port
// alone; its sessions, idle time and session cap are its own; and its PROXY
// header is always version 2, the only one with a datagram form.

func (t *Tunnel) normalizeUDP() {
	if t.UdpSessionIdleSeconds == 0 {
		t.UdpSessionIdleSeconds = DefaultUDPIdleSeconds
	}
	if t.UdpMaxSessions == 0 {
		t.UdpMaxSessions = DefaultUDPMaxSessions
	}
	t.UdpProxyProtocolMode = strings.ToLower(t.UdpProxyProtocolMode)
	if t.HaProxyProxyProtocol {
		if t.HaProxyProxyProtocolVersion == 0 {
			t.HaProxyProxyProtocolVersion = 2
		}
		if t.UdpProxyProtocolMode == "" {
			t.UdpProxyProtocolMode = UDPProxyEvery
		}
	}
}

func (t Tunnel) udpCheck(where string, sink ProblemSink) {
	add := func(field, format string, args ...any) { sink.Addf(where+"."+field, format, args...) }
	if t.ListenHostnameGlob != "" {
		add("ListenHostnameGlob", "does not apply to a udp tunnel (a datagram names no host); leave it out")
	}
	if t.UdpSessionIdleSeconds < 1 || t.UdpSessionIdleSeconds > MaxUDPIdleSeconds {
		add("UdpSessionIdleSeconds", "%d is not between 1 and %d", t.UdpSessionIdleSeconds, MaxUDPIdleSeconds)
	}
	if t.UdpMaxSessions < 1 || t.UdpMaxSessions > MaxUDPMaxSessions {
		add("UdpMaxSessions", "%d is not between 1 and %d", t.UdpMaxSessions, MaxUDPMaxSessions)
	}
	if t.HaProxyProxyProtocol && t.HaProxyProxyProtocolVersion == 1 {
		add("HaProxyProxyProtocolVersion", "1 has no datagram form; a udp tunnel sends PROXY v2 (leave it out or set 2)")
	}
	switch {
	case t.UdpProxyProtocolMode != "" && !t.HaProxyProxyProtocol:
		add("UdpProxyProtocolMode", "is set but HaProxyProxyProtocol is false")
	case t.UdpProxyProtocolMode != "" && t.UdpProxyProtocolMode != UDPProxyEvery && t.UdpProxyProtocolMode != UDPProxyFirst:
		add("UdpProxyProtocolMode", "%q is not %q or %q", t.UdpProxyProtocolMode, UDPProxyEvery, UDPProxyFirst)
	}
}

// udpIdle is a normalized UDP tunnel's idle timeout.
func (t Tunnel) udpIdle() time.Duration {
	return time.Duration(t.UdpSessionIdleSeconds) * time.Second
}

// udpProxy is the PROXY mode a normalized UDP tunnel asks the client for.
func (t Tunnel) udpProxy() udpProxyMode {
	switch {
	case !t.HaProxyProxyProtocol:
		return udpProxyNone
	case t.UdpProxyProtocolMode == UDPProxyFirst:
		return udpProxyFirst
	}
	return udpProxyEvery
}
