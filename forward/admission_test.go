package forward

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// dialFrom opens a public connection from a chosen loopback source
// address (all of 127.0.0.0/8 is local), so tests can act as several
// hosts.
func dialFrom(t *testing.T, src string, port int) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: ftPrompt, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("dialing public port %d from %s: %v", port, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// refusedFrom dials from src and reports whether the connection was
// reset or closed at once (the reset may beat connect's return).
func refusedFrom(t *testing.T, src string, port int) bool {
	t.Helper()
	d := net.Dialer{Timeout: ftPrompt, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	return refusedPromptly(c)
}

// refusedPromptly reports whether the gateway reset or closed c at once.
func refusedPromptly(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

type rejections struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *rejections) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *rejections) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// Issue 15: silent connections to a port shared by host name each held a
// peek (a goroutine, up to 64 KiB) for the peek timeout, unbounded. Now
// at most PeeksPerSource from one source and Peeks in all; the rest are
// reset at once, and another source's connection still gets through.
func TestGatewayPeekLimits(t *testing.T) {
	ftCheckGoroutines(t)
	var rej rejections
	r := &rtHarness{connected: map[string]bool{}}
	r.ftGateway = ftNewGateway(t, func(c *GatewayConfig) {
		c.Directory = r.directory
		c.PeekTimeout = 30 * time.Second // the flood holds its peeks
		c.Rejected = rej.add
		c.Limits = GatewayLimits{Peeks: 6, PeeksPerSource: 4}
	})
	be := ftStartBackend(t, false, "web\n")
	_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	r.addClient("c", addr)
	r.setConnected("c", true)
	port := ftFreePort(t)
	a, b := ftTunnel(port, "c"), ftTunnel(port, "c")
	a.ListenHostnameGlob, b.ListenHostnameGlob = "a.example", "*"
	r.apply(t, a, b)

	var flood []*net.TCPConn
	for range 4 {
		flood = append(flood, dialFrom(t, "127.0.0.2", port))
	}
	waitFor(t, "4 peeks in progress", func() bool { n, _ := r.gw.peeks.held(netip.Prefix{}); return n == 4 })
	if !refusedFrom(t, "127.0.0.2", port) {
		t.Fatal("a fifth silent connection from one source was not refused")
	}
	if rej.get(RejectPeeksPerSource) != 1 {
		t.Fatalf("rejections %v", rej.n)
	}
	for range 2 {
		flood = append(flood, dialFrom(t, "127.0.0.3", port))
	}
	waitFor(t, "6 peeks in progress", func() bool { n, _ := r.gw.peeks.held(netip.Prefix{}); return n == 6 })
	if !refusedFrom(t, "127.0.0.4", port) || rej.get(RejectPeeks) != 1 {
		t.Fatalf("a seventh peek was not refused: %v", rej.n)
	}
	// A well-behaved connection from another source, once one flood
	// connection sends its name: through.
	io.WriteString(flood[0], httpHead("a.example"))
	if got := readBanner(t, flood[0]); got != "web" {
		t.Fatalf("the named connection reached %q", got)
	}
	good := dialFrom(t, "127.0.0.5", port)
	io.WriteString(good, httpHead("a.example"))
	if got := readBanner(t, good); got != "web" {
		t.Fatalf("a good connection during the flood reached %q", got)
	}
	for _, c := range flood {
		c.Close()
	}
	waitFor(t, "no peek in progress", func() bool { n, _ := r.gw.peeks.held(netip.Prefix{}); return n == 0 })
}

func readBanner(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ftPrompt))
	b := make([]byte, 64)
	n, _ := c.Read(b)
	line, _, _ := strings.Cut(string(b[:n]), "\n")
	return line
}

// Issue 15: 1,000 silent connections to a "*" port were held for the
// idle limit. Now at most ConnectionsPerSource from one source and
// Connections in all.
func TestGatewayConnectionLimits(t *testing.T) {
	ftCheckGoroutines(t)
	var rej rejections
	h := ftNewGateway(t, func(c *GatewayConfig) {
		c.Rejected = rej.add
		c.Limits = GatewayLimits{Connections: 5, ConnectionsPerSource: 3}
	})
	be := ftStartBackend(t, false, "web\n")
	_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	h.addClient("c", addr)
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "c"))
	var held []*net.TCPConn
	for range 3 {
		c := dialFrom(t, "127.0.0.2", port)
		if readBanner(t, c) != "web" {
			t.Fatal("a connection under the limit was not served")
		}
		held = append(held, c)
	}
	if !refusedFrom(t, "127.0.0.2", port) || rej.get(RejectConnectionsPerSource) != 1 {
		t.Fatalf("a fourth connection from one source: rejections %v", rej.n)
	}
	for range 2 {
		c := dialFrom(t, "127.0.0.3", port)
		readBanner(t, c)
		held = append(held, c)
	}
	if !refusedFrom(t, "127.0.0.4", port) || rej.get(RejectConnections) != 1 {
		t.Fatalf("a sixth connection: rejections %v", rej.n)
	}
	held[0].Close()
	waitFor(t, "a slot freed", func() bool { n, _ := h.gw.live.held(netip.Prefix{}); return n == 4 })
	if c := dialFrom(t, "127.0.0.4", port); readBanner(t, c) != "web" {
		t.Fatal("a connection after one closed was not served")
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:1234":                  "192.0.2.7/32",
		"[::ffff:192.0.2.7]:1234":         "192.0.2.7/32",
		"[2001:db8:1:2:3:4:5:6]:443":      "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1%eth0]:443": "2001:db8:1:2::/64",
	} {
		a, _ := net.ResolveTCPAddr("tcp", in)
		if got := sourceKey(a); got.String() != want {
			t.Errorf("sourceKey(%s) = %s, want %s", in, got, want)
		}
	}
	if sourceKey(nil).IsValid() {
		t.Error("sourceKey(nil) is valid")
	}
}

// Issue 15: 2,000 half-open SOCKS5 sessions took 2,000 goroutines and
// 54 MB until the handshake timeout. Now at most HandshakesPerClient and
// SessionsPerClient for each client; other clients are served.
func TestEgressLimits(t *testing.T) {
	ftCheckGoroutines(t)
	var rej rejections
	dst := ftStartBackend(t, false, "dst\n")
	e, err := NewEgress(EgressConfig{
		Policy:   EgressPolicy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
		Limits:   EgressLimits{HandshakesPerClient: 3, SessionsPerClient: 4},
		Rejected: rej.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	serve := func(client string) net.Conn {
		a, b := net.Pipe()
		wg.Add(1)
		go func() { defer wg.Done(); e.ServeConn(client, b) }()
		t.Cleanup(func() { a.Close() })
		return a
	}
	var halfOpen []net.Conn
	for range 3 {
		halfOpen = append(halfOpen, serve("flood"))
	}
	waitFor(t, "3 handshakes", func() bool { n, _ := e.handshakes.held("flood"); return n == 3 })
	if c := serve("flood"); !refusedPromptly(c) || rej.get(RejectSocksHandshakes) != 1 {
		t.Fatalf("a fourth half-open session: %v", rej.n)
	}
	// Another client is not held up.
	socksConnect(t, serve("good"), dst.addr)
	// A session in the data phase frees its handshake slot but counts
	// against the session limit.
	halfOpen[0].Close()
	waitFor(t, "a handshake slot freed", func() bool { n, _ := e.handshakes.held("flood"); return n == 0+2 })
	socksConnect(t, serve("flood"), dst.addr)
	socksConnect(t, serve("flood"), dst.addr) // 2 half-open + 2 live = 4 sessions
	if c := serve("flood"); !refusedPromptly(c) || rej.get(RejectSocksSessions) != 1 {
		t.Fatalf("a fifth session: %v", rej.n)
	}
}

// socksConnect does a SOCKS5 CONNECT to addr over c and reads the
// destination's banner.
func socksConnect(t *testing.T, c net.Conn, addr string) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	c.SetDeadline(time.Now().Add(ftPrompt))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		t.Fatal(err)
	}
	method := make([]byte, 2)
	if _, err := io.ReadFull(c, method); err != nil || method[1] != 0 {
		t.Fatalf("SOCKS5 method reply %v %v", method, err)
	}
	req := []byte{5, 1, 0, 1}
	req = append(req, ap.Addr().AsSlice()...)
	req = append(req, byte(ap.Port()>>8), byte(ap.Port()))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 10)
	if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0 {
		t.Fatalf("SOCKS5 reply %v %v", reply, err)
	}
	if got := readBanner(t, c); got != "dst" {
		t.Fatalf("banner %q", got)
	}
}

// A throttled log line: a burst, then the rest counted and reported with
// the next line let through.
func TestThrottle(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	th := &throttle{burst: 3, interval: 50 * time.Millisecond}
	for i := range 100 {
		th.log(log, slog.LevelInfo, "dropped", "i", i)
	}
	if n := strings.Count(buf.String(), "msg=dropped"); n != 3 || th.pending() != 97 {
		t.Fatalf("%d lines written, %d pending:\n%s", n, th.pending(), buf.String())
	}
	time.Sleep(60 * time.Millisecond)
	th.log(log, slog.LevelInfo, "dropped", "i", 100)
	if !strings.Contains(buf.String(), "i=100 suppressed=97") {
		t.Fatalf("%s", buf.String())
	}
	// Nothing is counted at a level the logger does not write.
	th.log(slog.New(slog.DiscardHandler), slog.LevelInfo, "x")
}

// The client's refusals of tunneled connections (an unknown service, a
// backend down) come one per user connection: throttled.
func TestConnectorRefusalsThrottled(t *testing.T) {
	logs := &lockedBuffer{}
	_, addr := ftStartConnector(t, map[string]string{"echo": "127.0.0.1:1"}, func(c *ConnectorConfig) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	for range 50 {
		c, err := net.DialTimeout("tcp", addr, ftPrompt)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteRequest(c, ftRequest("nope", 0)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(ftPrompt))
		var st [1]byte
		if _, err := io.ReadFull(c, st[:]); err != nil || Status(st[0]) != StatusUnknownService {
			t.Fatalf("status %x %v, want unknown service", st, err)
		}
		c.Close()
	}
	if n := strings.Count(logs.String(), "tunneled connection refused"); n == 0 || n > 20 {
		t.Errorf("50 refusals made %d log lines, want 1-20:\n%s", n, logs.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a logger and a reader at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
