package forward

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustPrefixes(t *testing.T, ss ...string) []netip.Prefix {
	t.Helper()
	ps, err := ParsePrefixes(ss)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func checkPolicy(t *testing.T, p EgressPolicy, dst string, wantAllowed bool, wantReason string) {
	t.Helper()
	ap, err := netip.ParseAddrPort(dst)
	if err != nil {
		t.Fatalf("bad test destination %q: %v", dst, err)
	}
	err = p.Check(ap)
	switch {
	case wantAllowed && err != nil:
		t.Errorf("Check(%s) = %v, want allowed", dst, err)
	case !wantAllowed && err == nil:
		t.Errorf("Check(%s) allowed, want denied", dst)
	case !wantAllowed && !errors.Is(err, ErrEgressDenied):
		t.Errorf("Check(%s) = %v, does not wrap ErrEgressDenied", dst, err)
	case !wantAllowed && wantReason != "" && !strings.Contains(err.Error(), wantReason):
		t.Errorf("Check(%s) = %q, want reason containing %q", dst, err, wantReason)
	}
}

func TestPolicyDefaultDenied(t *testing.T) {
	var p EgressPolicy
	for _, tc := range []struct{ dst, reason string }{
		{"0.0.0.0:80", "0.0.0.0/8"},
		{"0.1.2.3:80", "0.0.0.0/8"},
		{"10.0.0.1:80", "10.0.0.0/8"},
		{"10.255.255.255:80", "10.0.0.0/8"},
		{"172.16.0.1:80", "172.16.0.0/12"},
		{"172.31.255.254:80", "172.16.0.0/12"},
		{"192.168.0.1:80", "192.168.0.0/16"},
		{"192.168.255.255:80", "192.168.0.0/16"},
		{"100.64.0.1:80", "100.64.0.0/10"},
		{"100.127.255.254:80", "100.64.0.0/10"},
		{"127.0.0.1:80", "loopback"},
		{"127.255.255.254:80", "loopback"},
		{"169.254.0.1:80", "link-local"},
		{"169.254.169.254:80", "link-local"},
		{"224.0.0.1:80", "multicast"},
		{"239.255.255.250:1900", "multicast"},
		{"240.0.0.1:80", "240.0.0.0/4"},
		{"255.255.255.255:80", "240.0.0.0/4"},
		{"[::]:80", "unspecified"},
		{"[::1]:80", "loopback"},
		{"[fe80::1]:80", "link-local"},
		{"[fe80::1%eth0]:80", "link-local"},
		{"[febf:ffff::1]:80", "link-local"},
		{"[fc00::1]:80", "unique local"},
		{"[fd12:3456:789a::1]:80", "unique local"},
		{"[fec0::1]:80", "site-local"},
		{"[ff02::1]:80", "multicast"},
		{"[ff0e::1]:80", "multicast"},
		{"[::7f00:1]:80", "IPv4-compatible"},
		// IPv4-mapped IPv6 is checked as IPv4.
		{"[::ffff:127.0.0.1]:80", "loopback"},
		{"[::ffff:10.1.2.3]:80", "10.0.0.0/8"},
		{"[::ffff:169.254.169.254]:80", "link-local"},
		{"[::ffff:0.0.0.0]:80", "0.0.0.0/8"},
		{"[::ffff:255.255.255.255]:80", "240.0.0.0/4"},
		// NAT64 well-known prefix carrying a denied IPv4 address.
		{"[64:ff9b::127.0.0.1]:80", "NAT64"},
		{"[64:ff9b::a9fe:a9fe]:80", "NAT64"},
		// The NAT64 local-use prefix (RFC 8215) at each RFC 6052 length.
		{"[64:ff9b:1:7f00:0:100::]:80", "NAT64 address of 127.0.0.1"},       // /48
		{"[64:ff9b:1:a9:fe:a9fe::]:80", "NAT64 address of 169.254.169.254"}, // /56
		{"[64:ff9b:1:0:a:0:0:1]:80", "NAT64 address of 10.0.0.0"},           // /64
		{"[64:ff9b:1::c0a8:101]:80", "NAT64 address of 192.168.1.1"},        // /96
		// 6to4 and ISATAP, which Linux's sit driver routes as IPv4.
		{"[2002:7f00:1::1]:80", "6to4 address of 127.0.0.1"},
		{"[2002:a9fe:a9fe:1::1]:80", "6to4 address of 169.254.169.254"},
		{"[2001:db8:1:2:0:5efe:a00:1]:80", "ISATAP address of 10.0.0.1"},
		{"[2001:db8:1:2:200:5efe:7f00:1]:80", "ISATAP address of 127.0.0.1"},
		// Teredo: the server's IPv4, and the client's (inverted).
		{"[2001:0:a00:1::1]:80", "Teredo server address of 10.0.0.1"},
		{"[2001:0:c000:201::80ff:fffe]:80", "Teredo client address of 127.0.0.1"},
	} {
		checkPolicy(t, p, tc.dst, false, tc.reason)
	}
}

func TestPolicyDefaultAllowed(t *testing.T) {
	var p EgressPolicy
	for _, dst := range []string{
		// Documentation ranges are deliberately allowed.
		"192.0.2.1:80", "198.51.100.7:443", "203.0.113.9:8080", "[2001:db8::1]:443",
		// Just outside denied ranges.
		"9.255.255.255:80", "11.0.0.0:80", "172.15.255.255:80", "172.32.0.0:80",
		"100.63.255.255:80", "100.128.0.0:80", "126.255.255.255:80", "128.0.0.0:80",
		"169.253.255.255:80", "169.255.0.0:80", "192.167.255.255:80", "192.169.0.0:80",
		"223.255.255.255:80", "1.0.0.0:80", "[2606:4700::1111]:443",
		"[::ffff:192.0.2.1]:80", "[64:ff9b::c000:201]:80", "[fbff:ffff::1]:80",
		// Transition forms of public IPv4 addresses.
		"[64:ff9b:1::c000:201]:80", "[2002:c000:201::1]:80", "[2001:db8::200:5efe:c000:201]:80",
		"[2001:0:c000:201::3fff:fdfe]:80",
	} {
		checkPolicy(t, p, dst, true, "")
	}
}

func TestPolicyAllowOverride(t *testing.T) {
	p := EgressPolicy{AllowCIDRs: mustPrefixes(t, "127.0.0.1", "10.0.0.0/8", "::ffff:192.168.1.0/120", "fd00::/8")}
	checkPolicy(t, p, "127.0.0.1:80", true, "")
	checkPolicy(t, p, "[::ffff:127.0.0.1]:80", true, "")
	checkPolicy(t, p, "127.0.0.2:80", false, "loopback")
	checkPolicy(t, p, "10.9.8.7:22", true, "")
	checkPolicy(t, p, "192.168.1.9:80", true, "") // mapped-form prefix matches plain IPv4
	checkPolicy(t, p, "192.168.2.9:80", false, "192.168.0.0/16")
	checkPolicy(t, p, "[fd00::5]:80", true, "")
	checkPolicy(t, p, "[fc00::5]:80", false, "unique local")
	checkPolicy(t, p, "[64:ff9b::10.0.0.1]:80", true, "") // embedded address allowed
	checkPolicy(t, p, "[2002:a00:1::1]:80", true, "")
	// The server's own address and DenyCIDRs, embedded.
	p = EgressPolicy{LocalAddrs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}, DenyCIDRs: mustPrefixes(t, "198.51.100.0/24")}
	checkPolicy(t, p, "[2002:cb00:710a::1]:80", false, "6to4 address of 203.0.113.10, one of the server's own addresses")
	checkPolicy(t, p, "[64:ff9b::c633:6401]:80", false, "NAT64 address of 198.51.100.1, in denied range 198.51.100.0/24")
	p = EgressPolicy{AllowCIDRs: mustPrefixes(t, "127.0.0.1", "10.0.0.0/8", "::ffff:192.168.1.0/120", "fd00::/8")}
	checkPolicy(t, p, "172.16.0.1:80", false, "172.16.0.0/12")
	// A mapped-form ::/0-like prefix must not swallow IPv4: ::/0 is IPv6 only.
	p = EgressPolicy{DenyCIDRs: mustPrefixes(t, "::/0")}
	checkPolicy(t, p, "192.0.2.1:80", true, "")
	checkPolicy(t, p, "[2001:db8::1]:80", false, "::/0")
}

func TestPolicyDenyCIDRs(t *testing.T) {
	p := EgressPolicy{
		AllowCIDRs: mustPrefixes(t, "10.0.0.0/8"),
		DenyCIDRs:  mustPrefixes(t, "10.1.0.0/16", "198.51.100.0/24", "2001:db8:bad::/48"),
	}
	checkPolicy(t, p, "10.2.0.1:80", true, "")
	checkPolicy(t, p, "10.1.0.1:80", false, "10.1.0.0/16") // explicit deny beats allow
	checkPolicy(t, p, "198.51.100.1:80", false, "198.51.100.0/24")
	checkPolicy(t, p, "[::ffff:198.51.100.1]:80", false, "198.51.100.0/24")
	checkPolicy(t, p, "[2001:db8:bad::1]:80", false, "2001:db8:bad::/48")
	checkPolicy(t, p, "[2001:db8:900d::1]:80", true, "")
}

func TestPolicyTunnelPrefix(t *testing.T) {
	p := EgressPolicy{TunnelPrefix: netip.MustParsePrefix("203.0.113.0/24")}
	checkPolicy(t, p, "203.0.113.1:80", false, "tunnel")
	checkPolicy(t, p, "[::ffff:203.0.113.1]:80", false, "tunnel")
	checkPolicy(t, p, "198.51.100.1:80", true, "")
	p.AllowCIDRs = mustPrefixes(t, "203.0.113.7")
	checkPolicy(t, p, "203.0.113.7:80", true, "")
	checkPolicy(t, p, "203.0.113.8:80", false, "tunnel")
	p = EgressPolicy{TunnelPrefix: netip.MustParsePrefix("fd7a:115c::/48")}
	checkPolicy(t, p, "[fd7a:115c::1]:80", false, "")
}

func TestPolicyPorts(t *testing.T) {
	p := EgressPolicy{AllowPorts: []uint16{80, 443, 25}, DenyPorts: []uint16{25}}
	checkPolicy(t, p, "192.0.2.1:443", true, "")
	checkPolicy(t, p, "192.0.2.1:80", true, "")
	checkPolicy(t, p, "192.0.2.1:22", false, "port 22 is not allowed")
	checkPolicy(t, p, "192.0.2.1:25", false, "port 25 is denied") // deny beats allow
	// Port checks come before address allowances.
	p.AllowCIDRs = mustPrefixes(t, "127.0.0.0/8")
	checkPolicy(t, p, "127.0.0.1:22", false, "port 22")
	p = EgressPolicy{DenyPorts: []uint16{25, 465}}
	checkPolicy(t, p, "192.0.2.1:25", false, "port 25")
	checkPolicy(t, p, "[2001:db8::1]:465", false, "port 465")
	checkPolicy(t, p, "192.0.2.1:587", true, "")
	checkPolicy(t, p, "192.0.2.1:0", false, "port 0")
}

func TestPolicyDenyAddrPorts(t *testing.T) {
	p := EgressPolicy{
		AllowCIDRs: mustPrefixes(t, "127.0.0.0/8"),
		DenyAddrPorts: []netip.AddrPort{
			netip.MustParseAddrPort("203.0.113.5:8443"),
			netip.MustParseAddrPort("[::ffff:127.0.0.1]:9000"),
			netip.MustParseAddrPort("[::]:7000"),
			netip.MustParseAddrPort("198.51.100.9:0"),
		},
	}
	checkPolicy(t, p, "203.0.113.5:8443", false, "203.0.113.5:8443")
	checkPolicy(t, p, "[::ffff:203.0.113.5]:8443", false, "")
	checkPolicy(t, p, "203.0.113.5:443", true, "")
	checkPolicy(t, p, "203.0.113.6:8443", true, "")
	checkPolicy(t, p, "127.0.0.1:9000", false, "") // beats AllowCIDRs
	checkPolicy(t, p, "127.0.0.1:9001", true, "")
	checkPolicy(t, p, "192.0.2.1:7000", false, "") // unspecified: every address
	checkPolicy(t, p, "[2001:db8::1]:7000", false, "")
	checkPolicy(t, p, "198.51.100.9:1", false, "") // port 0: every port
	checkPolicy(t, p, "198.51.100.10:1", true, "")
}

func TestPolicyInvalid(t *testing.T) {
	var p EgressPolicy
	if err := p.Check(netip.AddrPort{}); !errors.Is(err, ErrEgressDenied) {
		t.Errorf("Check(zero) = %v, want ErrEgressDenied", err)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("zero policy: Validate() = %v", err)
	}
	bad := []EgressPolicy{
		{AllowCIDRs: []netip.Prefix{{}}},
		{DenyCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), {}}},
		{DenyAddrPorts: []netip.AddrPort{{}}},
	}
	for i, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("bad policy %d: Validate() = nil", i)
		}
		if _, err := NewEgress(EgressConfig{Policy: p}); err == nil {
			t.Errorf("bad policy %d: NewEgress succeeded", i)
		}
	}
}

func TestPolicyParseHelpers(t *testing.T) {
	ps, err := ParsePrefixes([]string{"10.1.2.3/8", " 192.0.2.1 ", "2001:db8::1", "::ffff:10.0.0.0/104"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.1/32", "2001:db8::1/128", "::ffff:10.0.0.0/104"}
	for i, p := range ps {
		if p.String() != want[i] {
			t.Errorf("prefix %d = %s, want %s", i, p, want[i])
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "fe80::1%eth0", "example.com"} {
		if _, err := ParsePrefixes([]string{bad}); err == nil {
			t.Errorf("ParsePrefixes(%q) succeeded", bad)
		}
	}
	ports, err := ParsePorts([]string{"443", "8000-8002", "80", "443"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ports, []uint16{80, 443, 8000, 8001, 8002}) {
		t.Errorf("ParsePorts = %v", ports)
	}
	for _, bad := range []string{"0", "65536", "10-5", "x", "1-", ""} {
		if _, err := ParsePorts([]string{bad}); err == nil {
			t.Errorf("ParsePorts(%q) succeeded", bad)
		}
	}
}

func TestPolicyLocalAddrs(t *testing.T) {
	own := netip.MustParseAddr("203.0.113.10")
	p := EgressPolicy{LocalAddrs: []netip.Addr{own}}
	if err := p.Check(netip.AddrPortFrom(own, 5432)); !errors.Is(err, ErrEgressDenied) {
		t.Errorf("the server's own address: %v", err)
	}
	if err := p.Check(netip.MustParseAddrPort("[::ffff:203.0.113.10]:5432")); !errors.Is(err, ErrEgressDenied) {
		t.Errorf("the server's own address, IPv4-mapped: %v", err)
	}
	if err := p.Check(netip.MustParseAddrPort("203.0.113.11:5432")); err != nil {
		t.Errorf("a neighbour: %v", err)
	}
	p.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.10/32")}
	if err := p.Check(netip.AddrPortFrom(own, 5432)); err != nil {
		t.Errorf("explicitly allowed own address: %v", err)
	}
}

// Issue 15: an address the server gains after start is its own too. The
// policy asks Self on every check; SelfAddrs reads again after MaxAge.
func TestPolicySelfAddrsFollowChanges(t *testing.T) {
	var mu sync.Mutex
	have := []netip.Addr{netip.MustParseAddr("203.0.113.10")}
	reads := 0
	now := time.Unix(1000, 0)
	self := &SelfAddrs{Read: func() ([]netip.Addr, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return slices.Clone(have), nil
	}, now: func() time.Time { return now }}
	p := EgressPolicy{Self: self.Addrs}
	added := netip.MustParseAddrPort("[2001:db8::abcd]:22")
	if err := p.Check(added); err != nil {
		t.Fatalf("before the address is added: %v", err)
	}
	mu.Lock()
	have = append(have, added.Addr())
	mu.Unlock()
	for range 100 {
		p.Check(added) // within MaxAge: the cached reading
	}
	if reads != 1 {
		t.Fatalf("%d readings within MaxAge, want 1", reads)
	}
	now = now.Add(DefaultSelfAddrsMaxAge)
	if err := p.Check(added); !errors.Is(err, ErrEgressDenied) || !strings.Contains(err.Error(), "server's own") {
		t.Fatalf("an address added after start: %v", err)
	}
	// A failed reading keeps the last good one.
	self.Read = func() ([]netip.Addr, error) { return nil, errors.New("netlink down") }
	now = now.Add(DefaultSelfAddrsMaxAge)
	if err := p.Check(added); !errors.Is(err, ErrEgressDenied) {
		t.Fatalf("after a failed reading: %v", err)
	}
}
