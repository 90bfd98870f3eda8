package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestNewConnectorValidates(t *testing.T) {
	_, err := NewConnector(ConnectorConfig{
		Services: map[string]string{
			"ok":       "127.0.0.1:1",
			"bad name": "127.0.0.1:1",
			"noport":   "127.0.0.1",
			"zero":     "127.0.0.1:0",
		},
	})
	if err == nil {
		t.Fatal("NewConnector accepted a bad configuration")
	}
	for _, want := range []string{"Logger", `"bad name"`, `"noport"`, `"zero"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), `"ok"`) {
		t.Errorf("error %q complains about the good service", err)
	}
	c, err := NewConnector(ConnectorConfig{Logger: ftLogger()})
	if err != nil {
		t.Fatalf("a Connector with no services: %v", err)
	}
	c.Close()
}

// ftAsk sends one request straight to a Connector and returns the conn
// and the status byte it answered.
func ftAsk(t *testing.T, addr string, r Request, then string) (*net.TCPConn, Status) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := WriteRequest(c, r); err != nil {
		t.Fatal(err)
	}
	if then != "" {
		c.Write([]byte(then))
	}
	return c.(*net.TCPConn), ftReadStatus(t, c)
}

func ftReadStatus(t *testing.T, c net.Conn) Status {
	t.Helper()
	var b [1]byte
	c.SetReadDeadline(time.Now().Add(ftPrompt))
	defer c.SetReadDeadline(time.Time{})
	if _, err := c.Read(b[:]); err != nil {
		t.Fatalf("no status byte: %v", err)
	}
	return Status(b[0])
}

func ftRequest(service string, backendVersion int) Request {
	return Request{
		Service:              service,
		Source:               netip.MustParseAddrPort("203.0.113.9:4444"),
		Destination:          netip.MustParseAddrPort("192.0.2.1:443"),
		BackendProxyProtocol: backendVersion,
	}
}

func TestConnectorServes(t *testing.T) {
	for v := 0; v <= 2; v++ {
		t.Run(fmt.Sprintf("backend PROXY v%d", v), func(t *testing.T) {
			ftCheckGoroutines(t)
			be := ftStartBackend(t, v != 0, "")
			conn, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
			// Bytes sent before the status arrives are delivered too.
			c, st := ftAsk(t, addr, ftRequest("echo", v), "early")
			if st != StatusOK {
				t.Fatalf("status %d, want OK", st)
			}
			ftReadExactly(t, c, []byte("early"))
			ftEcho(t, c, "later")
			seen := be.nextSeen(t)
			if v != 0 {
				if int(seen.header.Version) != v {
					t.Errorf("backend got PROXY v%d, want v%d", seen.header.Version, v)
				}
				src, dst, ok := seen.header.TCPAddrs()
				if !ok || src.String() != "203.0.113.9:4444" || dst.String() != "192.0.2.1:443" {
					t.Errorf("backend header %v -> %v, want the request's addresses", src, dst)
				}
			}
			if n := conn.Live(); n != 1 {
				t.Errorf("Live() = %d", n)
			}
			// Half-close reaches the backend through the proxyproto wrapper.
			c.Write([]byte("bye"))
			c.CloseWrite()
			rest, err := ftReadAll(t, c, ftPrompt)
			if err != nil || string(rest) != "bye" {
				t.Fatalf("after half-close read %q, %v", rest, err)
			}
			ftWaitFor(t, ftPrompt, "the connection to end", func() bool { return conn.Live() == 0 })
		})
	}
}

func TestConnectorRefusals(t *testing.T) {
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(ftFreePort(t)))
	cases := []struct {
		name string
		send func(c net.Conn)
		want Status
	}{
		{"unknown service", func(c net.Conn) { WriteRequest(c, ftRequest("nosuch", 0)) }, StatusUnknownService},
		{"backend refuses", func(c net.Conn) { WriteRequest(c, ftRequest("dead", 1)) }, StatusBackendUnreachable},
		{"garbage", func(c net.Conn) { c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n and some more bytes")) }, StatusBadRequest},
		{"peer half-closes without a request", func(c net.Conn) { c.(*net.TCPConn).CloseWrite() }, StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ftCheckGoroutines(t)
			be := ftStartBackend(t, false, "")
			conn, addr := ftStartConnector(t, map[string]string{"echo": be.addr, "dead": dead}, nil)
			c, err := net.DialTimeout("tcp", addr, ftPrompt)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			tc.send(c)
			if st := ftReadStatus(t, c); st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			if rest, _ := ftReadAll(t, c, ftPrompt); len(rest) != 0 {
				t.Errorf("after the refusal got %q", rest)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("refusal took %v", el)
			}
			ftWaitFor(t, ftPrompt, "no live connections", func() bool { return conn.Live() == 0 })
			select {
			case <-be.seen:
				t.Error("a refused request reached the backend")
			default:
			}
		})
	}
}

func TestConnectorHeaderTimeout(t *testing.T) {
	ftCheckGoroutines(t)
	const timeout = 200 * time.Millisecond
	conn, addr := ftStartConnector(t, map[string]string{"echo": "127.0.0.1:1"}, func(c *ConnectorConfig) { c.HeaderTimeout = timeout })
	c, err := net.DialTimeout("tcp", addr, ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if st := ftReadStatus(t, c); st != StatusBadRequest {
		t.Fatalf("status %d, want StatusBadRequest", st)
	}
	if el := time.Since(start); el < timeout*3/4 {
		t.Errorf("gave up after %v, before the header timeout", el)
	}
	ftExpectClosed(t, c, ftPrompt)
	ftWaitFor(t, ftPrompt, "no live connections", func() bool { return conn.Live() == 0 })
}

func TestConnectorDialTimeoutAndDialFunc(t *testing.T) {
	ftCheckGoroutines(t)
	const timeout = 200 * time.Millisecond
	var gotNet, gotAddr atomic.Value
	_, addr := ftStartConnector(t, map[string]string{"slow": "backend.invalid:8080"}, func(c *ConnectorConfig) {
		c.DialTimeout = timeout
		c.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
			gotNet.Store(network)
			gotAddr.Store(address)
			<-ctx.Done()
			return nil, ctx.Err()
		}
	})
	start := time.Now()
	c, st := ftAsk(t, addr, ftRequest("slow", 0), "")
	if st != StatusBackendUnreachable {
		t.Fatalf("status %d, want StatusBackendUnreachable", st)
	}
	if el := time.Since(start); el < timeout*3/4 {
		t.Errorf("gave up after %v, before the dial timeout", el)
	}
	if gotNet.Load() != "tcp" || gotAddr.Load() != "backend.invalid:8080" {
		t.Errorf("dialed %v %v, want tcp backend.invalid:8080", gotNet.Load(), gotAddr.Load())
	}
	ftExpectClosed(t, c, ftPrompt)
}

// The service map is copied: changing the caller's map afterwards has no
// effect.
func TestConnectorCopiesServices(t *testing.T) {
	ftCheckGoroutines(t)
	be := ftStartBackend(t, false, "")
	services := map[string]string{"echo": be.addr}
	_, addr := ftStartConnector(t, services, nil)
	services["late"] = be.addr
	delete(services, "echo")
	if _, st := ftAsk(t, addr, ftRequest("late", 0), ""); st != StatusUnknownService {
		t.Errorf("service added afterwards: status %d, want unknown", st)
	}
	if _, st := ftAsk(t, addr, ftRequest("echo", 0), ""); st != StatusOK {
		t.Errorf("service deleted afterwards: status %d, want OK", st)
	}
}

func TestConnectorClose(t *testing.T) {
	ftCheckGoroutines(t)
	be := ftStartBackend(t, false, "")
	conn, err := NewConnector(ConnectorConfig{Services: map[string]string{"echo": be.addr}, Logger: ftLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	served := make(chan error, 2)
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		go func() { served <- conn.Serve(ln) }()
	}
	c1, st := ftAsk(t, addrs[0], ftRequest("echo", 0), "")
	if st != StatusOK {
		t.Fatalf("status %d", st)
	}
	c2, st := ftAsk(t, addrs[1], ftRequest("echo", 0), "")
	if st != StatusOK {
		t.Fatalf("status %d", st)
	}
	ftEcho(t, c1, "a")
	ftEcho(t, c2, "b")
	ftWithin(t, ftPrompt, "Close", func() { err = conn.Close() })
	if err != nil {
		t.Fatal(err)
	}
	// Close waited for every connection.
	if n := conn.Live(); n != 0 {
		t.Errorf("Live() = %d after Close", n)
	}
	for range 2 {
		select {
		case err := <-served:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("Serve returned %v, want ErrClosed", err)
			}
		case <-time.After(ftPrompt):
			t.Fatal("Serve did not return after Close")
		}
	}
	ftExpectClosed(t, c1, ftPrompt)
	ftExpectClosed(t, c2, ftPrompt)
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, ftPrompt); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Close", a)
		}
	}
	if err := conn.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	// Serve after Close refuses and closes the listener it was given.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ftWithin(t, ftPrompt, "Serve after Close", func() { err = conn.Serve(ln) })
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close = %v, want ErrClosed", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener given to Serve after Close is still open: %v", err)
	}
}

func TestConnectorServeStopsWhenListenerCloses(t *testing.T) {
	ftCheckGoroutines(t)
	conn, err := NewConnector(ConnectorConfig{Logger: ftLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- conn.Serve(ln) }()
	// Wait until Serve is accepting before closing its listener.
	ftWaitFor(t, ftPrompt, "Serve to register its listener", func() bool {
		conn.life.mu.Lock()
		defer conn.life.mu.Unlock()
		return len(conn.life.listeners) == 1
	})
	ln.Close()
	select {
	case err := <-served:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve = %v, want net.ErrClosed", err)
		}
	case <-time.After(ftPrompt):
		t.Fatal("Serve did not return when its listener closed")
	}
	conn.life.mu.Lock()
	n := len(conn.life.listeners)
	conn.life.mu.Unlock()
	if n != 0 {
		t.Errorf("Connector still tracks %d listeners", n)
	}
}

// Close must not return while a connection is still being handled.
func TestConnectorCloseWaitsForHandlers(t *testing.T) {
	ftCheckGoroutines(t)
	var inDial, dialReturned atomic.Bool
	conn, addr := ftStartConnector(t, map[string]string{"slow": "backend.invalid:1"}, func(c *ConnectorConfig) {
		c.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			inDial.Store(true)
			<-ctx.Done()
			time.Sleep(100 * time.Millisecond) // a slow teardown, not a wait for readiness
			dialReturned.Store(true)
			return nil, ctx.Err()
		}
	})
	c, err := net.DialTimeout("tcp", addr, ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := WriteRequest(c, ftRequest("slow", 0)); err != nil {
		t.Fatal(err)
	}
	ftWaitFor(t, ftPrompt, "the backend dial to start", inDial.Load)
	ftWithin(t, ftPrompt, "Close", func() { conn.Close() })
	if !dialReturned.Load() {
		t.Fatal("Close returned before the connection handler finished")
	}
	if n := conn.Live(); n != 0 {
		t.Errorf("Live() = %d after Close", n)
	}
}

// Issue 15: the server decided what the backend believed. Now a source
// the client does not believe is refused whenever a header would be sent,
// and a service with its own choice gets that header whatever the server
// asks.
func TestConnectorProxyPolicy(t *testing.T) {
	req := func(src string, asked int) Request {
		r := ftRequest("echo", asked)
		r.Source = netip.MustParseAddrPort(src)
		return r
	}
	cases := []struct {
		name    string
		chosen  *int // the client's choice; nil for the "host:port" form
		allow   []netip.Prefix
		req     Request
		want    Status
		backend int // the PROXY version the backend must get
	}{
		// The string form: the server decides, but its sources are checked.
		{"as asked, public source", nil, nil, req("203.0.113.9:4444", 1), StatusOK, 1},
		{"as asked, loopback source", nil, nil, req("127.0.0.1:4444", 1), StatusRefused, 0},
		{"as asked, private source", nil, nil, req("192.168.1.10:4444", 2), StatusRefused, 0},
		{"as asked, link-local source", nil, nil, req("[fe80::1]:4444", 2), StatusRefused, 0},
		{"as asked, tunnel source", nil, nil, req("[fd74:6872:6573::1]:4444", 2), StatusRefused, 0},
		{"as asked, 6to4 of loopback", nil, nil, req("[2002:7f00:1::1]:4444", 2), StatusRefused, 0},
		{"as asked, allowed private source", nil, []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, req("192.168.1.10:4444", 1), StatusOK, 1},
		{"no header, any source", nil, nil, req("127.0.0.1:4444", 0), StatusOK, 0},
		// The object form: the client's choice.
		{"client says none, server asks v1", ptr(0), nil, req("203.0.113.9:4444", 1), StatusRefused, 0},
		{"client says none, server asks none", ptr(0), nil, req("127.0.0.1:4444", 0), StatusOK, 0},
		{"client wants v2, server asks none", ptr(2), nil, req("203.0.113.9:4444", 0), StatusOK, 2},
		{"client wants v1, server asks v2", ptr(1), nil, req("203.0.113.9:4444", 2), StatusOK, 1},
		{"client wants v2, loopback source", ptr(2), nil, req("127.0.0.1:4444", 0), StatusRefused, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ftCheckGoroutines(t)
			be := ftStartBackend(t, tc.backend != 0, "")
			conn, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, func(c *ConnectorConfig) {
				c.Sources = SourcePolicy{Allow: tc.allow, TunnelPrefix: netip.MustParsePrefix("fd74:6872:6573::/48")}
				if tc.chosen != nil {
					c.ServiceProxy = map[string]int{"echo": *tc.chosen}
				}
			})
			// A hostile server's own PROXY line at the start of the
			// stream: with a header of the client's, it is only data.
			const injected = "PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n"
			c, st := ftAsk(t, addr, tc.req, injected)
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			if st != StatusOK {
				if conn.Refused() != 1 {
					t.Errorf("Refused() = %d", conn.Refused())
				}
				select {
				case <-be.seen:
					t.Error("a refused request reached the backend")
				case <-time.After(50 * time.Millisecond):
				}
				return
			}
			seen := be.nextSeen(t)
			if tc.backend != 0 {
				if seen.header == nil || int(seen.header.Version) != tc.backend {
					t.Fatalf("backend header %+v, want v%d", seen.header, tc.backend)
				}
				src, _, _ := seen.header.TCPAddrs()
				if src.AddrPort() != tc.req.Source {
					t.Errorf("backend told of %v, want %v", src, tc.req.Source)
				}
				ftReadExactly(t, c, []byte(injected)) // echoed as data
			}
		})
	}
}

func ptr(v int) *int { return &v }

func TestNewConnectorValidatesServiceProxy(t *testing.T) {
	_, err := NewConnector(ConnectorConfig{Logger: ftLogger(), Services: map[string]string{"a": "127.0.0.1:1"},
		ServiceProxy: map[string]int{"a": 3, "ghost": 1}})
	if err == nil || !strings.Contains(err.Error(), `"a": PROXY version 3`) || !strings.Contains(err.Error(), `"ghost"`) {
		t.Fatalf("%v", err)
	}
}
