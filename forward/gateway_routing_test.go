package forward

import (
	"context"
	"fmt"
	"io"
	"net"
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
		c.Directory = r.directory
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

// directory lists the harness's clients, connected as setConnected says.
func (r *rtHarness) directory() *Directory {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ftGateway.directory(func(id string) bool { return r.connected[id] })
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
		if p := fmt.Sprint(problemsOf(tt, "t")); !strings.Contains(p, tc.want) {
			t.Errorf("%+v: problems %s, want %q", tt, p, tc.want)
		}
	}
	ok := base
	ok.ClientIds = []string{"a", "b"}
	ok.ActiveClientId = "ignored on input"
	ok.Normalize()
	if p := problemsOf(ok, "t"); len(p) != 0 || ok.ActiveClientId != "" || !reflect.DeepEqual(ok.Clients(), []string{"a", "b"}) {
		t.Errorf("valid failover tunnel: %v %+v", p, ok)
	}
}

type countingObserver struct {
	mu            sync.Mutex
	in, out, done int64
}

func (o *countingObserver) In(n int64)  { o.mu.Lock(); o.in += n; o.mu.Unlock() }
func (o *countingObserver) Out(n int64) { o.mu.Lock(); o.out += n; o.mu.Unlock() }
func (o *countingObserver) Done()       { o.mu.Lock(); o.done++; o.mu.Unlock() }

func TestGatewayObserveAndRejected(t *testing.T) {
	obs := &countingObserver{}
	var mu sync.Mutex
	rejected := map[string]int{}
	r := &rtHarness{connected: map[string]bool{}}
	r.ftGateway = ftNewGateway(t, func(c *GatewayConfig) {
		c.Directory = r.directory
		c.PeekTimeout = 200 * time.Millisecond
		c.Observe = func(tun Tunnel, client string) ConnObserver {
			if client != "a" || tun.BackEndService != "echo" {
				t.Errorf("Observe(%+v, %q)", tun, client)
			}
			return obs
		}
		c.Rejected = func(reason string) { mu.Lock(); rejected[reason]++; mu.Unlock() }
	})
	be := ftStartBackend(t, false, "")
	_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	r.addClient("a", addr)
	r.setConnected("a", true)
	port, named := ftFreePort(t), ftFreePort(t)
	tn := ftTunnel(named, "a")
	tn.ListenHostnameGlob = "only.test"
	r.apply(t, ftTunnel(port, "a"), tn)

	c := ftDialPublic(t, port)
	msg := strings.Repeat("x", 100000)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() { io.WriteString(c, msg); c.CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != len(msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	c.Close()
	ftWaitFor(t, 5*time.Second, "observer done", func() bool { obs.mu.Lock(); defer obs.mu.Unlock(); return obs.done == 1 })
	if obs.in != int64(len(msg)) || obs.out != int64(len(msg)) {
		t.Errorf("observed in %d out %d, want %d each", obs.in, obs.out, len(msg))
	}

	greeting(t, named, httpHead("other.test")) // no route
	greeting(t, named, "")                     // silent: no host name
	r.setConnected("a", false)
	greeting(t, port, "x") // nobody connected
	ftWaitFor(t, 5*time.Second, "rejections counted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return rejected[RejectNoRoute] == 1 && rejected[RejectNoHostname] == 1 && rejected[RejectNoClient] == 1
	})
}

func TestGatewayShutdownDrains(t *testing.T) {
	r := newRtHarness(t, "a")
	port := ftFreePort(t)
	r.apply(t, ftTunnel(port, "a"))
	inflight := ftDialPublic(t, port)
	ftReadExactly(t, inflight, []byte("a\n"))

	done := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- r.gw.Shutdown(ctx)
	}()
	ftWaitFor(t, 5*time.Second, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// The in-flight connection still works, then ends by itself.
	ftEcho(t, inflight, "still here")
	inflight.CloseWrite()
	io.ReadAll(inflight)
	select {
	case cut := <-done:
		if cut != 0 {
			t.Errorf("Shutdown cut %d connections that had finished", cut)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
	if _, err := r.gw.Apply([]Tunnel{ftTunnel(port, "a")}); err == nil {
		t.Error("Apply accepted after Shutdown")
	}
}

func TestGatewayShutdownCutsAfterGrace(t *testing.T) {
	r := newRtHarness(t, "a")
	port := ftFreePort(t)
	r.apply(t, ftTunnel(port, "a"))
	stuck := ftDialPublic(t, port)
	ftReadExactly(t, stuck, []byte("a\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if cut := r.gw.Shutdown(ctx); cut != 1 {
		t.Errorf("Shutdown cut %d, want 1", cut)
	}
	stuck.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := stuck.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection after grace: %v", err)
	}
}
