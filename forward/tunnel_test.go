package forward

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func goodTunnel() Tunnel {
	return Tunnel{ListenPort: 8080, BackEndService: "web", ClientId: "c1"}
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		name     string
		in, want Tunnel
	}{
		{"defaults",
			Tunnel{ListenPort: 80, BackEndService: "s", ClientId: "c"},
			Tunnel{Protocol: "tcp", ListenPort: 80, BackEndService: "s", ClientId: "c", ListenHostnameGlob: "*"}},
		{"glob lowercased",
			Tunnel{ListenHostnameGlob: "*.Example.COM"},
			Tunnel{Protocol: "tcp", ListenHostnameGlob: "*.example.com"}},
		{"PROXY defaults to v1",
			Tunnel{HaProxyProxyProtocol: true},
			Tunnel{Protocol: "tcp", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 1, ListenHostnameGlob: "*"}},
		{"PROXY v2 kept",
			Tunnel{HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2},
			Tunnel{Protocol: "tcp", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2, ListenHostnameGlob: "*"}},
		{"no PROXY: version left alone",
			Tunnel{HaProxyProxyProtocolVersion: 2},
			Tunnel{Protocol: "tcp", HaProxyProxyProtocolVersion: 2, ListenHostnameGlob: "*"}},
		{"IPv6 canonical",
			Tunnel{ListenAddress: "2001:DB8:0::1"},
			Tunnel{Protocol: "tcp", ListenAddress: "2001:db8::1", ListenHostnameGlob: "*"}},
		{"IPv6 loopback",
			Tunnel{ListenAddress: "0:0:0:0:0:0:0:1"},
			Tunnel{Protocol: "tcp", ListenAddress: "::1", ListenHostnameGlob: "*"}},
		{"IPv4 kept",
			Tunnel{ListenAddress: "127.0.0.1"},
			Tunnel{Protocol: "tcp", ListenAddress: "127.0.0.1", ListenHostnameGlob: "*"}},
		{"not an IP left for Problems",
			Tunnel{ListenAddress: "localhost"},
			Tunnel{Protocol: "tcp", ListenAddress: "localhost", ListenHostnameGlob: "*"}},
		{"UDP defaults",
			Tunnel{Protocol: "Udp", ListenPort: 53, HaProxyProxyProtocol: true},
			Tunnel{Protocol: "udp", ListenPort: 53, HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2, UdpProxyProtocolMode: "every",
				UdpSessionIdleSeconds: 120, UdpMaxSessions: 10000}},
		{"UDP kept",
			Tunnel{Protocol: "udp", ListenPort: 53, HaProxyProxyProtocol: true, UdpProxyProtocolMode: "FIRST", UdpSessionIdleSeconds: 30, UdpMaxSessions: 7},
			Tunnel{Protocol: "udp", ListenPort: 53, HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2, UdpProxyProtocolMode: "first",
				UdpSessionIdleSeconds: 30, UdpMaxSessions: 7}},
		{"output fields cleared",
			Tunnel{ActiveClientId: "a", ActiveSessions: new(int)},
			Tunnel{Protocol: "tcp", ListenHostnameGlob: "*"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := c.in
			got.Normalize()
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("Normalize(%+v)\n = %+v\nwant %+v", c.in, got, c.want)
			}
			again := got
			again.Normalize()
			if !reflect.DeepEqual(again, got) {
				t.Errorf("Normalize is not idempotent: %+v then %+v", got, again)
			}
		})
	}
}

func TestProblemsValid(t *testing.T) {
	valid := []Tunnel{
		goodTunnel(),
		{ListenPort: 1, BackEndService: "a", ClientId: "c"},
		{ListenPort: 65535, BackEndService: "a", ClientId: "c"},
		{ListenAddress: "127.0.0.1", ListenPort: 443, BackEndService: "web", ClientId: "c"},
		{ListenAddress: "::1", ListenPort: 443, BackEndService: "web", ClientId: "c"},
		{ListenPort: 443, ListenHostnameGlob: "*.example.com", BackEndService: "web", ClientId: "c"},
		{ListenPort: 443, ListenHostnameGlob: "a-b_c.example", BackEndService: "web", ClientId: "c"},
		{ListenPort: 443, BackEndService: "web", ClientId: "c", HaProxyProxyProtocol: true},
		{ListenPort: 443, BackEndService: "web", ClientId: "c", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2},
		{ListenPort: 443, BackEndService: strings.Repeat("s", MaxServiceNameLen), ClientId: "c"},
		{ListenPort: 443, BackEndService: "!~", ClientId: "c"},
	}
	for _, tu := range valid {
		tu.Normalize()
		if p := problemsOf(tu, "t"); len(p) != 0 {
			t.Errorf("%+v: unexpected problems %q", tu, p)
		}
	}
}

func TestProblemsEachField(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(*Tunnel)
		field string
	}{
		{"port 0", func(t *Tunnel) { t.ListenPort = 0 }, "ListenPort"},
		{"port -1", func(t *Tunnel) { t.ListenPort = -1 }, "ListenPort"},
		{"port 65536", func(t *Tunnel) { t.ListenPort = 65536 }, "ListenPort"},
		{"port 70000", func(t *Tunnel) { t.ListenPort = 70000 }, "ListenPort"},
		{"host name address", func(t *Tunnel) { t.ListenAddress = "localhost" }, "ListenAddress"},
		{"short IPv4", func(t *Tunnel) { t.ListenAddress = "1.2.3" }, "ListenAddress"},
		{"address with port", func(t *Tunnel) { t.ListenAddress = "127.0.0.1:80" }, "ListenAddress"},
		{"address with zone", func(t *Tunnel) { t.ListenAddress = "fe80::1%eth0" }, "ListenAddress"},
		{"bracketed IPv6", func(t *Tunnel) { t.ListenAddress = "[::1]" }, "ListenAddress"},
		{"glob in the middle", func(t *Tunnel) { t.ListenHostnameGlob = "a.*.com" }, "ListenHostnameGlob"},
		{"glob inside label", func(t *Tunnel) { t.ListenHostnameGlob = "a*b.com" }, "ListenHostnameGlob"},
		{"double glob", func(t *Tunnel) { t.ListenHostnameGlob = "*.*.com" }, "ListenHostnameGlob"},
		{"glob alone with dot", func(t *Tunnel) { t.ListenHostnameGlob = "*." }, "ListenHostnameGlob"},
		{"empty label", func(t *Tunnel) { t.ListenHostnameGlob = "a..com" }, "ListenHostnameGlob"},
		{"trailing dot", func(t *Tunnel) { t.ListenHostnameGlob = "a.com." }, "ListenHostnameGlob"},
		{"space in glob", func(t *Tunnel) { t.ListenHostnameGlob = "ex ample.com" }, "ListenHostnameGlob"},
		{"long label", func(t *Tunnel) { t.ListenHostnameGlob = strings.Repeat("a", 64) + ".com" }, "ListenHostnameGlob"},
		{"long name", func(t *Tunnel) { t.ListenHostnameGlob = strings.Repeat("abcdefghi.", 26) + "com" }, "ListenHostnameGlob"},
		{"empty service", func(t *Tunnel) { t.BackEndService = "" }, "BackEndService"},
		{"service with space", func(t *Tunnel) { t.BackEndService = "my web" }, "BackEndService"},
		{"service non-ASCII", func(t *Tunnel) { t.BackEndService = "wéb" }, "BackEndService"},
		{"service too long", func(t *Tunnel) { t.BackEndService = strings.Repeat("s", MaxServiceNameLen+1) }, "BackEndService"},
		{"empty ClientId", func(t *Tunnel) { t.ClientId = "" }, "ClientId"},
		{"blank ClientId", func(t *Tunnel) { t.ClientId = " \t" }, "ClientId"},
		{"version without PROXY", func(t *Tunnel) { t.HaProxyProxyProtocolVersion = 1 }, "HaProxyProxyProtocolVersion"},
		{"version 2 without PROXY", func(t *Tunnel) { t.HaProxyProxyProtocolVersion = 2 }, "HaProxyProxyProtocolVersion"},
		{"version 3", func(t *Tunnel) { t.HaProxyProxyProtocol = true; t.HaProxyProxyProtocolVersion = 3 }, "HaProxyProxyProtocolVersion"},
		{"version -1", func(t *Tunnel) { t.HaProxyProxyProtocol = true; t.HaProxyProxyProtocolVersion = -1 }, "HaProxyProxyProtocolVersion"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tu := goodTunnel()
			c.mod(&tu)
			tu.Normalize()
			p := problemsOf(tu, "tunnels[4]")
			if len(p) != 1 {
				t.Fatalf("%+v: problems %q, want exactly one", tu, p)
			}
			if prefix := "tunnels[4]." + c.field + ": "; !strings.HasPrefix(p[0], prefix) {
				t.Errorf("problem %q does not start with %q", p[0], prefix)
			}
		})
	}
}

func TestProblemsAllAtOnce(t *testing.T) {
	tu := Tunnel{ListenAddress: "nope", ListenPort: 0, ListenHostnameGlob: "bad glob", HaProxyProxyProtocolVersion: 2}
	tu.Normalize()
	p := problemsOf(tu, "x")
	fields := []string{"ListenAddress", "ListenPort", "ListenHostnameGlob", "BackEndService", "ClientId", "HaProxyProxyProtocolVersion"}
	if len(p) != len(fields) {
		t.Fatalf("problems %q, want one for each of %v", p, fields)
	}
	for i, f := range fields {
		if !strings.HasPrefix(p[i], "x."+f+": ") {
			t.Errorf("problem %d = %q, want it about %s", i, p[i], f)
		}
	}
}

func TestCheckServiceName(t *testing.T) {
	for _, ok := range []string{"a", "web", "my-svc_1.x", "!", "~", strings.Repeat("z", MaxServiceNameLen)} {
		if err := CheckServiceName(ok); err != nil {
			t.Errorf("CheckServiceName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", " ", "a b", "a\tb", "a\n", "\x7f", "é", strings.Repeat("z", MaxServiceNameLen+1)} {
		if err := CheckServiceName(bad); err == nil {
			t.Errorf("CheckServiceName(%q) accepted it", bad)
		}
	}
}

func TestCheckServiceAddr(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:80", "[::1]:8080", "localhost:1", "db.internal:65535"} {
		if err := CheckServiceAddr(ok); err != nil {
			t.Errorf("CheckServiceAddr(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "localhost", ":80", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:-1", "::1:80", "127.0.0.1:"} {
		if err := CheckServiceAddr(bad); err == nil {
			t.Errorf("CheckServiceAddr(%q) accepted it", bad)
		}
	}
}

func TestTunnelKeys(t *testing.T) {
	cases := []struct {
		tu         Tunnel
		listen     string
		route      string
		backendVer int
	}{
		{Tunnel{ListenPort: 80, ListenHostnameGlob: "*"}, ":80", ":80 *", 0},
		{Tunnel{ListenAddress: "127.0.0.1", ListenPort: 80, ListenHostnameGlob: "a.b"}, "127.0.0.1:80", "127.0.0.1:80 a.b", 0},
		{Tunnel{ListenAddress: "::1", ListenPort: 443, ListenHostnameGlob: "*", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2}, "[::1]:443", "[::1]:443 *", 2},
		{Tunnel{ListenPort: 1, HaProxyProxyProtocolVersion: 2}, ":1", ":1 ", 0},
	}
	for _, c := range cases {
		if got := c.tu.ListenKey(); got != c.listen {
			t.Errorf("%+v ListenKey = %q, want %q", c.tu, got, c.listen)
		}
		if got := c.tu.RouteKey(); got != c.route {
			t.Errorf("%+v RouteKey = %q, want %q", c.tu, got, c.route)
		}
		if got := c.tu.backendProxyVersion(); got != c.backendVer {
			t.Errorf("%+v backendProxyVersion = %d, want %d", c.tu, got, c.backendVer)
		}
	}
}

func TestCheckTunnelsValidNormalizesInPlace(t *testing.T) {
	ts := []Tunnel{
		{ListenPort: 80, BackEndService: "web", ClientId: "c1"},
		{ListenAddress: "0:0::1", ListenPort: 80, BackEndService: "web", ClientId: "c1", HaProxyProxyProtocol: true},
		// Same port on another address is another socket.
		{ListenAddress: "127.0.0.1", ListenPort: 80, BackEndService: "web", ClientId: "c2"},
		{ListenPort: 81, ListenHostnameGlob: "A.Example", BackEndService: "web", ClientId: "c2"},
	}
	if p := checkAll(ts); len(p) != 0 {
		t.Fatalf("problems %q", p)
	}
	if ts[0].ListenHostnameGlob != "*" || ts[1].ListenAddress != "::1" || ts[1].HaProxyProxyProtocolVersion != 1 || ts[3].ListenHostnameGlob != "a.example" {
		t.Errorf("not normalized in place: %+v", ts)
	}
	if p := checkAll(nil); len(p) != 0 {
		t.Errorf("empty list: %q", p)
	}
}

func TestCheckTunnelsDuplicates(t *testing.T) {
	t.Run("same route", func(t *testing.T) {
		// "" and "*" are the same glob once normalized; so are the two
		// spellings of ::1.
		ts := []Tunnel{
			{ListenAddress: "::1", ListenPort: 80, BackEndService: "a", ClientId: "c1"},
			{ListenAddress: "0::1", ListenPort: 80, ListenHostnameGlob: "*", BackEndService: "b", ClientId: "c2"},
		}
		p := checkAll(ts)
		if len(p) != 1 || !strings.HasPrefix(p[0], "tunnels[1]: claims [::1]:80") || !strings.Contains(p[0], "tunnels[0]") {
			t.Fatalf("problems %q", p)
		}
	})
	t.Run("same port, other glob", func(t *testing.T) {
		ts := []Tunnel{
			{ListenPort: 80, ListenHostnameGlob: "a.example", BackEndService: "a", ClientId: "c1"},
			{ListenPort: 80, ListenHostnameGlob: "b.example", BackEndService: "b", ClientId: "c1"},
		}
		// Hostname routing: several globs may share a port.
		if p := checkAll(ts); len(p) != 0 {
			t.Fatalf("problems %q", p)
		}
	})
	t.Run("three on one route", func(t *testing.T) {
		ts := []Tunnel{goodTunnel(), goodTunnel(), goodTunnel()}
		p := checkAll(ts)
		want := []string{
			`tunnels[1]: claims :8080 hostname "*" like tunnels[0]`,
			`tunnels[2]: claims :8080 hostname "*" like tunnels[0]`,
		}
		if !reflect.DeepEqual(p, want) {
			t.Fatalf("problems %q\nwant %q", p, want)
		}
	})
}

func TestCheckTunnelsReportsEverything(t *testing.T) {
	ts := []Tunnel{
		goodTunnel(),
		{ListenPort: 0, BackEndService: "web", ClientId: "c"},  // 1 problem
		{ListenPort: 9000, BackEndService: "", ClientId: ""},   // 2 problems
		{ListenPort: 9001, BackEndService: "w", ClientId: "c"}, // fine
		goodTunnel(), // duplicate of [0]
		{ListenPort: 9002, BackEndService: "w", ClientId: "c", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 3}, // 1 problem
		{ListenAddress: "bad", ListenPort: 9001, BackEndService: "w", ClientId: "c"},                                       // 1 problem
	}
	p := checkAll(ts)
	wantPrefixes := []string{
		"tunnels[1].ListenPort: ",
		"tunnels[2].BackEndService: ",
		"tunnels[2].ClientId: ",
		"tunnels[4]: claims ",
		"tunnels[5].HaProxyProxyProtocolVersion: ",
		"tunnels[6].ListenAddress: ",
	}
	if len(p) != len(wantPrefixes) {
		t.Fatalf("got %d problems, want %d:\n%s", len(p), len(wantPrefixes), strings.Join(p, "\n"))
	}
	for i, w := range wantPrefixes {
		if !strings.HasPrefix(p[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, p[i], w)
		}
	}
}

// lines is an unbounded ProblemSink for the tests.
type lines []string

func (l *lines) Addf(field, format string, args ...any) {
	*l = append(*l, field+": "+fmt.Sprintf(format, args...))
}

func problemsOf(t Tunnel, where string) []string {
	var l lines
	t.Check(where, &l)
	return l
}

func checkAll(ts []Tunnel) []string {
	var l lines
	CheckTunnels(ts, &l)
	return l
}

// countingSink counts the problems reported and keeps none.
type countingSink struct{ n int }

func (c *countingSink) Addf(string, string, ...any) { c.n++ }

// The red-team list of issue 15 (340,000 empty tunnels) is one problem,
// found before any tunnel is looked at; a list at the bound with every
// tunnel bad is checked whole, but the Gateway's error lists 20 problems
// and counts the rest.
func TestCheckTunnelsBounded(t *testing.T) {
	huge := make([]Tunnel, 340_000)
	var c countingSink
	CheckTunnels(huge, &c)
	if c.n != 1 || huge[0].ListenHostnameGlob != "" {
		t.Fatalf("%d problems for a list over MaxTunnels (or it was normalized)", c.n)
	}
	if p := checkAll(huge); len(p) != 1 || !strings.Contains(p[0], "at most 10000") {
		t.Fatalf("%q", p)
	}
	full := make([]Tunnel, MaxTunnels)
	c = countingSink{}
	CheckTunnels(full, &c)
	const want = 4*MaxTunnels - 1 // 3 fields each, and all but the first claim the same route
	if c.n != want {
		t.Fatalf("%d problems, want %d", c.n, want)
	}
	g := ftNewGateway(t, nil)
	_, err := g.gw.Prepare(full)
	if !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	errs := err.(interface{ Unwrap() []error }).Unwrap()
	if len(errs) != maxProblems+1 || errs[maxProblems].Error() != fmt.Sprintf("and %d more", want-maxProblems) {
		t.Fatalf("%d errors, the last %v", len(errs), errs[len(errs)-1])
	}
	if n := len(err.Error()); n > 4096 {
		t.Fatalf("the error is %d bytes", n)
	}
}
