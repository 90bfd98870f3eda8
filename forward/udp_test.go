package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// ---- UDP fixtures: loopback sockets stand in for the tunnel ----

// udpCounts is a UDPObserver that counts everything.
type udpCounts struct {
	mu                         sync.Mutex
	in, out, inBytes, outBytes int
	started, ended, fragmented int
	refused, dropped           map[string]int
}

func newUDPCounts() *udpCounts {
	return &udpCounts{refused: map[string]int{}, dropped: map[string]int{}}
}

func (c *udpCounts) do(f func()) { c.mu.Lock(); f(); c.mu.Unlock() }
func (c *udpCounts) In(n int)    { c.do(func() { c.in++; c.inBytes += n }) }
func (c *udpCounts) Out(n int)   { c.do(func() { c.out++; c.outBytes += n }) }
func (c *udpCounts) SessionStarted() {
	c.do(func() { c.started++ })
}
func (c *udpCounts) SessionEnded()    { c.do(func() { c.ended++ }) }
func (c *udpCounts) Fragmented()      { c.do(func() { c.fragmented++ }) }
func (c *udpCounts) Refused(r string) { c.do(func() { c.refused[r]++ }) }
func (c *udpCounts) Dropped(r string) { c.do(func() { c.dropped[r]++ }) }
func (c *udpCounts) get(f func(*udpCounts) int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f(c)
}

// udpBackend is a loopback UDP service. It answers each datagram with the
// payload (a PROXY header, if any, removed) prefixed by the name of the
// peer it came from, and records what it saw.
type udpBackend struct {
	pc   net.PacketConn
	addr string
	mu   sync.Mutex
	seen []udpSeen
}

type udpSeen struct {
	peer   string
	header *proxyproto.Header // parsed from the datagram, if it had one
	data   []byte             // the payload after the header
}

func startUDPBackend(t *testing.T) *udpBackend {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &udpBackend{pc: pc, addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s := udpSeen{peer: from.String(), data: bytes.Clone(buf[:n])}
			if h, rest, err := proxyproto.ParseUDPDatagram(buf[:n]); err == nil {
				s.header, s.data = h, bytes.Clone(rest)
			}
			b.mu.Lock()
			b.seen = append(b.seen, s)
			b.mu.Unlock()
			reply := append([]byte(s.peer+"|"), s.data...)
			if len(reply) > 65507 {
				reply = s.data
			}
			pc.WriteTo(reply, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return b
}

func (b *udpBackend) saw() []udpSeen {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.seen)
}

// udpRig is a Gateway and a UDPConnector per client, joined by loopback
// sockets in place of the tunnel.
type udpRig struct {
	t     *testing.T
	gw    *Gateway
	dir   atomic.Pointer[Directory]
	obs   *udpCounts
	conns map[string]*UDPConnector
	addrs map[string]netip.AddrPort // each connector's socket
	ids   []string
}

func newUDPRig(t *testing.T, services map[string]map[string]string, mod func(*GatewayConfig)) *udpRig {
	t.Helper()
	r := &udpRig{t: t, obs: newUDPCounts(), conns: map[string]*UDPConnector{}, addrs: map[string]netip.AddrPort{}}
	for id, svc := range services {
		c, err := NewUDPConnector(UDPConnectorConfig{Services: svc, Logger: ftLogger(), Sources: ftLoopbackSources})
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- c.Serve(pc) }()
		t.Cleanup(func() {
			ftWithin(t, ftPrompt, "UDPConnector.Close", func() { c.Close() })
			if err := <-served; !errors.Is(err, ErrClosed) {
				t.Errorf("Serve returned %v after Close, want ErrClosed", err)
			}
		})
		r.conns[id] = c
		r.addrs[id] = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		r.ids = append(r.ids, id)
	}
	slices.Sort(r.ids)
	r.publish(r.ids...)
	cfg := GatewayConfig{
		Directory: r.dir.Load,
		Dial: func(context.Context, netip.AddrPort) (net.Conn, error) {
			return nil, errors.New("no TCP here")
		},
		Logger: ftLogger(),
		TunnelPacket: func() (net.PacketConn, error) {
			return net.ListenPacket("udp", "127.0.0.1:0")
		},
		ObserveUDP: func(Tunnel) UDPObserver { return r.obs },
	}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ftWithin(t, ftPrompt, "Gateway.Close", func() { gw.Close() }) })
	r.gw = gw
	return r
}

// publish makes the listed clients connected, the others registered only.
func (r *udpRig) publish(connected ...string) {
	var peers []Peer
	for _, id := range r.ids {
		peers = append(peers, Peer{ID: id, Addr: r.addrs[id].Addr(), UDPConnector: r.addrs[id], Connected: slices.Contains(connected, id)})
	}
	r.dir.Store(NewDirectory(peers...))
}

func udpTunnel(port int, service string, clients ...string) Tunnel {
	return Tunnel{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: service, ClientIds: clients}
}

func (r *udpRig) apply(ts ...Tunnel) []Tunnel {
	r.t.Helper()
	applied, err := r.gw.Apply(ts)
	if err != nil {
		r.t.Fatalf("Apply: %v", err)
	}
	return applied
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// user is a public UDP user: its own socket, connected to the tunnel's port.
func user(t *testing.T, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ask sends msg and returns the reply, or "" if none came within wait.
func ask(t *testing.T, c *net.UDPConn, msg []byte, wait time.Duration) string {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// mustAsk is ask that retries a few times (the first datagram of a session
// may race the rig's setup) and fails without a reply.
func mustAsk(t *testing.T, c *net.UDPConn, msg string) (peer, echo string) {
	t.Helper()
	for range 5 {
		if got := ask(t, c, []byte(msg), time.Second); got != "" {
			peer, echo, _ = strings.Cut(got, "|")
			if echo != msg {
				t.Fatalf("echo %q, want %q", echo, msg)
			}
			return peer, echo
		}
	}
	t.Fatalf("no reply to %q", msg)
	return "", ""
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sessionsOf(gw *Gateway, key string) int {
	for _, t := range gw.Tunnels() {
		if t.ListenKey() == key && t.ActiveSessions != nil {
			return *t.ActiveSessions
		}
	}
	return -1
}

// ---- frames ----

func TestUDPFrames(t *testing.T) {
	cases := []udpSession{
		{id: 1, idle: 120 * time.Second, service: []byte("dns"), src: netip.MustParseAddrPort("192.0.2.1:5353")},
		{id: 1<<32 - 1, idle: time.Second, service: []byte("game"), src: netip.MustParseAddrPort("[2001:db8::1]:19132"),
			dst: netip.MustParseAddrPort("198.51.100.7:19132"), proxy: udpProxyFirst},
		{id: 7, idle: 65535 * time.Second, service: bytes.Repeat([]byte("s"), 255), src: netip.MustParseAddrPort("[::ffff:203.0.113.9]:1"),
			dst: netip.MustParseAddrPort("[2001:db8::2]:53"), proxy: udpProxyEvery},
	}
	for _, want := range cases {
		hdr, err := dataHeader(want)
		if err != nil {
			t.Fatal(err)
		}
		frame := append(hdr, "payload"...)
		got, payload, err := parseData(frame)
		if err != nil {
			t.Fatalf("parseData(%x): %v", frame, err)
		}
		want.src = netip.AddrPortFrom(want.src.Addr().Unmap(), want.src.Port())
		if got.id != want.id || got.idle != want.idle || !bytes.Equal(got.service, want.service) || got.src != want.src || got.dst != want.dst || got.proxy != want.proxy {
			t.Errorf("round trip: got %+v, want %+v", got, want)
		}
		if string(payload) != "payload" {
			t.Errorf("payload %q", payload)
		}
		// Every truncation is refused, never a panic.
		for i := range len(hdr) {
			if _, _, err := parseData(frame[:i]); err == nil {
				t.Errorf("a frame cut to %d of its %d header bytes was accepted", i, len(hdr))
			}
		}
	}
	// The header sizes the README gives.
	for _, c := range []struct {
		s    udpSession
		want int
	}{
		{udpSession{service: []byte("dns"), idle: time.Second, src: netip.MustParseAddrPort("192.0.2.1:1")}, 18},
		{udpSession{service: []byte("dns"), idle: time.Second, src: netip.MustParseAddrPort("192.0.2.1:1"), dst: netip.MustParseAddrPort("192.0.2.2:53"), proxy: udpProxyEvery}, 24},
		{udpSession{service: []byte("dns"), idle: time.Second, src: netip.MustParseAddrPort("[2001:db8::1]:1"), dst: netip.MustParseAddrPort("[2001:db8::2]:53"), proxy: udpProxyEvery}, 48},
	} {
		if h, _ := dataHeader(c.s); len(h) != c.want {
			t.Errorf("header of %+v is %d bytes, want %d", c.s, len(h), c.want)
		}
	}
	if _, err := dataHeader(udpSession{service: nil, src: netip.MustParseAddrPort("192.0.2.1:1")}); err == nil {
		t.Error("a header without a service was made")
	}
	if _, err := dataHeader(udpSession{service: []byte("x"), src: netip.MustParseAddrPort("192.0.2.1:1"), proxy: udpProxyEvery}); err == nil {
		t.Error("a PROXY header without a destination was made")
	}
	for _, b := range [][]byte{nil, {0x21}, {0x12, 0, 0}, {0x00, 1, 2, 3, 4}} {
		if _, _, _, err := parseShort(b); err == nil {
			t.Errorf("parseShort(%x) accepted", b)
		}
	}
	typ, id, rest, err := parseShort(refusedFrame(42, udpRefuseUnknownService))
	if err != nil || typ != frameRefused || id != 42 || !bytes.Equal(rest, []byte{udpRefuseUnknownService}) {
		t.Errorf("refused frame: %d %d %x %v", typ, id, rest, err)
	}
}

// ---- configuration ----

func TestUDPTunnelChecks(t *testing.T) {
	ts := []Tunnel{
		{Protocol: "UDP", ListenPort: 53, BackEndService: "dns", ClientId: "a", HaProxyProxyProtocol: true},
		{ListenPort: 53, BackEndService: "dns", ClientId: "a"}, // TCP on the same port: fine
	}
	if p := checkAll(ts); len(p) > 0 {
		t.Fatalf("problems: %q", p)
	}
	u := ts[0]
	if u.Protocol != "udp" || u.UdpSessionIdleSeconds != DefaultUDPIdleSeconds || u.UdpMaxSessions != DefaultUDPMaxSessions ||
		u.HaProxyProxyProtocolVersion != 2 || u.UdpProxyProtocolMode != UDPProxyEvery || u.ListenHostnameGlob != "" {
		t.Errorf("UDP defaults: %+v", u)
	}
	if ts[1].Protocol != "tcp" || ts[1].ListenHostnameGlob != "*" {
		t.Errorf("TCP defaults: %+v", ts[1])
	}
	if u.ListenKey() == ts[1].ListenKey() {
		t.Errorf("TCP and UDP share the listen key %q", u.ListenKey())
	}

	bad := []Tunnel{
		{Protocol: "sctp", ListenPort: 1, BackEndService: "x", ClientId: "a"},
		{Protocol: "udp", ListenPort: 2, BackEndService: "x", ClientId: "a", ListenHostnameGlob: "*.example.com"},
		{Protocol: "udp", ListenPort: 3, BackEndService: "x", ClientId: "a", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 1},
		{Protocol: "udp", ListenPort: 4, BackEndService: "x", ClientId: "a", UdpProxyProtocolMode: "first"},
		{Protocol: "udp", ListenPort: 5, BackEndService: "x", ClientId: "a", HaProxyProxyProtocol: true, UdpProxyProtocolMode: "sometimes"},
		{Protocol: "udp", ListenPort: 6, BackEndService: "x", ClientId: "a", UdpSessionIdleSeconds: -1, UdpMaxSessions: MaxUDPMaxSessions + 1},
		{ListenPort: 7, BackEndService: "x", ClientId: "a", UdpSessionIdleSeconds: 30, UdpMaxSessions: 5, UdpProxyProtocolMode: "every"},
		{Protocol: "udp", ListenPort: 8, BackEndService: "x", ClientId: "a"},
		{Protocol: "udp", ListenPort: 8, BackEndService: "y", ClientId: "a"},
	}
	p := strings.Join(checkAll(bad), "\n")
	for _, want := range []string{
		`tunnels[0].Protocol: "sctp" is not tcp or udp`,
		"tunnels[1].ListenHostnameGlob: does not apply to a udp tunnel",
		"tunnels[2].HaProxyProxyProtocolVersion: 1 has no datagram form",
		"tunnels[3].UdpProxyProtocolMode: is set but HaProxyProxyProtocol is false",
		`tunnels[4].UdpProxyProtocolMode: "sometimes" is not "every" or "first"`,
		"tunnels[5].UdpSessionIdleSeconds: -1 is not between 1 and 86400",
		"tunnels[5].UdpMaxSessions: 1000001 is not between 1 and 1000000",
		"tunnels[6].UdpMaxSessions: applies only to",
		"tunnels[6].UdpProxyProtocolMode: applies only to",
		"tunnels[6].UdpSessionIdleSeconds: applies only to",
		"tunnels[8]: claims :8/udp like tunnels[7]",
	} {
		if !strings.Contains(p, want) {
			t.Errorf("problems lack %q:\n%s", want, p)
		}
	}
}

// ---- relaying ----

func TestUDPEchoManyDatagramsInOrder(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	applied := r.apply(udpTunnel(port, "echo", "a"))
	if applied[0].UdpSessionIdleSeconds != 120 {
		t.Errorf("applied: %+v", applied[0])
	}
	u := user(t, port)
	peer, _ := mustAsk(t, u, "hello")
	// Then 2,000 more in windows of 32, each reply checked in order.
	const total, window = 2000, 32
	buf := make([]byte, 2048)
	next := 0
	for sent := 0; sent < total; {
		for i := 0; i < window && sent < total; i++ {
			u.Write([]byte(fmt.Sprintf("seq %d", sent)))
			sent++
		}
		for next < sent {
			u.SetReadDeadline(time.Now().Add(ftPrompt))
			n, err := u.Read(buf)
			if err != nil {
				t.Fatalf("reply %d: %v", next, err)
			}
			if want := fmt.Sprintf("%s|seq %d", peer, next); string(buf[:n]) != want {
				t.Fatalf("reply %q, want %q", buf[:n], want)
			}
			next++
		}
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.in }); got != total+1 {
		t.Errorf("counted %d datagrams in, want %d", got, total+1)
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.out }); got != total+1 {
		t.Errorf("counted %d datagrams out, want %d", got, total+1)
	}
	if n := sessionsOf(r.gw, applied[0].ListenKey()); n != 1 {
		t.Errorf("ActiveSessions %d, want 1", n)
	}
}

func TestUDPSessionsApart(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	r.apply(udpTunnel(port, "echo", "a"))
	const users = 50
	peers := map[string]bool{}
	var conns []*net.UDPConn
	for i := range users {
		u := user(t, port)
		conns = append(conns, u)
		peer, _ := mustAsk(t, u, fmt.Sprintf("user %d", i))
		if peers[peer] {
			t.Fatalf("two users share the backend peer %s", peer)
		}
		peers[peer] = true
	}
	// Everyone again: the same peer as before, their own reply only.
	for i, u := range conns {
		peer, _ := mustAsk(t, u, fmt.Sprintf("again %d", i))
		if !peers[peer] {
			t.Fatalf("user %d moved to a new backend peer %s", i, peer)
		}
	}
	if got := r.conns["a"].Sessions(); got != users {
		t.Errorf("client has %d sessions, want %d", got, users)
	}
}

func TestUDPProxyHeaders(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	every, first := freeUDPPort(t), freeUDPPort(t)
	te, tf := udpTunnel(every, "echo", "a"), udpTunnel(first, "echo", "a")
	te.HaProxyProxyProtocol = true
	tf.HaProxyProxyProtocol, tf.UdpProxyProtocolMode = true, "first"
	r.apply(te, tf)
	for _, c := range []struct {
		port  int
		every bool
	}{{every, true}, {first, false}} {
		u := user(t, c.port)
		for i := range 3 {
			mustAsk(t, u, fmt.Sprintf("datagram %d", i))
		}
		var seen []udpSeen
		for _, s := range be.saw() {
			if strings.HasPrefix(string(s.data), "datagram") && (s.header == nil || s.header.DestinationAddr.(*net.UDPAddr).Port == c.port) {
				seen = append(seen, s)
			}
		}
		be.mu.Lock()
		be.seen = nil
		be.mu.Unlock()
		if len(seen) != 3 {
			t.Fatalf("port %d: backend saw %d datagrams", c.port, len(seen))
		}
		for i, s := range seen {
			want := c.every || i == 0
			if (s.header != nil) != want {
				t.Errorf("port %d datagram %d: PROXY header %v, want %v", c.port, i, s.header != nil, want)
				continue
			}
			if s.header == nil {
				continue
			}
			src, dst, ok := s.header.UDPAddrs()
			if !ok || s.header.TransportProtocol != proxyproto.UDPv4 {
				t.Fatalf("header is not UDP over IPv4: %+v", s.header)
			}
			if src.String() != u.LocalAddr().String() || dst.String() != fmt.Sprintf("127.0.0.1:%d", c.port) {
				t.Errorf("header says %s -> %s, user is %s -> 127.0.0.1:%d", src, dst, u.LocalAddr(), c.port)
			}
		}
	}
}

func TestUDPIdleSessionsEnd(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	tu := udpTunnel(port, "echo", "a")
	tu.UdpSessionIdleSeconds = 1
	key := r.apply(tu)[0].ListenKey()
	u := user(t, port)
	peer1, _ := mustAsk(t, u, "one")
	if sessionsOf(r.gw, key) != 1 || r.conns["a"].Sessions() != 1 {
		t.Fatalf("sessions: server %d, client %d", sessionsOf(r.gw, key), r.conns["a"].Sessions())
	}
	start := time.Now()
	waitFor(t, "the idle session to end on both sides", func() bool {
		return sessionsOf(r.gw, key) == 0 && r.conns["a"].Sessions() == 0
	})
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("the session ended after %s, before its idle second", d)
	}
	peer2, _ := mustAsk(t, u, "two")
	if peer1 == peer2 {
		t.Errorf("after expiry the backend still sees the old socket %s", peer1)
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.ended }); got != 1 {
		t.Errorf("%d sessions counted ended, want 1", got)
	}
}

func TestUDPActiveSessionsStayAlive(t *testing.T) {
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	tu := udpTunnel(port, "echo", "a")
	tu.UdpSessionIdleSeconds = 1
	r.apply(tu)
	u := user(t, port)
	peer, _ := mustAsk(t, u, "start")
	// Traffic every 300 ms for 2.5 s: never idle for a second.
	for i := range 8 {
		time.Sleep(300 * time.Millisecond)
		if p, _ := mustAsk(t, u, fmt.Sprintf("tick %d", i)); p != peer {
			t.Fatalf("a busy session was replaced: %s then %s", peer, p)
		}
	}
}

func TestUDPSessionCap(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	tu := udpTunnel(port, "echo", "a")
	tu.UdpMaxSessions = 3
	r.apply(tu)
	var live []*net.UDPConn
	for i := range 3 {
		u := user(t, port)
		mustAsk(t, u, fmt.Sprintf("live %d", i))
		live = append(live, u)
	}
	extra := user(t, port)
	if got := ask(t, extra, []byte("let me in"), 300*time.Millisecond); got != "" {
		t.Fatalf("a source beyond the cap got %q", got)
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.refused[RejectSessionCap] }); got != 1 {
		t.Errorf("refused for the cap: %d, want 1", got)
	}
	for i, u := range live {
		mustAsk(t, u, fmt.Sprintf("still here %d", i))
	}
	// Raising the cap lets the new source in, live sessions untouched.
	tu.UdpMaxSessions = 4
	r.apply(tu)
	mustAsk(t, extra, "now")
	mustAsk(t, live[0], "unchanged")
}

func TestUDPUnknownServiceRefused(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	key := r.apply(udpTunnel(port, "nope", "a"))[0].ListenKey()
	u := user(t, port)
	if got := ask(t, u, []byte("hello?"), 300*time.Millisecond); got != "" {
		t.Fatalf("an unknown service answered %q", got)
	}
	waitFor(t, "the refusal to be counted", func() bool {
		return r.obs.get(func(c *udpCounts) int { return c.refused[RejectUnknownService] }) == 1
	})
	if n := sessionsOf(r.gw, key); n != 0 {
		t.Errorf("a refused session stays: %d", n)
	}
	if len(be.saw()) != 0 {
		t.Error("the backend was reached")
	}
}

func TestUDPNoClientRefused(t *testing.T) {
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	r.publish() // a is registered but not connected
	port := freeUDPPort(t)
	r.apply(udpTunnel(port, "echo", "a"))
	u := user(t, port)
	if got := ask(t, u, []byte("anyone?"), 200*time.Millisecond); got != "" {
		t.Fatalf("got %q", got)
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.refused[RejectNoClient] }); got != 1 {
		t.Errorf("refused, client unreachable: %d, want 1", got)
	}
	r.publish("a")
	mustAsk(t, u, "now")
}

func TestUDPLargeDatagrams(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	// A service name long enough that the largest IPv4 datagram, framed,
	// exceeds what UDP carries (a 19-byte name makes a 34-byte header).
	const svc = "a-long-service-name"
	r := newUDPRig(t, map[string]map[string]string{"a": {svc: be.addr}}, nil)
	port := freeUDPPort(t)
	r.apply(udpTunnel(port, svc, "a"))
	u := user(t, port)
	u.SetReadBuffer(1 << 20)
	peer, _ := mustAsk(t, u, "small")
	// 1,452 bytes (a WireGuard packet inside ours) and 60,000 cross whole;
	// both are counted fragmented, each way.
	for _, size := range []int{1452, 60000} {
		msg := strings.Repeat("x", size)
		got := ask(t, u, []byte(msg), ftPrompt)
		if got != peer+"|"+msg {
			t.Fatalf("%d-byte datagram: reply of %d bytes", size, len(got))
		}
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.fragmented }); got != 4 {
		t.Errorf("%d datagrams counted fragmented, want 4", got)
	}
	// The largest IPv4 datagram does not fit once framed: dropped, counted.
	big := make([]byte, udpMaxPayload4)
	if got := ask(t, u, big, 300*time.Millisecond); got != "" {
		t.Errorf("an oversized datagram got a reply of %d bytes", len(got))
	}
	if got := r.obs.get(func(c *udpCounts) int { return c.dropped[DropOversized] }); got != 1 {
		t.Errorf("%d dropped as oversized, want 1", got)
	}
	mustAsk(t, u, "still fine")
}

func TestUDPTunnelRemovedClosesSessions(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	keep, drop := freeUDPPort(t), freeUDPPort(t)
	tk, td := udpTunnel(keep, "echo", "a"), udpTunnel(drop, "echo", "a")
	r.apply(tk, td)
	uk, ud := user(t, keep), user(t, drop)
	peer, _ := mustAsk(t, uk, "keep")
	for i := range 5 {
		mustAsk(t, user(t, drop), fmt.Sprintf("drop %d", i))
	}
	mustAsk(t, ud, "drop me")
	if got := r.conns["a"].Sessions(); got != 7 {
		t.Fatalf("client sessions %d, want 7", got)
	}
	// A change of the kept tunnel's service applies to new sessions only.
	tk.BackEndService = "other"
	r.apply(tk)
	waitFor(t, "the removed tunnel's sessions to close on the client", func() bool { return r.conns["a"].Sessions() == 1 })
	if p, _ := mustAsk(t, uk, "still"); p != peer {
		t.Errorf("the kept tunnel's session moved: %s then %s", peer, p)
	}
	if got := ask(t, ud, []byte("gone?"), 300*time.Millisecond); got != "" {
		t.Errorf("the removed tunnel still answers: %q", got)
	}
	// The port is free again.
	pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", drop))
	if err != nil {
		t.Fatalf("the removed tunnel's port is still bound: %v", err)
	}
	pc.Close()
}

func TestUDPFailoverNewSessionsOnly(t *testing.T) {
	ftCheckGoroutines(t)
	ba, bb := startUDPBackend(t), startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": ba.addr}, "b": {"echo": bb.addr}}, nil)
	port := freeUDPPort(t)
	r.apply(udpTunnel(port, "echo", "a", "b"))
	u1 := user(t, port)
	mustAsk(t, u1, "on a")
	// Hot swap: b first. u1 stays on a; a new user goes to b.
	r.apply(udpTunnel(port, "echo", "b", "a"))
	mustAsk(t, u1, "still a")
	u2 := user(t, port)
	mustAsk(t, u2, "on b")
	if got := len(ba.saw()); got != 2 {
		t.Errorf("backend a saw %d datagrams, want 2", got)
	}
	if got := len(bb.saw()); got != 1 {
		t.Errorf("backend b saw %d datagrams, want 1", got)
	}
	// b is lost: its live session moves to a with its next datagram.
	r.publish("a")
	mustAsk(t, u2, "moved to a")
	if got := len(ba.saw()); got != 3 {
		t.Errorf("after b was lost backend a saw %d datagrams, want 3", got)
	}
	// a alone, then lost with nobody to take over: the session stays (a
	// short outage does not cut it) and works when a is back.
	r.apply(udpTunnel(port, "echo", "a"))
	r.publish()
	peerBefore := ba.saw()[0].peer
	if p, _ := mustAsk(t, u1, "during the outage"); p != peerBefore {
		t.Errorf("the session was replaced over a short outage: %s then %s", peerBefore, p)
	}
	r.publish("a")
	if p, _ := mustAsk(t, u1, "back"); p != peerBefore {
		t.Errorf("the session was replaced after a short outage: %s then %s", peerBefore, p)
	}
	// A removed client's sessions are closed at once.
	if n := r.gw.CloseClient("a"); n != 2 {
		t.Errorf("CloseClient closed %d sessions, want 2", n)
	}
}

func TestUDPChangeAllOrNothing(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := freeUDPPort(t)
	_, err = r.gw.Apply([]Tunnel{udpTunnel(free, "echo", "a"), udpTunnel(busy.LocalAddr().(*net.UDPAddr).Port, "echo", "a")})
	if !errors.Is(err, ErrListen) {
		t.Fatalf("Apply with a busy port: %v, want ErrListen", err)
	}
	// Nothing was left open.
	pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", free))
	if err != nil {
		t.Fatalf("a refused change left its UDP port bound: %v", err)
	}
	pc.Close()
	if len(r.gw.Tunnels()) != 0 {
		t.Errorf("tunnels in force after a refused change: %+v", r.gw.Tunnels())
	}
	// A gateway without a tunnel socket refuses UDP as invalid.
	r2 := newUDPRig(t, nil, func(c *GatewayConfig) { c.TunnelPacket = nil })
	if _, err := r2.gw.Apply([]Tunnel{udpTunnel(free, "echo", "a")}); !errors.Is(err, ErrInvalid) {
		t.Errorf("UDP without a tunnel socket: %v, want ErrInvalid", err)
	}
}

func TestUDPCloseEndsEverything(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	r.apply(udpTunnel(port, "echo", "a"))
	for i := range 10 {
		mustAsk(t, user(t, port), fmt.Sprintf("u%d", i))
	}
	ftWithin(t, ftPrompt, "Gateway.Close", func() { r.gw.Close() })
	waitFor(t, "the client's sessions to close", func() bool { return r.conns["a"].Sessions() == 0 })
	if got := r.obs.get(func(c *udpCounts) int { return c.started - c.ended }); got != 0 {
		t.Errorf("%d sessions not counted ended", got)
	}
	if _, err := r.gw.Apply([]Tunnel{udpTunnel(port, "echo", "a")}); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close: %v", err)
	}
}

// TestUDPClientRestartsSessions: a client that lost its sessions (it
// restarted) sets them up again from the next frame; nothing else is
// needed since every frame describes its session.
func TestUDPClientRestartsSessions(t *testing.T) {
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	r.apply(udpTunnel(port, "echo", "a"))
	u := user(t, port)
	peer1, _ := mustAsk(t, u, "before")
	// CloseAll, as for a server that restarted: its sessions end, and
	// the connector keeps serving new ones.
	c := r.conns["a"]
	if n := c.CloseAll(); n != 1 || c.Sessions() != 0 {
		t.Fatalf("CloseAll closed %d sessions, %d left; want 1, 0", n, c.Sessions())
	}
	peer2, _ := mustAsk(t, u, "after")
	if peer1 == peer2 {
		t.Errorf("the client reused a closed socket")
	}
}

// TestUDPIdleSessionMemory reports what an idle session costs the server:
// no goroutine, and the heap per session. Figures only; run with -v.
func TestUDPIdleSessionMemory(t *testing.T) {
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": "127.0.0.1:9"}}, nil)
	port := freeUDPPort(t)
	tu := udpTunnel(port, "echo", "a")
	tu.UdpMaxSessions = 20000
	r.apply(tu)
	r.gw.mu.Lock()
	var l *udpListener
	for _, x := range r.gw.udp {
		l = x
	}
	r.gw.mu.Unlock()
	const n = 10000
	dir := r.dir.Load()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i >> 8)}), uint16(1024+i))
		if s, reason := l.begin(udpKey{src: src, dst: netip.MustParseAddr("127.0.0.1")}, dir); s == nil {
			t.Fatalf("session %d refused: %s", i, reason)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if g := runtime.NumGoroutine() - g0; g > 0 {
		t.Errorf("%d idle sessions started %d goroutines", n, g)
	}
	if got := l.count(); got != n {
		t.Fatalf("%d sessions, want %d", got, n)
	}
	perSession := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("server heap per idle UDP session: %.0f bytes (%d sessions, no goroutine each)", perSession, n)
	if perSession > 4096 {
		t.Errorf("an idle session costs %.0f bytes of heap", perSession)
	}
}

// TestUDPWildcardRepliesFromTheAddressUsed: a tunnel on every address
// answers from the address each user wrote to, and names it in the PROXY
// header. A user writing to 127.0.0.2 gets nothing from 127.0.0.1 (the
// kernel's own choice of source for a reply to 127.0.0.1).
func TestUDPWildcardRepliesFromTheAddressUsed(t *testing.T) {
	ftCheckGoroutines(t)
	be := startUDPBackend(t)
	r := newUDPRig(t, map[string]map[string]string{"a": {"echo": be.addr}}, nil)
	port := freeUDPPort(t)
	tu := udpTunnel(port, "echo", "a")
	tu.ListenAddress = ""
	tu.HaProxyProxyProtocol = true
	r.apply(tu)
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "::1"} {
		u, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port))))
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if ip == "::1" {
			// Where the host has no IPv6 loopback, skip that address only.
			if _, err := u.Write([]byte("probe")); err != nil {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			u.SetReadDeadline(time.Now().Add(ftPrompt))
			u.Read(make([]byte, 64))
		}
		mustAsk(t, u, "to "+ip)
		var last udpSeen
		for _, s := range be.saw() {
			if string(s.data) == "to "+ip {
				last = s
			}
		}
		if last.header == nil {
			t.Fatalf("%s: no PROXY header seen", ip)
		}
		src, dst, _ := last.header.UDPAddrs()
		if dst.String() != net.JoinHostPort(ip, fmt.Sprint(port)) || src.String() != u.LocalAddr().String() {
			t.Errorf("PROXY header %s -> %s, user %s -> %s", src, dst, u.LocalAddr(), u.RemoteAddr())
		}
	}
}

// BenchmarkUDPFraming is the per-datagram cost of the self-describing
// header: writing it in front of a payload on the server, and parsing it
// and looking the session's service up on the client.
func BenchmarkUDPFraming(b *testing.B) {
	hdr, err := dataHeader(udpSession{id: 7, idle: 120 * time.Second, service: []byte("dns"),
		src: netip.MustParseAddrPort("203.0.113.9:40000")})
	if err != nil {
		b.Fatal(err)
	}
	services := map[string]string{"dns": "127.0.0.1:5353"}
	buf := make([]byte, udpMaxDataHeader+256)
	b.SetBytes(256)
	for b.Loop() {
		start := udpMaxDataHeader - len(hdr)
		copy(buf[start:], hdr)
		s, payload, err := parseData(buf[start:])
		if err != nil || len(payload) != 256 {
			b.Fatal(err)
		}
		if _, ok := services[string(s.service)]; !ok {
			b.Fatal("no service")
		}
	}
}

// TestTunnelsCountLiveTCPConnections: GET /tunnels' ActiveSessions counts
// a TCP tunnel's live connections too.
func TestTunnelsCountLiveTCPConnections(t *testing.T) {
	s := ftNewSetup(t, 0)
	count := func() int {
		ts := s.h.gw.Tunnels()
		if len(ts) != 1 || ts[0].ActiveSessions == nil {
			t.Fatalf("Tunnels() = %+v", ts)
		}
		return *ts[0].ActiveSessions
	}
	if n := count(); n != 0 {
		t.Fatalf("ActiveSessions %d before any connection", n)
	}
	a, b := ftDialPublic(t, s.tunnel.ListenPort), ftDialPublic(t, s.tunnel.ListenPort)
	ftEcho(t, a, "one")
	ftEcho(t, b, "two")
	if n := count(); n != 2 {
		t.Errorf("ActiveSessions %d with two live connections", n)
	}
	a.Close()
	waitFor(t, "the closed connection to leave the count", func() bool { return count() == 1 })
}

// TestUDPBackendDownRefused: a service that is not listening (ICMP port
// unreachable) ends the session on the client, which the server counts;
// the client keeps no socket for it.
func TestUDPBackendDownRefused(t *testing.T) {
	ftCheckGoroutines(t)
	dead := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	r := newUDPRig(t, map[string]map[string]string{"a": {"dead": dead}}, nil)
	port := freeUDPPort(t)
	key := r.apply(udpTunnel(port, "dead", "a"))[0].ListenKey()
	u := user(t, port)
	if got := ask(t, u, []byte("hello?"), 300*time.Millisecond); got != "" {
		t.Fatalf("a dead service answered %q", got)
	}
	waitFor(t, "the refusal to be counted", func() bool {
		return r.obs.get(func(c *udpCounts) int { return c.refused[RejectBackendUnreachable] }) >= 1
	})
	waitFor(t, "the session to end on both sides", func() bool {
		return sessionsOf(r.gw, key) == 0 && r.conns["a"].Sessions() == 0
	})
}

// The client's own choice decides a UDP session's PROXY header as it does
// for TCP, with the mode of its own; v1 and private sources are refused.
func TestUDPBackendProxyChoice(t *testing.T) {
	public := netip.MustParseAddrPort("203.0.113.7:4000")
	private := netip.MustParseAddrPort("192.168.1.2:4000")
	c, err := NewUDPConnector(UDPConnectorConfig{
		Services:            map[string]string{"own2": "127.0.0.1:1", "own2first": "127.0.0.1:2", "own0": "127.0.0.1:3", "own1": "127.0.0.1:4", "server": "127.0.0.1:5"},
		ServiceProxy:        map[string]int{"own2": 2, "own2first": 2, "own0": 0, "own1": 1},
		ServiceUDPProxyMode: map[string]string{"own2first": UDPProxyFirst},
		Logger:              slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		service string
		asked   udpProxyMode
		src     netip.AddrPort
		want    udpProxyMode
		refused bool
	}{
		{"own2", udpProxyNone, public, udpProxyEvery, false},
		{"own2", udpProxyFirst, public, udpProxyEvery, false}, // the client's mode, not the server's
		{"own2first", udpProxyNone, public, udpProxyFirst, false},
		{"own2", udpProxyNone, private, 0, true},
		{"own0", udpProxyNone, private, udpProxyNone, false},
		{"own0", udpProxyEvery, public, 0, true},
		{"own1", udpProxyNone, public, 0, true},
		{"server", udpProxyFirst, public, udpProxyFirst, false},
		{"server", udpProxyNone, private, udpProxyNone, false},
		{"server", udpProxyEvery, private, 0, true},
	} {
		got, err := c.udpBackendProxy(tc.service, tc.asked, tc.src)
		if tc.refused {
			if !errors.Is(err, ErrRefused) {
				t.Errorf("%s asked %d from %v: %d, %v; want refused", tc.service, tc.asked, tc.src, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s asked %d from %v: %d, %v; want %d", tc.service, tc.asked, tc.src, got, err, tc.want)
		}
	}
	if _, err := NewUDPConnector(UDPConnectorConfig{Services: map[string]string{"a": "127.0.0.1:1"},
		ServiceUDPProxyMode: map[string]string{"a": "sometimes"}, Logger: slog.New(slog.DiscardHandler)}); err == nil {
		t.Error("a bad UDP PROXY mode was accepted")
	}
}
