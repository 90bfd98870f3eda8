package forward

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// egressWait bounds every wait in these tests; nothing waits for it unless
// something is broken.
const egressWait = 5 * time.Second

// egressEcho is a loopback echo service that records who connected.
type egressEcho struct {
	ln       net.Listener
	accepted atomic.Int32
	from     chan netip.AddrPort
	wg       sync.WaitGroup
}

func startEgressEcho(t *testing.T) *egressEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &egressEcho{ln: ln, from: make(chan netip.AddrPort, 64)}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			select {
			case e.from <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default:
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(egressWait))
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

func (e *egressEcho) addr() netip.AddrPort { return e.ln.Addr().(*net.TCPAddr).AddrPort() }

// newTestEgress builds an Egress with a debug logger to the test log.
func newTestEgress(t *testing.T, cfg EgressConfig) *Egress {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e, err := NewEgress(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// serveEgress connects a loopback TCP pair and runs ServeConn on the server
// end (passed through wrap if not nil). It returns the client end and a
// channel that gets ServeConn's result.
func serveEgress(t *testing.T, e *Egress, clientID string, wrap func(net.Conn) net.Conn) (net.Conn, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		server = wrap(server)
	}
	done := make(chan error, 1)
	go func() { done <- e.ServeConn(clientID, server) }()
	_ = client.SetDeadline(time.Now().Add(egressWait))
	return client, done
}

func waitServe(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(egressWait):
		t.Fatal("ServeConn did not return")
		return nil
	}
}

// SOCKS5 request builders.

func socksReqIP(cmd byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	b := []byte{5, cmd, 0}
	if a.Is4() {
		b = append(b, 1)
	} else {
		b = append(b, 4)
	}
	b = append(b, a.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func socksReqHost(cmd byte, host string, port uint16) []byte {
	b := append([]byte{5, cmd, 0, 3, byte(len(host))}, host...)
	return binary.BigEndian.AppendUint16(b, port)
}

// socksHandshake sends the greeting and req and returns the reply code and
// bind address. It fails the test on protocol errors.
func socksHandshake(t *testing.T, c net.Conn, req []byte) (byte, netip.AddrPort) {
	t.Helper()
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		t.Fatal(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		t.Fatalf("reading method reply: %v", err)
	}
	if m != [2]byte{5, 0} {
		t.Fatalf("method reply %v", m)
	}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	return readSocksReply(t, c)
}

func readSocksReply(t *testing.T, c net.Conn) (byte, netip.AddrPort) {
	t.Helper()
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	if h[0] != 5 || h[2] != 0 {
		t.Fatalf("bad reply header %v", h)
	}
	var addr []byte
	switch h[3] {
	case 1:
		addr = make([]byte, 4)
	case 4:
		addr = make([]byte, 16)
	default:
		t.Fatalf("reply address type %d", h[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(c, addr); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, port[:]); err != nil {
		t.Fatal(err)
	}
	a, _ := netip.AddrFromSlice(addr)
	return h[1], netip.AddrPortFrom(a, binary.BigEndian.Uint16(port[:]))
}

// expectClosed checks that the server closes c (EOF or reset) without
// sending anything more, then closes c as a client would.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(egressWait))
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 || err == nil {
		t.Fatalf("read %d bytes (%v), want the connection closed", n, err)
	}
	if isTimeout(err) {
		t.Fatalf("connection not closed: %v", err)
	}
}

func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

var allowLoopback4 = EgressPolicy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}

func TestEgressConnectByIP(t *testing.T) {
	echo := startEgressEcho(t)
	e := newTestEgress(t, EgressConfig{Policy: allowLoopback4})
	c, done := serveEgress(t, e, "alice", nil)
	rep, bnd := socksHandshake(t, c, socksReqIP(1, echo.addr()))
	if rep != 0 {
		t.Fatalf("reply %#x, want success", rep)
	}
	if bnd.Addr() != netip.MustParseAddr("127.0.0.1") || bnd.Port() == 0 {
		t.Errorf("bind address %s, want 127.0.0.1:nonzero", bnd)
	}
	echoOnce(t, c, "hello through egress")
	select {
	case from := <-echo.from:
		if from != bnd {
			t.Errorf("echo saw a connection from %s, reply said %s", from, bnd)
		}
	case <-time.After(egressWait):
		t.Fatal("echo service saw no connection")
	}
	if e.Live() != 1 {
		t.Errorf("Live() = %d, want 1", e.Live())
	}
	c.(*net.TCPConn).CloseWrite()
	expectClosed(t, c)
	if err := waitServe(t, done); err != nil {
		t.Errorf("ServeConn = %v, want nil", err)
	}
}

func TestEgressPipelinedRequestAndData(t *testing.T) {
	echo := startEgressEcho(t)
	e := newTestEgress(t, EgressConfig{Policy: allowLoopback4})
	c, done := serveEgress(t, e, "alice", nil)
	// Greeting, request and the first payload bytes in one write: nothing
	// after the request may be lost to the handshake parser.
	msg := append([]byte{5, 1, 0}, socksReqIP(1, echo.addr())...)
	msg = append(msg, "early bytes"...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0} {
		t.Fatalf("method reply %v, %v", m, err)
	}
	if rep, _ := readSocksReply(t, c); rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	got := make([]byte, len("early bytes"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "early bytes" {
		t.Fatalf("echo %q, %v", got, err)
	}
	c.Close()
	waitServe(t, done)
}

func TestEgressOnBytesExact(t *testing.T) {
	echo := startEgressEcho(t)
	type report struct {
		id             string
		sent, received int64
	}
	reports := make(chan report, 4)
	e := newTestEgress(t, EgressConfig{
		Policy:  allowLoopback4,
		OnBytes: func(id string, sent, received int64) { reports <- report{id, sent, received} },
	})
	c, done := serveEgress(t, e, "bob", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, echo.addr())); rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	payload := make([]byte, 3<<20+12345)
	rand.Read(payload)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo differs: got %d bytes, sent %d", len(got), len(payload))
	}
	if err := waitServe(t, done); err != nil {
		t.Errorf("ServeConn = %v", err)
	}
	select {
	case r := <-reports:
		want := report{"bob", int64(len(payload)), int64(len(payload))}
		if r != want {
			t.Errorf("OnBytes%v, want %v", r, want)
		}
	case <-time.After(egressWait):
		t.Fatal("OnBytes not called")
	}
	select {
	case r := <-reports:
		t.Errorf("OnBytes called again: %v", r)
	default:
	}
}

func TestEgressDeniedByIP(t *testing.T) {
	echo := startEgressEcho(t)
	var dials atomic.Int32
	e := newTestEgress(t, EgressConfig{
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, address)
		},
	})
	for _, dst := range []netip.AddrPort{
		echo.addr(), // 127.0.0.1: loopback is denied by default
		netip.AddrPortFrom(netip.MustParseAddr("::1"), echo.addr().Port()),
		netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), echo.addr().Port()),
		netip.MustParseAddrPort("169.254.169.254:80"),
		netip.MustParseAddrPort("10.0.0.1:80"),
	} {
		c, done := serveEgress(t, e, "mallory", nil)
		if rep, _ := socksHandshake(t, c, socksReqIP(1, dst)); rep != 0x02 {
			t.Errorf("%s: reply %#x, want 0x02", dst, rep)
		}
		expectClosed(t, c)
		if err := waitServe(t, done); !errors.Is(err, ErrEgressDenied) {
			t.Errorf("%s: ServeConn = %v, want ErrEgressDenied", dst, err)
		}
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("%d dials for denied destinations", n)
	}
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("echo service saw %d connections", n)
	}
}

func TestEgressDeniedViaHostname(t *testing.T) {
	echo := startEgressEcho(t)
	var dials, resolves atomic.Int32
	e := newTestEgress(t, EgressConfig{
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			resolves.Add(1)
			if host != "rebind.example" {
				return nil, fmt.Errorf("unexpected lookup %q", host)
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}, nil
		},
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			dials.Add(1)
			return nil, errors.New("must not dial")
		},
	})
	c, done := serveEgress(t, e, "mallory", nil)
	if rep, _ := socksHandshake(t, c, socksReqHost(1, "rebind.example", echo.addr().Port())); rep != 0x02 {
		t.Errorf("reply %#x, want 0x02", rep)
	}
	expectClosed(t, c)
	if err := waitServe(t, done); !errors.Is(err, ErrEgressDenied) {
		t.Errorf("ServeConn = %v, want ErrEgressDenied", err)
	}
	// An IP literal sent as a domain name is checked the same way, without
	// a lookup.
	c, done = serveEgress(t, e, "mallory", nil)
	if rep, _ := socksHandshake(t, c, socksReqHost(1, "127.0.0.1", echo.addr().Port())); rep != 0x02 {
		t.Errorf("literal: reply %#x, want 0x02", rep)
	}
	expectClosed(t, c)
	waitServe(t, done)
	if resolves.Load() != 1 || dials.Load() != 0 || echo.accepted.Load() != 0 {
		t.Errorf("resolves %d, dials %d, echo connections %d; want 1, 0, 0",
			resolves.Load(), dials.Load(), echo.accepted.Load())
	}
}

func TestEgressHostnameDialsCheckedAddress(t *testing.T) {
	echo := startEgressEcho(t)
	var resolves atomic.Int32
	var dialled []string
	var mu sync.Mutex
	e := newTestEgress(t, EgressConfig{
		Policy: allowLoopback4,
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			resolves.Add(1)
			// ::1 and 10.0.0.1 are denied, 127.0.0.1 is allowed.
			return []netip.Addr{netip.MustParseAddr("::1"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("127.0.0.1")}, nil
		},
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, network+" "+address)
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, network, address)
		},
	})
	c, done := serveEgress(t, e, "alice", nil)
	if rep, _ := socksHandshake(t, c, socksReqHost(1, "echo.example", echo.addr().Port())); rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	echoOnce(t, c, "by name")
	c.Close()
	waitServe(t, done)
	mu.Lock()
	defer mu.Unlock()
	want := "tcp " + echo.addr().String()
	if len(dialled) != 1 || dialled[0] != want || resolves.Load() != 1 {
		t.Errorf("dialled %q after %d lookups, want [%q] after 1", dialled, resolves.Load(), want)
	}
}

func TestEgressUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	e := newTestEgress(t, EgressConfig{
		Policy: allowLoopback4,
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			if host == "empty.example" {
				return nil, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
	})
	c, done := serveEgress(t, e, "alice", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, closedPort)); rep != 0x05 {
		t.Errorf("closed port: reply %#x, want 0x05", rep)
	}
	expectClosed(t, c)
	waitServe(t, done)
	for _, host := range []string{"nxdomain.example", "empty.example"} {
		c, done = serveEgress(t, e, "alice", nil)
		if rep, _ := socksHandshake(t, c, socksReqHost(1, host, 80)); rep != 0x04 {
			t.Errorf("%s: reply %#x, want 0x04", host, rep)
		}
		expectClosed(t, c)
		waitServe(t, done)
	}
}

func TestEgressUnsupportedRequests(t *testing.T) {
	var resolves atomic.Int32
	e := newTestEgress(t, EgressConfig{
		Policy: allowLoopback4,
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			resolves.Add(1)
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		},
	})
	for _, tc := range []struct {
		name string
		req  []byte
		want byte
	}{
		{"BIND", socksReqIP(2, netip.MustParseAddrPort("127.0.0.1:80")), 0x07},
		{"BIND by name", socksReqHost(2, "bind.example", 80), 0x07},
		{"UDP ASSOCIATE", socksReqIP(3, netip.MustParseAddrPort("0.0.0.0:0")), 0x07},
		{"unknown command", socksReqIP(9, netip.MustParseAddrPort("127.0.0.1:80")), 0x07},
		{"address type 5", []byte{5, 1, 0, 5, 1, 2, 3, 4, 0, 80}, 0x08},
		{"empty name", socksReqHost(1, "", 80), 0x01},
	} {
		c, done := serveEgress(t, e, "alice", nil)
		if rep, _ := socksHandshake(t, c, tc.req); rep != tc.want {
			t.Errorf("%s: reply %#x, want %#x", tc.name, rep, tc.want)
		}
		expectClosed(t, c)
		if err := waitServe(t, done); err == nil {
			t.Errorf("%s: ServeConn = nil, want an error", tc.name)
		}
	}
	if n := resolves.Load(); n != 0 {
		t.Errorf("%d lookups for unsupported requests", n)
	}
}

func TestEgressBadGreetings(t *testing.T) {
	e := newTestEgress(t, EgressConfig{Policy: allowLoopback4})
	// Only username/password offered: "no acceptable methods", then close.
	c, done := serveEgress(t, e, "alice", nil)
	c.Write([]byte{5, 1, 2})
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0xff} {
		t.Errorf("method reply %v, %v; want [5 255]", m, err)
	}
	expectClosed(t, c)
	waitServe(t, done)
	// SOCKS4: closed without a reply.
	c, done = serveEgress(t, e, "alice", nil)
	c.Write([]byte{4, 1, 0, 80, 127, 0, 0, 1, 0})
	expectClosed(t, c)
	if err := waitServe(t, done); err == nil {
		t.Error("SOCKS4: ServeConn = nil")
	}
}

func TestEgressHandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	e := newTestEgress(t, EgressConfig{Policy: allowLoopback4, HandshakeTimeout: timeout})

	// A client that connects and sends nothing.
	start := time.Now()
	c, done := serveEgress(t, e, "sloth", nil)
	expectClosed(t, c)
	if d := time.Since(start); d < timeout*3/4 {
		t.Errorf("closed after %v, before the %v handshake timeout", d, timeout)
	}
	if err := waitServe(t, done); !isTimeout(err) {
		t.Errorf("ServeConn = %v, want a timeout", err)
	}

	// A client that sends the greeting and then trickles the request: the
	// deadline covers greeting and request together.
	start = time.Now()
	c, done = serveEgress(t, e, "sloth", nil)
	c.Write([]byte{5, 1, 0})
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		t.Fatal(err)
	}
	req := socksReqIP(1, netip.MustParseAddrPort("127.0.0.1:9"))
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for _, b := range req {
			select {
			case <-stop:
				return
			case <-time.After(timeout / 4):
			}
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	expectClosed(t, c)
	close(stop)
	<-trickled
	if d := time.Since(start); d > egressWait {
		t.Errorf("closed after %v", d)
	}
	if err := waitServe(t, done); !isTimeout(err) {
		t.Errorf("trickle: ServeConn = %v, want a timeout", err)
	}
}

func TestEgressIdleTimeout(t *testing.T) {
	echo := startEgressEcho(t)
	e := newTestEgress(t, EgressConfig{
		Policy:   allowLoopback4,
		Timeouts: Timeouts{Idle: 200 * time.Millisecond, HalfClosed: 200 * time.Millisecond},
	})
	c, done := serveEgress(t, e, "alice", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, echo.addr())); rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	echoOnce(t, c, "then silence")
	expectClosed(t, c)
	if err := waitServe(t, done); !errors.Is(err, ErrIdle) {
		t.Errorf("ServeConn = %v, want ErrIdle", err)
	}
}

func TestEgressCloseEndsSessions(t *testing.T) {
	echo := startEgressEcho(t)
	dialStarted := make(chan struct{}, 1)
	e := newTestEgress(t, EgressConfig{
		Policy: EgressPolicy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			if address == "127.0.0.2:9" {
				// A destination that never answers.
				dialStarted <- struct{}{}
				<-ctx.Done()
				return nil, ctx.Err()
			}
			var d net.Dialer
			return d.DialContext(ctx, network, address)
		},
	})
	// 1: in the data phase.
	c1, done1 := serveEgress(t, e, "alice", nil)
	if rep, _ := socksHandshake(t, c1, socksReqIP(1, echo.addr())); rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	echoOnce(t, c1, "live")
	// 2: stuck in the handshake (the default handshake timeout is 10s).
	c2, done2 := serveEgress(t, e, "bob", nil)
	c2.Write([]byte{5, 1, 0})
	var m [2]byte
	if _, err := io.ReadFull(c2, m[:]); err != nil {
		t.Fatal(err)
	}
	// 3: stuck dialling.
	c3, done3 := serveEgress(t, e, "carol", nil)
	c3.Write([]byte{5, 1, 0})
	if _, err := io.ReadFull(c3, m[:]); err != nil {
		t.Fatal(err)
	}
	c3.Write(socksReqIP(1, netip.MustParseAddrPort("127.0.0.2:9")))
	select {
	case <-dialStarted:
	case <-time.After(egressWait):
		t.Fatal("dial not started")
	}
	if n := e.Live(); n != 3 {
		t.Errorf("Live() = %d, want 3", n)
	}

	closed := make(chan struct{})
	go func() { e.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(egressWait):
		t.Fatal("Close did not return")
	}
	for i, done := range []<-chan error{done1, done2, done3} {
		if err := waitServe(t, done); !errors.Is(err, ErrClosed) {
			t.Errorf("session %d: ServeConn = %v, want ErrClosed", i+1, err)
		}
	}
	expectClosed(t, c1)
	expectClosed(t, c2)
	// c3 may get a general-failure reply before the close.
	if e.Live() != 0 {
		t.Errorf("Live() = %d after Close", e.Live())
	}
	// Later sessions are refused at once; Close stays idempotent.
	c4, done4 := serveEgress(t, e, "dave", nil)
	if err := waitServe(t, done4); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: ServeConn = %v, want ErrClosed", err)
	}
	expectClosed(t, c4)
	if err := e.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestEgressCloseClient(t *testing.T) {
	echo := startEgressEcho(t)
	e := newTestEgress(t, EgressConfig{Policy: allowLoopback4})
	ca, doneA := serveEgress(t, e, "alice", nil)
	cb, doneB := serveEgress(t, e, "bob", nil)
	for _, c := range []net.Conn{ca, cb} {
		if rep, _ := socksHandshake(t, c, socksReqIP(1, echo.addr())); rep != 0 {
			t.Fatalf("reply %#x", rep)
		}
		echoOnce(t, c, "x")
	}
	if n := e.CloseClient("alice"); n != 1 {
		t.Errorf("CloseClient = %d, want 1", n)
	}
	expectClosed(t, ca)
	waitServe(t, doneA)
	echoOnce(t, cb, "bob is still here")
	cb.Close()
	waitServe(t, doneB)
}

// egressWrapped hides the concrete type of a connection and its addresses,
// as a tunnel's or a custom dialer's connection might.
type egressWrapped struct{ net.Conn }

type egressOddAddr struct{}

func (egressOddAddr) Network() string { return "tunnel" }
func (egressOddAddr) String() string  { return "somewhere" }

func (egressWrapped) LocalAddr() net.Addr  { return egressOddAddr{} }
func (egressWrapped) RemoteAddr() net.Addr { return egressOddAddr{} }

func TestEgressWrappedConns(t *testing.T) {
	echo := startEgressEcho(t)
	var got [2]int64
	e := newTestEgress(t, EgressConfig{
		Policy: allowLoopback4,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return egressWrapped{c}, nil
		},
		OnBytes: func(_ string, sent, received int64) { got = [2]int64{sent, received} },
	})
	c, done := serveEgress(t, e, "alice", func(c net.Conn) net.Conn { return egressWrapped{c} })
	rep, bnd := socksHandshake(t, c, socksReqIP(1, echo.addr()))
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	if bnd != netip.MustParseAddrPort("0.0.0.0:0") {
		t.Errorf("bind address %s, want 0.0.0.0:0 for an unknown address type", bnd)
	}
	echoOnce(t, c, "wrapped")
	c.Close()
	waitServe(t, done)
	if got != [2]int64{7, 7} {
		t.Errorf("OnBytes got %v, want [7 7]", got)
	}
}

func TestEgressLocalAddr(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs all of 127.0.0.0/8 on loopback")
	}
	echo := startEgressEcho(t)
	src := netip.MustParseAddr("127.0.0.2")
	e := newTestEgress(t, EgressConfig{
		Policy:    EgressPolicy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}},
		LocalAddr: src,
	})
	c, done := serveEgress(t, e, "alice", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, echo.addr())); rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	select {
	case from := <-echo.from:
		if from.Addr() != src {
			t.Errorf("echo saw %s, want source %s", from, src)
		}
	case <-time.After(egressWait):
		t.Fatal("echo service saw no connection")
	}
	c.Close()
	waitServe(t, done)
	// An IPv6 destination cannot be reached from an IPv4 source.
	c, done = serveEgress(t, e, "alice", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, netip.MustParseAddrPort("[::1]:9"))); rep != 0x03 {
		t.Errorf("IPv6 from IPv4 source: reply %#x, want 0x03", rep)
	}
	expectClosed(t, c)
	waitServe(t, done)
}

func TestEgressConfigValidation(t *testing.T) {
	for i, cfg := range []EgressConfig{
		{HandshakeTimeout: -1},
		{DialTimeout: -time.Second},
		{Timeouts: Timeouts{Idle: -1}},
		{Policy: EgressPolicy{TunnelPrefix: netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 40)}},
	} {
		if _, err := NewEgress(cfg); err == nil {
			t.Errorf("config %d: NewEgress succeeded", i)
		}
	}
	e, err := NewEgress(EgressConfig{})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}

func TestEgressNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		echo := startEgressEcho(t)
		e, err := NewEgress(EgressConfig{Policy: allowLoopback4, HandshakeTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		var dones []<-chan error
		// Completed, denied, timed-out and live-at-Close sessions.
		c, done := serveEgress(t, e, "a", nil)
		socksHandshake(t, c, socksReqIP(1, echo.addr()))
		echoOnce(t, c, "1")
		c.Close()
		dones = append(dones, done)
		c, done = serveEgress(t, e, "a", nil)
		socksHandshake(t, c, socksReqIP(1, netip.MustParseAddrPort("10.0.0.1:80")))
		c.Close()
		dones = append(dones, done)
		c, done = serveEgress(t, e, "a", nil)
		expectClosed(t, c)
		c.Close()
		dones = append(dones, done)
		c, done = serveEgress(t, e, "a", nil)
		socksHandshake(t, c, socksReqIP(1, echo.addr()))
		echoOnce(t, c, "2")
		dones = append(dones, done)
		e.Close()
		c.Close()
		for _, d := range dones {
			waitServe(t, d)
		}
		echo.ln.Close()
		echo.wg.Wait()
	}()
	deadline := time.Now().Add(egressWait)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEgressClientNotAllowed(t *testing.T) {
	echo := startEgressEcho(t)
	e := newTestEgress(t, EgressConfig{
		Policy: allowLoopback4,
		Directory: func() *Directory {
			return NewDirectory(Peer{ID: "blocked", Socks5: false}, Peer{ID: "allowed", Socks5: true})
		},
	})
	c, done := serveEgress(t, e, "blocked", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, echo.addr())); rep != 0x02 {
		t.Errorf("disabled client: reply %#x, want 0x02", rep)
	}
	expectClosed(t, c)
	if err := waitServe(t, done); !errors.Is(err, ErrEgressDenied) {
		t.Errorf("ServeConn = %v, want ErrEgressDenied", err)
	}
	c, done = serveEgress(t, e, "allowed", nil)
	if rep, _ := socksHandshake(t, c, socksReqIP(1, echo.addr())); rep != 0 {
		t.Fatalf("enabled client: reply %#x", rep)
	}
	echoOnce(t, c, "hi")
	c.Close()
	waitServe(t, done)
	if n := echo.accepted.Load(); n != 1 {
		t.Errorf("echo saw %d connections, want 1", n)
	}
}
