package forward

import (
	"errors"
	"fmt"
	"net/netip"
)

// The client owns what its backends believe. The server says in each
// request which PROXY header it would like the backend to get and whom
// the connection is from; a relatively untrusted server could thus turn a
// backend's header off and write its own line in the stream instead, or
// claim the connection comes from 127.0.0.1. So the client decides:
//
//   - For a service with a choice of its own (ConnectorConfig.ServiceProxy,
//     the object form of the client's ServiceToLocalAddrMap), the header
//     is that choice whatever the server asks: a request asking for a
//     header where the client chose none is refused (the server's tunnel
//     and the backend disagree), and a header the client wants is sent
//     even if the server asks for none.
//   - For the others (the "host:port" form) the server's request decides,
//     as it always did.
//   - Whenever a header is sent, the source the server reports must be a
//     public address (SourcePolicy): loopback, private, link-local, the
//     tunnel's range and the like are refused unless allowed explicitly.

// ErrRefused: the client refused a request by its PROXY policy.
var ErrRefused = errors.New("client refused the request (its PROXY policy)")

// SourcePolicy decides which source addresses a server may report for a
// connection whose backend gets a PROXY header. The zero value allows
// public (global unicast) addresses only.
type SourcePolicy struct {
	// Allow are ranges allowed besides public addresses, for setups that
	// need them (a server on a private network, tests on loopback).
	Allow []netip.Prefix
	// TunnelPrefix is the tunnel's own range, refused like private ones.
	TunnelPrefix netip.Prefix
}

// Check reports why a is not a source a backend may be told of; nil if
// it may. The ranges refused are those SOCKS5 egress refuses by default
// (see EgressPolicy), the tunnel's range, and transition forms of them.
func (p SourcePolicy) Check(a netip.Addr) error {
	a = a.WithZone("").Unmap()
	for _, pr := range p.Allow {
		if prefixContains(pr, a) {
			return nil
		}
	}
	if !a.IsValid() {
		return errors.New("no valid source address")
	}
	if reason, _ := defaultDenied(a); reason != "" {
		return fmt.Errorf("source %s is %s", a, reason)
	}
	if p.TunnelPrefix.IsValid() && p.TunnelPrefix.Contains(a) {
		return fmt.Errorf("source %s is in the tunnel's range %s", a, p.TunnelPrefix)
	}
	for _, e := range embeddedIPv4(a) {
		if reason, _ := defaultDenied(e.v4); reason != "" {
			return fmt.Errorf("source %s is the %s address of %s, %s", a, e.form, e.v4, reason)
		}
	}
	return nil
}

// backendProxy decides the PROXY version (0 for none) a request's backend
// gets: chosen is the client's choice for the service (ok false when it
// made none), asked what the server asked for. The error wraps ErrRefused.
func backendProxy(chosen int, ok bool, asked int, src netip.AddrPort, sources SourcePolicy) (int, error) {
	v := asked
	if ok {
		if chosen == 0 && asked != 0 {
			return 0, fmt.Errorf("%w: the server asks for a PROXY v%d header, but this service's backend gets none (ProxyProtocol 0)", ErrRefused, asked)
		}
		v = chosen
	}
	if v == 0 {
		return 0, nil
	}
	if err := sources.Check(src.Addr()); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return v, nil
}
