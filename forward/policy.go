package forward

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ErrEgressDenied classifies a destination that an EgressPolicy refuses.
// Errors returned by EgressPolicy.Check wrap it and say why.
var ErrEgressDenied = errors.New("egress denied")

// EgressPolicy decides which destinations the server will dial on behalf of
// a client's SOCKS5 egress. The zero value is usable: it lets every public
// address through on every port except 0, and applies the built-in deny list.
//
// Rules, in the order they are applied (the first that matches decides):
//
//  1. An invalid address or port 0 is denied.
//  2. A port in DenyPorts is denied.
//  3. If AllowPorts is not empty, a port not in it is denied.
//  4. A destination matching DenyAddrPorts is denied.
//  5. An address in DenyCIDRs is denied (explicit denials beat AllowCIDRs).
//  6. An address in AllowCIDRs is allowed.
//  7. An address in the built-in deny list or in TunnelPrefix is denied.
//  8. Anything else is allowed.
//
// AllowCIDRs therefore only makes exceptions to the built-in list (and to
// TunnelPrefix); it does not restrict egress to the listed ranges.
//
// The built-in list covers addresses that would let a client reach the
// server itself or its private surroundings rather than the internet:
// 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10 (CGNAT), 127.0.0.0/8,
// 169.254.0.0/16 (link-local, cloud metadata), 172.16.0.0/12,
// 192.168.0.0/16, 224.0.0.0/4 (multicast), 240.0.0.0/4 (reserved and
// 255.255.255.255), ::/96 (unspecified, loopback and the deprecated
// IPv4-compatible block), fc00::/7 (ULA), fe80::/10 (link-local),
// fec0::/10 (deprecated site-local) and ff00::/8 (multicast). IPv4-mapped
// IPv6 addresses are checked as the IPv4 address they carry, and so are
// addresses in the NAT64 well-known prefix 64:ff9b::/96. Documentation
// ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
// deliberately not on the list.
//
// Prefixes may be written in IPv4-mapped form (::ffff:10.0.0.0/104); they
// then match the plain IPv4 addresses too. Addresses are compared without
// their IPv6 zone.
type EgressPolicy struct {
	// AllowCIDRs are exceptions to the built-in deny list and TunnelPrefix.
	AllowCIDRs []netip.Prefix
	// DenyCIDRs are always denied, even if AllowCIDRs contains them.
	DenyCIDRs []netip.Prefix
	// AllowPorts, if not empty, are the only destination ports allowed.
	AllowPorts []uint16
	// DenyPorts are always denied.
	DenyPorts []uint16
	// DenyAddrPorts are single destinations that are always denied, such
	// as the server's own management port on each of its addresses. An
	// entry whose address is unspecified (0.0.0.0 or ::) denies its port
	// on every address, as a listener bound there is reachable on every
	// local address, including ones the server does not know it has (a
	// cloud provider's 1:1 NAT address). An entry with port 0 denies every
	// port of its address.
	DenyAddrPorts []netip.AddrPort
	// TunnelPrefix is the tunnel's own address range, denied like the
	// built-in list so that egress cannot be used to reach the server's or
	// other clients' tunnel addresses. The zero Prefix adds nothing.
	TunnelPrefix netip.Prefix
	// LocalAddrs are the server's own addresses: reaching them would be
	// loopback in disguise, past host firewalls. Denied like the built-in
	// ranges (AllowCIDRs may make an exception).
	LocalAddrs []netip.Addr
}

// builtinDeny is the default deny list, with the reason reported for each.
var builtinDeny = []struct {
	p      netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private (10.0.0.0/8)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT (100.64.0.0/10)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private (172.16.0.0/12)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (192.168.0.0/16)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast (240.0.0.0/4)"},
	{netip.MustParsePrefix("::/128"), "unspecified (::)"},
	{netip.MustParsePrefix("::1/128"), "loopback (::1)"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible (::/96)"},
	{netip.MustParsePrefix("fc00::/7"), "unique local (fc00::/7)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
	{netip.MustParsePrefix("fec0::/10"), "site-local (fec0::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
}

// nat64Prefix is the NAT64 well-known prefix (RFC 6052); an address in it
// stands for the IPv4 address in its last 32 bits.
var nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")

// Check reports whether the server may dial dst: nil if so, otherwise an
// error wrapping ErrEgressDenied that gives the reason.
func (p EgressPolicy) Check(dst netip.AddrPort) error {
	deny := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrEgressDenied, dst, fmt.Sprintf(format, args...))
	}
	a := dst.Addr().WithZone("").Unmap()
	port := dst.Port()
	switch {
	case !a.IsValid():
		return deny("invalid address")
	case port == 0:
		return deny("port 0")
	case slices.Contains(p.DenyPorts, port):
		return deny("port %d is denied", port)
	case len(p.AllowPorts) > 0 && !slices.Contains(p.AllowPorts, port):
		return deny("port %d is not allowed", port)
	}
	for _, ap := range p.DenyAddrPorts {
		ea := ap.Addr().WithZone("").Unmap()
		if (ap.Port() == 0 || ap.Port() == port) && (ea.IsUnspecified() || ea == a) {
			return deny("destination %s is denied", ap)
		}
	}
	for _, pr := range p.DenyCIDRs {
		if prefixContains(pr, a) {
			return deny("in denied range %s", pr)
		}
	}
	if p.allowed(a) {
		return nil
	}
	if slices.Contains(p.LocalAddrs, a) {
		return deny("one of the server's own addresses")
	}
	if reason := defaultDenied(a); reason != "" {
		return deny("%s", reason)
	}
	if a.Is6() && nat64Prefix.Contains(a) {
		b := a.As16()
		v4 := netip.AddrFrom4([4]byte(b[12:]))
		if !p.allowed(v4) {
			if reason := defaultDenied(v4); reason != "" {
				return deny("NAT64 address of %s, %s", v4, reason)
			}
		}
	}
	if p.TunnelPrefix.IsValid() && prefixContains(p.TunnelPrefix, a) {
		return deny("in the tunnel's range %s", p.TunnelPrefix)
	}
	return nil
}

func (p EgressPolicy) allowed(a netip.Addr) bool {
	for _, pr := range p.AllowCIDRs {
		if prefixContains(pr, a) {
			return true
		}
	}
	return false
}

// defaultDenied returns why a (unmapped, without zone) is on the built-in
// deny list, or "" if it is not.
func defaultDenied(a netip.Addr) string {
	for _, d := range builtinDeny {
		if d.p.Contains(a) {
			return d.reason
		}
	}
	return ""
}

// prefixContains is p.Contains(a) for an unmapped, zoneless a, where a
// prefix written in IPv4-mapped form also matches plain IPv4 addresses.
func prefixContains(p netip.Prefix, a netip.Addr) bool {
	if p.Contains(a) {
		return true
	}
	if a.Is4() && p.Addr().Is4In6() && p.Bits() >= 96 {
		return p.Contains(netip.AddrFrom16(a.As16()))
	}
	return false
}

// Validate reports malformed entries: invalid prefixes or destinations.
func (p EgressPolicy) Validate() error {
	var errs []error
	check := func(field string, ps []netip.Prefix) {
		for i, pr := range ps {
			if !pr.IsValid() {
				errs = append(errs, fmt.Errorf("forward: EgressPolicy.%s[%d] is not a valid prefix", field, i))
			}
		}
	}
	check("AllowCIDRs", p.AllowCIDRs)
	check("DenyCIDRs", p.DenyCIDRs)
	for i, ap := range p.DenyAddrPorts {
		if !ap.Addr().IsValid() {
			errs = append(errs, fmt.Errorf("forward: EgressPolicy.DenyAddrPorts[%d] has no valid address", i))
		}
	}
	if p.TunnelPrefix != (netip.Prefix{}) && !p.TunnelPrefix.IsValid() {
		errs = append(errs, errors.New("forward: EgressPolicy.TunnelPrefix is not a valid prefix"))
	}
	return errors.Join(errs...)
}

// ParsePrefixes parses CIDR prefixes for an EgressPolicy; a bare address
// stands for itself alone (/32 or /128). Host bits are cleared.
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	var errs []error
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				errs = append(errs, fmt.Errorf("invalid address or prefix %q", s))
				continue
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("invalid prefix %q", s))
			continue
		}
		out = append(out, pr.Masked())
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// ParsePorts parses port numbers and inclusive ranges ("443", "8000-8099")
// for an EgressPolicy. Port 0 is refused.
func ParsePorts(ss []string) ([]uint16, error) {
	var out []uint16
	var errs []error
	parse := func(s string) (uint16, bool) {
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
		return uint16(n), err == nil && n != 0
	}
	for _, s := range ss {
		lo, hi, isRange := strings.Cut(s, "-")
		from, ok1 := parse(lo)
		to, ok2 := from, true
		if isRange {
			to, ok2 = parse(hi)
		}
		if !ok1 || !ok2 || to < from {
			errs = append(errs, fmt.Errorf("invalid port or port range %q", s))
			continue
		}
		for p := int(from); p <= int(to); p++ {
			out = append(out, uint16(p))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
