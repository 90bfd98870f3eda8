package forward

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// rtHarness is a Gateway with clients whose "echo" services greet with the
// client's name, and a switchable connected set.
type rtHarness struct {
	*ftGateway
	mu        sync.Mutex
	connected map[string]bool
}

func newRtHarness(t *testing.T, clients ...string) *rtHarness {
	t.Helper()
	r := &rtHarness{connected: map[string]bool{}}
	r.ftGateway = ftNewGateway(t, func(c *GatewayConfig) {
		c.Connected = func(id string) bool { r.mu.Lock(); defer r.mu.Unlock(); return r.connected[id] }
		c.PeekTimeout = 300 * time.Millisecond
	})
	for _, id := range clients {
		be := ftStartBackend(t, false, id+"\n")
		_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
		r.addClient(id, addr)
		r.setConnected(id, true)
	}
	return r
}

func (r *rtHarness) setConnected(id string, up bool) {
	r.mu.Lock()
	r.connected[id] = up
	r.mu.Unlock()
}

// greeting sends first bytes on a new public connection and returns the
// banner of the backend it reached ("" if the connection was closed).
func greeting(t *testing.T, port int, first string) string {
	t.Helper()
	c := ftDialPublic(t, port)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if first != "" {
		io.WriteString(c, first)
	}
	b := make([]byte, 64)
	n, _ := c.Read(b)
	line, _, _ := strings.Cut(string(b[:n]), "\n")
	return line
}

func httpHead(host string) string { return "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }

func TestGatewayRoutesByHost(t *testing.T) {
	r := newRtHarness(t, "exact", "wild", "any")
	port := ftFreePort(t)
	tun := func(glob, client string) Tunnel {
		tt := ftTunnel(port, client)
		tt.ListenHostnameGlob = glob
		return tt
	}
	r.apply(t, tun("*", "any"), tun("*.example.com", "wild"), tun("www.example.com", "exact"))
	for _, tc := range []struct{ first, want string }{
		{httpHead("www.example.com"), "exact"},
		{httpHead("WWW.Example.com:8080"), "exact"},
		{httpHead("shop.example.com"), "wild"},
		{httpHead("example.com"), "any"},
		{"not http at all\n", "any"},
	} {
		if got := greeting(t, port, tc.first); got != tc.want {
			t.Errorf("%q reached %q, want %q", tc.first, got, tc.want)
		}
	}
	// Without "*", an unmatched name and a silent client are dropped; the
	// silent one only after the peek deadline.
	r.apply(t, tun("www.example.com", "exact"))
	if got := greeting(t, port, httpHead("other.test")); got != "" {
		t.Errorf("unmatched host reached %q", got)
	}
	start := time.Now()
	if got := greeting(t, port, ""); got != "" {
		t.Errorf("silent client reached %q", got)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("silent client dropped after %s, want about the 300 ms peek deadline", d)
	}
}

func TestGatewayFailover(t *testing.T) {
	r := newRtHarness(t, "a", "b")
	port := ftFreePort(t)
	tun := Tunnel{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "echo", ClientIds: []string{"a", "b"}}
	r.apply(t, tun)
	active := func() string { return r.gw.Tunnels()[0].ActiveClientId }
	if got := greeting(t, port, "x"); got != "a" || active() != "a" {
		t.Fatalf("reached %q, active %q; want a", got, active())
	}
	r.setConnected("a", false)
	if got := greeting(t, port, "x"); got != "b" || active() != "b" {
		t.Fatalf("a down: reached %q, active %q; want b", got, active())
	}
	r.setConnected("a", true)
	if got := greeting(t, port, "x"); got != "a" {
		t.Fatalf("a back: reached %q, want a", got)
	}
	// A client judged connected that does not answer is skipped too.
	r.mu.Lock()
	r.ftGateway.mu.Lock()
	r.clients["a"] = "127.0.0.1:1" // nothing listens there
	r.ftGateway.mu.Unlock()
	r.mu.Unlock()
	if got := greeting(t, port, "x"); got != "b" {
		t.Fatalf("a not answering: reached %q, want b", got)
	}
	r.setConnected("b", false)
	r.setConnected("a", false)
	if got := greeting(t, port, "x"); got != "" || active() != "" {
		t.Fatalf("nobody connected: reached %q, active %q", got, active())
	}
}

func TestTunnelClientIdsValidation(t *testing.T) {
	base := Tunnel{ListenAddress: "127.0.0.1", ListenPort: 80, BackEndService: "s"}
	for _, tc := range []struct {
		mod  func(*Tunnel)
		want string
	}{
		{func(t *Tunnel) { t.ClientId, t.ClientIds = "a", []string{"b"} }, "not both"},
		{func(t *Tunnel) { t.ClientIds = []string{"a", "a"} }, "twice"},
		{func(t *Tunnel) { t.ClientIds = []string{"a", ""} }, "ClientIds[1]"},
		{func(t *Tunnel) {}, "ClientId: is required"},
	} {
		tt := base
		tc.mod(&tt)
		tt.Normalize()
		if p := fmt.Sprint(tt.Problems("t")); !strings.Contains(p, tc.want) {
			t.Errorf("%+v: problems %s, want %q", tt, p, tc.want)
		}
	}
	ok := base
	ok.ClientIds = []string{"a", "b"}
	ok.ActiveClientId = "ignored on input"
	ok.Normalize()
	if p := ok.Problems("t"); len(p) != 0 || ok.ActiveClientId != "" || !reflect.DeepEqual(ok.Clients(), []string{"a", "b"}) {
		t.Errorf("valid failover tunnel: %v %+v", p, ok)
	}
}
