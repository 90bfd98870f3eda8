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
// IPv6 addresses are checked as the IPv4 address they carry; an IPv6
// address of a transition form that embeds an IPv4 address (NAT64, 6to4,
// ISATAP, Teredo: see embeddedIPv4) is denied when that IPv4 address would
// be, by the built-in list, DenyCIDRs or the server's own. Documentation
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
	// Self, if set, is asked for the server's own addresses on every
	// Check, denied as LocalAddrs are: addresses come and go (IPv6 privacy
	// addresses, DHCP, a floating IP), so a list read at start goes stale.
	// SelfAddrs.Addrs is one, cached for a second.
	Self func() []netip.Addr
}

// builtinDeny is the default deny list, with the reason reported for each
// and its kind. The metadata address comes before its link-local range, so
// that it is named as what it is.
var builtinDeny = []struct {
	p      netip.Prefix
	reason string
	kind   DenyReason
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)", DenySpecial},
	{netip.MustParsePrefix("10.0.0.0/8"), "private (10.0.0.0/8)", DenyPrivate},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT (100.64.0.0/10)", DenyPrivate},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)", DenyLoopback},
	{netip.MustParsePrefix("169.254.169.254/32"), "cloud metadata service (169.254.169.254, link-local)", DenyMetadata},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)", DenyLinkLocal},
	{netip.MustParsePrefix("172.16.0.0/12"), "private (172.16.0.0/12)", DenyPrivate},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (192.168.0.0/16)", DenyPrivate},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)", DenySpecial},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast (240.0.0.0/4)", DenySpecial},
	{netip.MustParsePrefix("::/128"), "unspecified (::)", DenySpecial},
	{netip.MustParsePrefix("::1/128"), "loopback (::1)", DenyLoopback},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible (::/96)", DenySpecial},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "cloud metadata service (fd00:ec2::254, unique local)", DenyMetadata},
	{netip.MustParsePrefix("fc00::/7"), "unique local (fc00::/7)", DenyPrivate},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)", DenyLinkLocal},
	{netip.MustParsePrefix("fec0::/10"), "site-local (fec0::/10)", DenyPrivate},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)", DenySpecial},
}

// Transition forms: IPv6 addresses that stand for an IPv4 address, which
// a host or its network may turn into IPv4 packets to that address.
var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052 well-known prefix
	nat64LocalPrefix = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215 local-use prefix
	sixToFourPrefix  = netip.MustParsePrefix("2002::/16")      // RFC 3056 6to4
	teredoPrefix     = netip.MustParsePrefix("2001::/32")      // RFC 4380 Teredo
)

type embedded struct {
	form string
	v4   netip.Addr
}

// embeddedIPv4 lists the IPv4 addresses an IPv6 address a stands for:
//
//   - 6to4 (2002::/16, the IPv4 in bits 16-47) and ISATAP (an interface
//     ID of [02]00:5efe plus the IPv4, under any prefix): Linux's sit
//     driver turns both into IPv4 packets to that address, as it does
//     IPv4-compatible addresses (::/96, denied whole by the built-in list);
//   - NAT64 (64:ff9b::/96, and 64:ff9b:1::/48 at each RFC 6052 prefix
//     length that fits in it, 48, 56, 64 and 96, as its operator may use
//     any): a translator on the server's network (Jool, Tayga) sends to
//     the IPv4 address;
//   - Teredo (2001::/32: the Teredo server's IPv4 in bits 32-63, the
//     client's, inverted, in the last 32): a relay such as miredo on the
//     server would send to them.
//
// 6rd is not covered: its prefix and the bits it takes are the
// operator's own configuration (a 6rd site denies its prefix with
// Socks5DenyCIDRs). IPv4-mapped addresses are unmapped before any check.
func embeddedIPv4(a netip.Addr) []embedded {
	if !a.Is6() || a.Is4In6() {
		return nil
	}
	b := a.As16()
	v4 := func(o ...int) netip.Addr { return netip.AddrFrom4([4]byte{b[o[0]], b[o[1]], b[o[2]], b[o[3]]}) }
	var out []embedded
	switch {
	case nat64Prefix.Contains(a):
		out = append(out, embedded{"NAT64", v4(12, 13, 14, 15)})
	case nat64LocalPrefix.Contains(a):
		// RFC 6052 section 2.2: the IPv4 address around the u octet (8),
		// wherever the operator's prefix ends. Which it is cannot be told
		// from the address, so each is checked (conservatively: one
		// denied is enough), but for those in 0.0.0.0/8, which are what
		// the zero bits of a longer prefix read as, and which no
		// translator sends to.
		for _, c := range []netip.Addr{v4(6, 7, 9, 10), v4(7, 9, 10, 11), v4(9, 10, 11, 12), v4(12, 13, 14, 15)} {
			if c.As4()[0] != 0 {
				out = append(out, embedded{"NAT64", c})
			}
		}
	case sixToFourPrefix.Contains(a):
		out = append(out, embedded{"6to4", v4(2, 3, 4, 5)})
	case teredoPrefix.Contains(a):
		client := netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		out = append(out, embedded{"Teredo server", v4(4, 5, 6, 7)}, embedded{"Teredo client", client})
	}
	if b[8]|0x02 == 0x02 && b[9] == 0 && b[10] == 0x5e && b[11] == 0xfe {
		out = append(out, embedded{"ISATAP", v4(12, 13, 14, 15)})
	}
	return out
}

// Check reports whether the server may dial dst: nil if so, otherwise an
// *EgressDenial (wrapping ErrEgressDenied) that gives the reason.
func (p EgressPolicy) Check(dst netip.AddrPort) error {
	deny := func(kind DenyReason, format string, args ...any) error {
		return &EgressDenial{Reason: kind, msg: fmt.Sprintf("%v: %s: %s", ErrEgressDenied, dst, fmt.Sprintf(format, args...))}
	}
	a := dst.Addr().WithZone("").Unmap()
	port := dst.Port()
	switch {
	case !a.IsValid():
		return deny(DenyInvalid, "invalid address")
	case port == 0:
		return deny(DenyInvalid, "port 0")
	case slices.Contains(p.DenyPorts, port):
		return deny(DenyPortPolicy, "port %d is denied", port)
	case len(p.AllowPorts) > 0 && !slices.Contains(p.AllowPorts, port):
		return deny(DenyPortPolicy, "port %d is not allowed", port)
	}
	for _, ap := range p.DenyAddrPorts {
		ea := ap.Addr().WithZone("").Unmap()
		if (ap.Port() == 0 || ap.Port() == port) && (ea.IsUnspecified() || ea == a) {
			return deny(DenyAddrPort, "destination %s is denied", ap)
		}
	}
	for _, pr := range p.DenyCIDRs {
		if prefixContains(pr, a) {
			return deny(DenyRange, "in denied range %s", pr)
		}
	}
	if p.allowed(a) {
		return nil
	}
	// Loopback is one of the server's own addresses too, but "loopback"
	// says more.
	reason, kind := defaultDenied(a)
	if kind != DenyLoopback && p.own(a) {
		return deny(DenyServerAddress, "one of the server's own addresses")
	}
	if reason != "" {
		return deny(kind, "%s", reason)
	}
	for _, e := range embeddedIPv4(a) {
		if p.allowed(e.v4) {
			continue
		}
		reason, kind := defaultDenied(e.v4)
		if reason == "" && p.own(e.v4) {
			reason, kind = "one of the server's own addresses", DenyServerAddress
		}
		for _, pr := range p.DenyCIDRs {
			if reason == "" && prefixContains(pr, e.v4) {
				reason, kind = "in denied range "+pr.String(), DenyRange
			}
		}
		if reason != "" {
			return deny(kind, "%s address of %s, %s", e.form, e.v4, reason)
		}
	}
	if p.TunnelPrefix.IsValid() && prefixContains(p.TunnelPrefix, a) {
		return deny(DenyTunnel, "in the tunnel's range %s", p.TunnelPrefix)
	}
	return nil
}

// own reports whether a is one of the server's own addresses.
func (p EgressPolicy) own(a netip.Addr) bool {
	return slices.Contains(p.LocalAddrs, a) || p.Self != nil && slices.Contains(p.Self(), a)
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
// deny list, and its kind; "" if it is not.
func defaultDenied(a netip.Addr) (string, DenyReason) {
	for _, d := range builtinDeny {
		if d.p.Contains(a) {
			return d.reason, d.kind
		}
	}
	return "", DenyUnknown
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
