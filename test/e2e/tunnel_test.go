package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// TestUsageExample is the original usage example, with PROXY v1, v2 and
// without PROXY: the backend sees the sender's real address.
func TestUsageExample(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"TestClient1": ck})
	plain := startBackend(t, "plain", false)
	proxied := startBackend(t, "proxied", true)
	startClient(t, srv, "TestClient1", ck, map[string]string{"fooService": proxied.addr, "rawService": plain.addr})
	srv.waitState(t, "TestClient1", "ClientConnected", 30*time.Second)

	p1, p2, p3 := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	applied := srv.mustPutTunnels(t, []tunnel{
		{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenHostnameGlob: "*", ListenPort: p1, BackEndService: "fooService", ClientId: "TestClient1"},
		{HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2, ListenAddress: "127.0.0.1", ListenPort: p2, BackEndService: "fooService", ClientId: "TestClient1"},
		{ListenAddress: "127.0.0.1", ListenPort: p3, BackEndService: "rawService", ClientId: "TestClient1"},
	})
	if applied[0].HaProxyProxyProtocolVersion != 1 || applied[1].ListenHostnameGlob != "*" {
		t.Errorf("applied tunnels lack defaults: %+v", applied)
	}
	for _, port := range []int{p1, p2} {
		seen, from := mustExchange(t, tcpAddr(port), "proxied")
		if seen != from {
			t.Errorf("port %d: backend saw %s, sender was %s", port, seen, from)
		}
	}
	seen, from := mustExchange(t, tcpAddr(p3), "plain")
	if seen == from {
		t.Errorf("without PROXY the backend should see the client's own address, not the sender's %s", from)
	}
	plain.mu.Lock()
	heads := plain.heads
	plain.mu.Unlock()
	if len(heads) != 1 || !strings.HasPrefix(heads[0], "hello through") {
		t.Errorf("raw backend's first bytes: %q, want the sender's bytes only", heads)
	}

	// A large transfer both ways keeps every byte in order.
	const size = 8 << 20
	c, err := net.DialTimeout("tcp", tcpAddr(p3), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	start := time.Now()
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	line, rest, _ := strings.Cut(string(got), "\n")
	if !strings.HasPrefix(line, "plain ") || rest != string(payload) {
		t.Fatalf("8 MiB echo corrupted: got %d bytes", len(rest))
	}
	t.Logf("8 MiB echoed through the tunnel in %s (%.0f MB/s each way)", time.Since(start), float64(size)/time.Since(start).Seconds()/1e6)
}

// TestTwoClients: each client reaches only its own services.
func TestTwoClients(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	srv := startServer(t, map[string]wg.Key{"home-a": ka, "home-b": kb})
	ba, bb := startBackend(t, "backend-a", true), startBackend(t, "backend-b", true)
	startClient(t, srv, "home-a", ka, map[string]string{"web": ba.addr})
	startClient(t, srv, "home-b", kb, map[string]string{"web": bb.addr, "onlyB": bb.addr})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	pa, pb, pc := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{
		{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenPort: pa, BackEndService: "web", ClientId: "home-a"},
		{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenPort: pb, BackEndService: "web", ClientId: "home-b"},
		// home-a has no service "onlyB": the server cannot make it dial B's backend.
		{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenPort: pc, BackEndService: "onlyB", ClientId: "home-a"},
	})
	mustExchange(t, tcpAddr(pa), "backend-a")
	mustExchange(t, tcpAddr(pb), "backend-b")
	expectRefused(t, tcpAddr(pc), 3*time.Second)
	cs := srv.clients(t)
	if cs["home-a"].TunnelAddress == cs["home-b"].TunnelAddress || cs["home-a"].BytesIn == 0 || cs["home-a"].LastHandshake == nil {
		t.Errorf("GET /clients: %+v", cs)
	}
}

// TestMoveTunnel moves one tunnel to another client while a connection on
// an untouched tunnel keeps flowing; removing a tunnel closes its connections.
func TestMoveTunnel(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	srv := startServer(t, map[string]wg.Key{"home-a": ka, "home-b": kb})
	ba, bb := startBackend(t, "backend-a", false), startBackend(t, "backend-b", false)
	startClient(t, srv, "home-a", ka, map[string]string{"web": ba.addr, "ssh": ba.addr})
	startClient(t, srv, "home-b", kb, map[string]string{"web": bb.addr})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	steady, moving := freePort(t, "tcp"), freePort(t, "tcp")
	steadyT := tunnel{ListenAddress: "127.0.0.1", ListenPort: steady, BackEndService: "ssh", ClientId: "home-a"}
	movingT := tunnel{ListenAddress: "127.0.0.1", ListenPort: moving, BackEndService: "web", ClientId: "home-a"}
	srv.mustPutTunnels(t, []tunnel{steadyT, movingT})
	mustExchange(t, tcpAddr(moving), "backend-a")

	live := dialLive(t, tcpAddr(steady), "backend-a")
	live.roundTrip(t, "before")
	movingT.ClientId = "home-b"
	srv.mustPutTunnels(t, []tunnel{steadyT, movingT})
	mustExchange(t, tcpAddr(moving), "backend-b")
	live.roundTrip(t, "after the move")

	// Removing the steady tunnel closes its live connection and its port.
	srv.mustPutTunnels(t, []tunnel{movingT})
	live.expectClosed(t, 5*time.Second)
	if c, err := net.DialTimeout("tcp", tcpAddr(steady), time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still accepts after its tunnel was removed", steady)
	}
}

// liveConn is a long-lived connection through a tunnel.
type liveConn struct {
	c   net.Conn
	buf []byte
}

func dialLive(t testing.TB, addr, wantBackend string) *liveConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &liveConn{c: c, buf: make([]byte, 4096)}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var greeting []byte
	for !strings.Contains(string(greeting), "\n") {
		n, err := c.Read(l.buf)
		if err != nil {
			t.Fatalf("greeting via %s: %v", addr, err)
		}
		greeting = append(greeting, l.buf[:n]...)
	}
	if !strings.HasPrefix(string(greeting), wantBackend+" ") {
		t.Fatalf("via %s reached %q, want %s", addr, greeting, wantBackend)
	}
	return l
}

func (l *liveConn) roundTrip(t testing.TB, msg string) {
	t.Helper()
	l.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(l.c, msg); err != nil {
		t.Fatalf("live connection write (%s): %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(l.c, got); err != nil || string(got) != msg {
		t.Fatalf("live connection echo (%s): %q %v", msg, got, err)
	}
}

func (l *liveConn) expectClosed(t testing.TB, within time.Duration) {
	t.Helper()
	l.c.SetReadDeadline(time.Now().Add(within))
	_, err := l.c.Read(l.buf)
	if err == nil {
		t.Fatal("live connection still open")
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("live connection not closed within %s", within)
	}
}

// TestBadInput: every bad request gets a 4xx naming the problems, and the
// configuration in force stays exactly as it was.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck})
	be := startBackend(t, "backend", false)
	startClient(t, srv, "home", ck, map[string]string{"web": be.addr})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	good := []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}}
	srv.mustPutTunnels(t, good)
	before := configOf(srv.tunnels(t))
	live := dialLive(t, tcpAddr(port), "backend")

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	other := freePort(t, "tcp")
	ok := fmt.Sprintf(`{"ListenAddress":"127.0.0.1","ListenPort":%d,"BackEndService":"web","ClientId":"home"}`, other)
	cases := []struct {
		name, body string
		code       int
		mentions   []string
	}{
		{"malformed JSON", `[{"ListenPort":`, 400, []string{"offset 15: tunnels[0].ListenPort: unexpected end of input"}},
		{"not a list", `{"ListenPort":1}`, 400, []string{"offset 0: tunnels: want an array, got an object"}},
		{"null", `null`, 400, []string{"list"}},
		{"trailing data", `[] []`, 400, []string{"only one value is allowed"}},
		{"unknown field", fmt.Sprintf(`[{"ListenPort":%d,"BackEndService":"web","ClientId":"home","Bogus":1}]`, other), 400, []string{"Bogus"}},
		{"every problem at once", `[{"ListenAddress":"nowhere","ListenPort":0,"BackEndService":"","ClientId":""}]`, 400,
			[]string{"ListenAddress", "ListenPort", "BackEndService", "ClientId"}},
		{"unregistered client", fmt.Sprintf(`[{"ListenAddress":"127.0.0.1","ListenPort":%d,"BackEndService":"web","ClientId":"stranger"}]`, other), 400, []string{"stranger"}},
		{"duplicate tunnel", "[" + ok + "," + ok + "]", 400, []string{"tunnels[1]"}},
		{"bad glob", fmt.Sprintf(`[{"ListenAddress":"127.0.0.1","ListenPort":%d,"ListenHostnameGlob":"a*b","BackEndService":"web","ClientId":"home"}]`, other), 400, []string{"ListenHostnameGlob"}},
		{"PROXY version 3", fmt.Sprintf(`[{"HaProxyProxyProtocol":true,"HaProxyProxyProtocolVersion":3,"ListenAddress":"127.0.0.1","ListenPort":%d,"BackEndService":"web","ClientId":"home"}]`, other), 400, []string{"HaProxyProxyProtocolVersion"}},
		{"port in use", fmt.Sprintf(`[%s,{"ListenAddress":"127.0.0.1","ListenPort":%d,"BackEndService":"web","ClientId":"home"}]`, ok, busyPort), 409, []string{fmt.Sprint(busyPort)}},
	}
	for _, tc := range cases {
		code, body, err := srv.call("PUT", "/tunnels", tc.body)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if code != tc.code {
			t.Errorf("%s: status %d, want %d: %s", tc.name, code, tc.code, body)
		}
		var e struct {
			Error    string
			Problems []string
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
			t.Errorf("%s: error body %q is not a JSON error", tc.name, body)
		}
		for _, m := range tc.mentions {
			if !strings.Contains(string(body), m) {
				t.Errorf("%s: error %s does not mention %q", tc.name, body, m)
			}
		}
		if after := configOf(srv.tunnels(t)); !reflect.DeepEqual(after, before) {
			t.Fatalf("%s changed the tunnels: %+v", tc.name, after)
		}
		if c, err := net.DialTimeout("tcp", tcpAddr(other), 200*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("%s left port %d listening", tc.name, other)
		}
		live.roundTrip(t, "still alive after "+tc.name)
	}
	mustExchange(t, tcpAddr(port), "backend")

	// Bodies over the size limit are refused without being read whole.
	code, _, err := srv.call("PUT", "/tunnels", "["+strings.Repeat(" ", 2<<20)+"]")
	if err != nil || code != http.StatusBadRequest {
		t.Errorf("oversized body: %d %v", code, err)
	}
}

// TestFailuresClosePromptly: a refused backend, an unknown service and a
// disconnected client all close the public connection quickly.
func TestFailuresClosePromptly(t *testing.T) {
	t.Parallel()
	ck, gone := newKey(t), newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck, "never": gone})
	closedPort := freePort(t, "tcp") // nothing listens there
	startClient(t, srv, "home", ck, map[string]string{"dead": tcpAddr(closedPort)})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	p1, p2, p3 := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{
		{ListenAddress: "127.0.0.1", ListenPort: p1, BackEndService: "dead", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: p2, BackEndService: "nosuch", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: p3, BackEndService: "dead", ClientId: "never"},
	})
	expectRefused(t, tcpAddr(p1), 3*time.Second)
	expectRefused(t, tcpAddr(p2), 3*time.Second)
	expectRefused(t, tcpAddr(p3), 3*time.Second)
	if st := srv.clients(t)["never"]; st.CurrentState != "ClientUnknown" {
		t.Errorf("never-connected client state %q", st.CurrentState)
	}
}

// TestResetsPassThrough: a reset at either end reaches the other end as a
// reset, through both processes and the tunnel, not as a clean end of
// stream (which a backend would take for a complete request, and which
// for a tunneled connection first sends everything still buffered).
func TestResetsPassThrough(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck})
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	startClient(t, srv, "home", ck, map[string]string{"svc": backend.Addr().String()})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "svc", ClientId: "home"}})

	// open connects a user, sends a byte through and accepts its backend
	// connection.
	open := func() (user, back *net.TCPConn) {
		t.Helper()
		waitUntil(t, 10*time.Second, "the tunnel's port accepts", func() bool {
			c, err := net.DialTimeout("tcp", tcpAddr(port), time.Second)
			if err != nil {
				return false
			}
			user = c.(*net.TCPConn)
			return true
		})
		if _, err := user.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		backend.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		b, err := backend.Accept()
		if err != nil {
			t.Fatalf("backend accept: %v", err)
		}
		back = b.(*net.TCPConn)
		back.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(back, make([]byte, 1)); err != nil {
			t.Fatalf("backend read: %v", err)
		}
		return user, back
	}
	resetReaches := func(who string, from, to *net.TCPConn) {
		t.Helper()
		defer to.Close()
		from.SetLinger(0)
		from.Close()
		to.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := to.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s reset: the other end read %v, want ECONNRESET", who, err)
		}
	}
	user, back := open()
	resetReaches("backend", back, user)
	user, back = open()
	resetReaches("user", user, back)
}
