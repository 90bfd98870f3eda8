package forward

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDenyReasons(t *testing.T) {
	own := netip.MustParseAddr("203.0.113.10")
	p := EgressPolicy{
		LocalAddrs:    []netip.Addr{netip.MustParseAddr("127.0.0.1"), own},
		DenyAddrPorts: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:9057")},
		DenyCIDRs:     mustPrefixes(t, "198.51.100.0/24"),
		DenyPorts:     []uint16{25},
		TunnelPrefix:  netip.MustParsePrefix("fd74:6872:6573::/48"),
	}
	for _, tc := range []struct {
		dst  string
		want DenyReason
		text string
	}{
		// Loopback is one of the server's own addresses, named as loopback.
		{"127.0.0.1:80", DenyLoopback, "loopback (127.0.0.0/8)"},
		{"[::1]:80", DenyLoopback, "loopback"},
		{"203.0.113.10:80", DenyServerAddress, "one of the server's own addresses"},
		{"[2002:cb00:710a::1]:80", DenyServerAddress, "6to4 address of 203.0.113.10, one of the server's own addresses"},
		{"10.1.2.3:80", DenyPrivate, "private"},
		{"100.64.0.1:80", DenyPrivate, "carrier-grade NAT"},
		{"[fd12::1]:80", DenyPrivate, "unique local"},
		{"169.254.169.254:80", DenyMetadata, "cloud metadata"},
		{"[fd00:ec2::254]:80", DenyMetadata, "cloud metadata"},
		{"169.254.1.1:80", DenyLinkLocal, "link-local"},
		{"192.0.2.1:9057", DenyAddrPort, "9057"},
		{"192.0.2.1:25", DenyPortPolicy, "port 25"},
		{"198.51.100.7:80", DenyRange, "198.51.100.0/24"},
		{"224.0.0.1:80", DenySpecial, "multicast"},
		{"[64:ff9b::127.0.0.1]:80", DenyLoopback, "NAT64 address of 127.0.0.1"},
	} {
		err := p.Check(netip.MustParseAddrPort(tc.dst))
		var d *EgressDenial
		if !errors.As(err, &d) || !errors.Is(err, ErrEgressDenied) {
			t.Errorf("%s: %v, want an EgressDenial", tc.dst, err)
			continue
		}
		if d.Reason != tc.want || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %s %q, want %s with %q", tc.dst, d.Reason, err, tc.want, tc.text)
		}
	}
	for r := DenyReason(0); r < denyReasons+2; r++ {
		if back := reasonOfPort(socksReasonPort(r)); r < denyReasons && back != r || r >= denyReasons && back != DenyUnknown {
			t.Errorf("reason %d comes back as %d", r, back)
		}
		if r.String() == "" || r.Explain() == "" {
			t.Errorf("reason %d has no words", r)
		}
	}
	if reasonOfPort(0) != DenyUnknown || reasonOfPort(1080) != DenyUnknown {
		t.Error("a port without the mark read as a reason")
	}
}

// TestRelayLogsRefusals: the relay logs a request the server's egress
// refused with the reason its reply carries, in plain words, and the
// destination; a refused connection by the destination gets its own words.
func TestRelayLogsRefusals(t *testing.T) {
	echo := startEgressEcho(t)
	e := newTestEgress(t, EgressConfig{Policy: EgressPolicy{DenyPorts: []uint16{25}, AllowCIDRs: mustPrefixes(t, "127.0.0.2/32")}})
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go e.ServeConn("home", c)
		}
	}()
	var logs lockedBuffer
	var d net.Dialer
	r, err := NewRelay(RelayConfig{
		Dial:   func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", up.Addr().String()) },
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(ln)
	request := func(req []byte) byte {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		rep, _ := socksHandshake(t, c, req)
		return rep
	}
	waitLine := func(parts ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, line := range strings.Split(logs.String(), "\n") {
				ok := true
				for _, p := range parts {
					ok = ok && strings.Contains(line, p)
				}
				if ok {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no line with %q in:\n%s", parts, logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	if rep := request(socksReqIP(1, echo.addr())); rep != socksNotAllowed {
		t.Fatalf("reply %#x", rep)
	}
	waitLine("level=INFO", "SOCKS5 connection refused by the server: the destination is a loopback address", "reason=loopback", "destination="+echo.addr().String())
	if rep := request(socksReqHost(1, "192.0.2.1", 25)); rep != socksNotAllowed {
		t.Fatalf("reply %#x", rep)
	}
	waitLine("port policy refuses that port", "reason=port_policy", "destination=192.0.2.1:25")
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 1)
	if rep := request(socksReqIP(1, closed)); rep != socksConnectionRefused {
		t.Fatalf("reply %#x", rep)
	}
	waitLine("SOCKS5 connection failed: the destination refused", "destination=127.0.0.2:1", "reply=5")
	if n := strings.Count(logs.String(), "SOCKS5 connection"); n != 3 {
		t.Errorf("%d lines for 3 failed requests:\n%s", n, logs.String())
	}
}
