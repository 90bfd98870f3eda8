package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// --- a UDP backend, and our own PROXY v2 reader ---

// udpEcho is a UDP service on the client's side. It answers each datagram
// with "<name>|<peer it saw>|<payload>", the payload being what follows a
// PROXY v2 header if the datagram had one, and records what it saw.
type udpEcho struct {
	name string
	pc   *net.UDPConn
	addr string
	mu   sync.Mutex
	seen []udpSeen
}

type udpSeen struct {
	peer    string
	header  *pp2   // nil without a PROXY header
	payload string // at most 64 bytes of it
}

func startUDPEcho(t testing.TB, name string) *udpEcho {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	pc.SetReadBuffer(4 << 20)
	e := &udpEcho{name: name, pc: pc, addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			h, rest, err := parsePP2(buf[:n])
			if err != nil {
				// A malformed header: record it, answer nothing.
				rest = nil
			}
			s := udpSeen{peer: from.String(), header: h, payload: string(rest[:min(len(rest), 64)])}
			e.mu.Lock()
			e.seen = append(e.seen, s)
			e.mu.Unlock()
			if err == nil {
				reply := append([]byte(e.name+"|"+s.peer+"|"), rest...)
				pc.WriteToUDPAddrPort(reply[:min(len(reply), 65000)], from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return e
}

func (e *udpEcho) saw() []udpSeen {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]udpSeen(nil), e.seen...)
}

func (e *udpEcho) peers() map[string]int {
	m := map[string]int{}
	for _, s := range e.saw() {
		m[s.peer]++
	}
	return m
}

// pp2 is a PROXY v2 header as our own reader parses it, independently of
// the library the client writes it with.
type pp2 struct {
	command  byte // 1: PROXY
	family   byte // 0x12: UDP over IPv4, 0x22: UDP over IPv6
	src, dst netip.AddrPort
}

var pp2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// parsePP2 reads a PROXY v2 header at the start of a datagram: nil if the
// datagram has none, an error if it has a broken one.
func parsePP2(b []byte) (*pp2, []byte, error) {
	if !bytes.HasPrefix(b, pp2Signature) {
		return nil, b, nil
	}
	if len(b) < 16 {
		return nil, nil, errors.New("short PROXY v2 header")
	}
	if b[12]>>4 != 2 {
		return nil, nil, fmt.Errorf("PROXY version %d", b[12]>>4)
	}
	h := &pp2{command: b[12] & 0x0f, family: b[13]}
	l := int(binary.BigEndian.Uint16(b[14:16]))
	if len(b) < 16+l {
		return nil, nil, errors.New("PROXY v2 header longer than the datagram")
	}
	body := b[16 : 16+l]
	switch h.family {
	case 0x12:
		if len(body) < 12 {
			return nil, nil, errors.New("short IPv4 addresses")
		}
		h.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:]))
		h.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:]))
	case 0x22:
		if len(body) < 36 {
			return nil, nil, errors.New("short IPv6 addresses")
		}
		h.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:]))
		h.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:]))
	default:
		return nil, nil, fmt.Errorf("PROXY v2 family/transport 0x%02x is not UDP", h.family)
	}
	return h, b[16+l:], nil
}

// --- users ---

// udpUser is one public user: a socket connected to the tunnel's port.
func udpUser(t testing.TB, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// udpAsk sends msg and returns the reply's backend name, the peer the
// backend saw, and the echoed payload; ok is false without a reply.
func udpAsk(c *net.UDPConn, msg string, wait time.Duration) (name, peer, echo string, ok bool) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", "", "", false
	}
	buf := make([]byte, 1<<16)
	c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		return "", "", "", false
	}
	parts := strings.SplitN(string(buf[:n]), "|", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// mustUDPAsk retries a few times (the session's first datagram may race the
// client coming up) and checks the echo and the backend.
func mustUDPAsk(t testing.TB, c *net.UDPConn, msg, wantBackend string) (peer string) {
	t.Helper()
	for range 10 {
		name, peer, echo, ok := udpAsk(c, msg, time.Second)
		if !ok {
			continue
		}
		if echo != msg || name != wantBackend {
			t.Fatalf("via %s: reply from %q echoing %q, want %q echoing %q", c.RemoteAddr(), name, echo, wantBackend, msg)
		}
		return peer
	}
	t.Fatalf("no reply to %q via %s", msg, c.RemoteAddr())
	return ""
}

func udpRefused(t testing.TB, c *net.UDPConn, msg string) {
	t.Helper()
	if name, _, _, ok := udpAsk(c, msg, 500*time.Millisecond); ok {
		t.Fatalf("via %s: %q was answered by %s, want no answer", c.RemoteAddr(), msg, name)
	}
}

// --- observing the processes ---

// sockets counts the process's open sockets: a client keeps one per UDP
// session.
func (p *proc) sockets(t testing.TB) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func (s *server) metric(t testing.TB, series string) float64 {
	t.Helper()
	code, body, err := s.call("GET", "/metrics", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	v, _ := metricValue(string(body), series)
	return v
}

func (s *server) tunnelSessions(t testing.TB, port int) int {
	t.Helper()
	for _, tu := range s.tunnels(t) {
		if tu.Protocol == "udp" && tu.ListenPort == port {
			if tu.ActiveSessions == nil {
				t.Fatalf("GET /tunnels shows no ActiveSessions: %+v", tu)
			}
			return *tu.ActiveSessions
		}
	}
	t.Fatalf("GET /tunnels has no UDP tunnel on port %d", port)
	return 0
}

// udpSetup is a server, one connected client and a UDP echo service.
func udpSetup(t *testing.T, services func(echo *udpEcho) map[string]string) (*server, *client, *udpEcho) {
	t.Helper()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck})
	echo := startUDPEcho(t, "echo")
	svc := map[string]string{"echo": echo.addr}
	if services != nil {
		svc = services(echo)
	}
	cl := startClient(t, srv, "home", ck, svc)
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	return srv, cl, echo
}

func udpT(port int, service string, clients ...string) tunnel {
	return tunnel{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: service, ClientIds: clients}
}

// --- the tests ---

// TestUDPThousandsInOrder: thousands of datagrams on one session reach an
// echo service and come back, none lost and none reordered on loopback;
// GET /tunnels and /metrics show the tunnel, its session and its counts.
func TestUDPThousandsInOrder(t *testing.T) {
	t.Parallel()
	srv, _, echo := udpSetup(t, nil)
	port := freePort(t, "udp")
	applied := srv.mustPutTunnels(t, []tunnel{udpT(port, "echo", "home")})
	if applied[0].Protocol != "udp" || applied[0].UdpSessionIdleSeconds != 120 || applied[0].UdpMaxSessions != 10000 || applied[0].ListenHostnameGlob != "" {
		t.Errorf("applied UDP tunnel lacks its defaults: %+v", applied[0])
	}
	u := udpUser(t, port)
	peer := mustUDPAsk(t, u, "first", "echo")

	const total, window = 5000, 32
	buf := make([]byte, 2048)
	lost, reordered, last := 0, 0, -1
	inBytes := len("first")
	start := time.Now()
	for sent := 0; sent < total; {
		burst := min(window, total-sent)
		for i := range burst {
			n, _ := fmt.Fprintf(u, "seq %d %s", sent+i, strings.Repeat("p", 200))
			inBytes += n
		}
		sent += burst
		for got := 0; got < burst; got++ {
			u.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := u.Read(buf)
			if err != nil {
				lost += burst - got
				break
			}
			parts := strings.SplitN(string(buf[:n]), "|", 3)
			var seq int
			if len(parts) != 3 || parts[1] != peer {
				t.Fatalf("reply %q is not from this session's peer %s", buf[:min(n, 80)], peer)
			}
			fmt.Sscanf(parts[2], "seq %d", &seq)
			if seq <= last {
				reordered++
			}
			last = seq
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d datagrams of about 209 bytes echoed in %s (%.0f round trips/s, window %d): lost %d, reordered %d",
		total, elapsed, total/elapsed.Seconds(), window, lost, reordered)
	if lost != 0 || reordered != 0 {
		t.Errorf("lost %d and reordered %d of %d datagrams on loopback", lost, reordered, total)
	}
	if n := len(echo.peers()); n != 1 {
		t.Errorf("the service saw %d peers for one user", n)
	}
	if n := srv.tunnelSessions(t, port); n != 1 {
		t.Errorf("GET /tunnels ActiveSessions %d, want 1", n)
	}
	route := fmt.Sprintf("127.0.0.1:%d/udp", port)
	for series, want := range map[string]float64{
		fmt.Sprintf(`threshold_udp_datagrams_total{direction="in",tunnel=%q}`, route):  total + 1,
		fmt.Sprintf(`threshold_udp_datagrams_total{direction="out",tunnel=%q}`, route): total + 1,
		fmt.Sprintf(`threshold_udp_sessions_active{tunnel=%q}`, route):                 1,
		fmt.Sprintf(`threshold_udp_sessions_total{tunnel=%q}`, route):                  1,
		fmt.Sprintf(`threshold_udp_bytes_total{direction="in",tunnel=%q}`, route):      float64(inBytes),
	} {
		if got := srv.metric(t, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// TestUDP500Sessions: 500 users at once, each its own session and its own
// socket toward the service, each getting only its own replies; the server
// holds no socket and no goroutine per session.
func TestUDP500Sessions(t *testing.T) {
	t.Parallel()
	srv, cl, echo := udpSetup(t, nil)
	port := freePort(t, "udp")
	srv.mustPutTunnels(t, []tunnel{udpT(port, "echo", "home")})
	mustUDPAsk(t, udpUser(t, port), "warm up", "echo")
	serverSockets, clientSockets := srv.sockets(t), cl.sockets(t)
	goroutines := srv.metric(t, "go_goroutines")

	const users, each = 500, 4
	conns := make([]*net.UDPConn, users)
	for i := range conns {
		conns[i] = udpUser(t, port)
	}
	var wg sync.WaitGroup
	errs := make(chan error, users)
	peers := make([]string, users)
	for i, u := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range each {
				msg := fmt.Sprintf("user %d datagram %d", i, k)
				var ok bool
				var name, peer, echoed string
				for range 5 {
					if name, peer, echoed, ok = udpAsk(u, msg, 2*time.Second); ok {
						break
					}
				}
				switch {
				case !ok:
					errs <- fmt.Errorf("user %d: no reply to %q", i, msg)
					return
				case echoed != msg || name != "echo":
					errs <- fmt.Errorf("user %d got %q from %s, want its own %q", i, echoed, name, msg)
					return
				case peers[i] != "" && peer != peers[i]:
					errs <- fmt.Errorf("user %d moved from peer %s to %s", i, peers[i], peer)
					return
				}
				peers[i] = peer
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	distinct := map[string]bool{}
	for _, p := range peers {
		distinct[p] = true
	}
	if len(distinct) != users {
		t.Errorf("the service saw %d peers for %d users", len(distinct), users)
	}
	if n := srv.tunnelSessions(t, port); n != users+1 {
		t.Errorf("GET /tunnels ActiveSessions %d, want %d", n, users+1)
	}
	if n := cl.sockets(t) - clientSockets; n != users {
		t.Errorf("the client opened %d sockets for %d sessions, want one each", n, users)
	}
	if n := srv.sockets(t) - serverSockets; n != 0 {
		t.Errorf("the server opened %d sockets for %d sessions, want none", n, users)
	}
	if n := srv.metric(t, "go_goroutines") - goroutines; n > 20 {
		t.Errorf("the server has %v more goroutines with %d more sessions", n, users)
	}
	if n := len(echo.peers()); n != users+1 {
		t.Errorf("the service saw %d peers, want %d", n, users+1)
	}
}

// TestUDPIdleExpiry: a session idle for UdpSessionIdleSeconds ends on the
// server and on the client (its socket toward the service closes); the
// same user then starts a new session.
func TestUDPIdleExpiry(t *testing.T) {
	t.Parallel()
	srv, cl, _ := udpSetup(t, nil)
	port := freePort(t, "udp")
	tu := udpT(port, "echo", "home")
	tu.UdpSessionIdleSeconds = 2
	srv.mustPutTunnels(t, []tunnel{tu})
	base := cl.sockets(t)
	u := udpUser(t, port)
	peer1 := mustUDPAsk(t, u, "hello", "echo")
	if n := srv.tunnelSessions(t, port); n != 1 {
		t.Fatalf("ActiveSessions %d, want 1", n)
	}
	if n := cl.sockets(t); n != base+1 {
		t.Fatalf("client sockets %d, want %d", n, base+1)
	}
	// Kept alive by traffic for longer than its idle time.
	for i := range 4 {
		time.Sleep(time.Second)
		if p := mustUDPAsk(t, u, fmt.Sprintf("busy %d", i), "echo"); p != peer1 {
			t.Fatalf("a busy session was replaced: %s then %s", peer1, p)
		}
	}
	idleSince := time.Now()
	waitUntil(t, 10*time.Second, "the idle session to end", func() bool { return srv.tunnelSessions(t, port) == 0 })
	if d := time.Since(idleSince); d < 1500*time.Millisecond {
		t.Errorf("the session ended %s after its last datagram, before its 2 s idle time", d)
	}
	waitUntil(t, 10*time.Second, "the client's socket to close", func() bool { return cl.sockets(t) == base })
	if p := mustUDPAsk(t, u, "again", "echo"); p == peer1 {
		t.Errorf("after expiry the service still sees the old socket %s", p)
	}
}

// TestUDPSessionCap: at UdpMaxSessions new sources are refused and
// counted; live sessions are never evicted.
func TestUDPSessionCap(t *testing.T) {
	t.Parallel()
	srv, _, _ := udpSetup(t, nil)
	port := freePort(t, "udp")
	tu := udpT(port, "echo", "home")
	tu.UdpMaxSessions = 3
	srv.mustPutTunnels(t, []tunnel{tu})
	var live []*net.UDPConn
	for i := range 3 {
		u := udpUser(t, port)
		mustUDPAsk(t, u, fmt.Sprintf("live %d", i), "echo")
		live = append(live, u)
	}
	for i := range 2 {
		udpRefused(t, udpUser(t, port), fmt.Sprintf("over the cap %d", i))
	}
	for i, u := range live {
		mustUDPAsk(t, u, fmt.Sprintf("still live %d", i), "echo")
	}
	series := fmt.Sprintf(`threshold_udp_sessions_refused_total{reason="session_cap",tunnel="127.0.0.1:%d/udp"}`, port)
	if got := srv.metric(t, series); got != 2 {
		t.Errorf("%s = %v, want 2", series, got)
	}
	if n := srv.tunnelSessions(t, port); n != 3 {
		t.Errorf("ActiveSessions %d, want 3", n)
	}
}

// TestUDPFailover: new sessions go to the active client; live ones stay on
// theirs (hot swap) until that client is lost, then move.
func TestUDPFailover(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	srv := startServer(t, map[string]wg.Key{"home-a": ka, "home-b": kb})
	ea, eb := startUDPEcho(t, "backend-a"), startUDPEcho(t, "backend-b")
	startClient(t, srv, "home-a", ka, map[string]string{"game": ea.addr})
	cb := startClient(t, srv, "home-b", kb, map[string]string{"game": eb.addr})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	port := freePort(t, "udp")
	srv.mustPutTunnels(t, []tunnel{udpT(port, "game", "home-a", "home-b")})
	u1 := udpUser(t, port)
	mustUDPAsk(t, u1, "u1 on a", "backend-a")

	// Hot swap: b preferred. u1 stays on a; a new user goes to b.
	srv.mustPutTunnels(t, []tunnel{udpT(port, "game", "home-b", "home-a")})
	mustUDPAsk(t, u1, "u1 still on a", "backend-a")
	u2 := udpUser(t, port)
	mustUDPAsk(t, u2, "u2 on b", "backend-b")
	if ts := srv.tunnels(t); ts[0].ActiveClientId != "home-b" {
		t.Errorf("ActiveClientId %q, want home-b", ts[0].ActiveClientId)
	}

	// b is lost: new sessions and b's live one go to a.
	cb.kill()
	srv.waitState(t, "home-b", "ClientDisconnected", 15*time.Second)
	mustUDPAsk(t, u2, "u2 moved to a", "backend-a")
	mustUDPAsk(t, udpUser(t, port), "u3 on a", "backend-a")
	mustUDPAsk(t, u1, "u1 never moved", "backend-a")
}

// TestUDPTunnelRemoved: removing a UDP tunnel closes its public socket and
// every session, down to the client's sockets toward the service.
func TestUDPTunnelRemoved(t *testing.T) {
	t.Parallel()
	srv, cl, _ := udpSetup(t, nil)
	keep, drop := freePort(t, "udp"), freePort(t, "udp")
	srv.mustPutTunnels(t, []tunnel{udpT(keep, "echo", "home"), udpT(drop, "echo", "home")})
	base := cl.sockets(t)
	uk := udpUser(t, keep)
	peer := mustUDPAsk(t, uk, "kept", "echo")
	var dropped []*net.UDPConn
	for i := range 10 {
		u := udpUser(t, drop)
		mustUDPAsk(t, u, fmt.Sprintf("dropped %d", i), "echo")
		dropped = append(dropped, u)
	}
	if n := cl.sockets(t); n != base+11 {
		t.Fatalf("client sockets %d, want %d", n, base+11)
	}
	srv.mustPutTunnels(t, []tunnel{udpT(keep, "echo", "home")})
	waitUntil(t, 10*time.Second, "the removed tunnel's sessions to close on the client", func() bool { return cl.sockets(t) == base+1 })
	for _, u := range dropped[:3] {
		udpRefused(t, u, "still there?")
	}
	if p := mustUDPAsk(t, uk, "kept again", "echo"); p != peer {
		t.Errorf("the kept tunnel's session moved: %s then %s", peer, p)
	}
	// Its port is free again.
	pc, err := net.ListenPacket("udp", tcpAddr(drop))
	if err != nil {
		t.Fatalf("the removed tunnel's port is still bound: %v", err)
	}
	pc.Close()
}

// TestUDPProxyV2: PROXY v2 with the DGRAM transport, on every datagram and
// on the first datagram of each session, read by our own parser and
// checked against the sender's real address.
func TestUDPProxyV2(t *testing.T) {
	t.Parallel()
	srv, _, echo := udpSetup(t, nil)
	every, first := freePort(t, "udp"), freePort(t, "udp")
	te := udpT(every, "echo", "home")
	te.HaProxyProxyProtocol = true
	tf := udpT(first, "echo", "home")
	tf.HaProxyProxyProtocol, tf.UdpProxyProtocolMode = true, "first"
	applied := srv.mustPutTunnels(t, []tunnel{te, tf})
	if applied[0].UdpProxyProtocolMode != "every" || applied[0].HaProxyProxyProtocolVersion != 2 {
		t.Errorf("PROXY defaults of a UDP tunnel: %+v", applied[0])
	}
	for _, c := range []struct {
		port  int
		every bool
	}{{every, true}, {first, false}} {
		for user := range 2 { // each session gets its own header
			u := udpUser(t, c.port)
			tag := fmt.Sprintf("port %d user %d", c.port, user)
			for i := range 3 {
				mustUDPAsk(t, u, fmt.Sprintf("%s datagram %d", tag, i), "echo")
			}
			var mine []udpSeen
			for _, s := range echo.saw() {
				if strings.HasPrefix(s.payload, tag) {
					mine = append(mine, s)
				}
			}
			if len(mine) != 3 {
				t.Fatalf("%s: the service saw %d datagrams, want 3", tag, len(mine))
			}
			for i, s := range mine {
				if want := c.every || i == 0; (s.header != nil) != want {
					t.Fatalf("%s datagram %d: PROXY header present %v, want %v", tag, i, s.header != nil, want)
				}
				if s.header == nil {
					continue
				}
				if s.header.command != 1 || s.header.family != 0x12 {
					t.Errorf("%s: header command %d family 0x%02x, want PROXY (1) over UDP/IPv4 (0x12)", tag, s.header.command, s.header.family)
				}
				if s.header.src.String() != u.LocalAddr().String() || s.header.dst.String() != u.RemoteAddr().String() {
					t.Errorf("%s: header says %s -> %s, the sender was %s -> %s", tag, s.header.src, s.header.dst, u.LocalAddr(), u.RemoteAddr())
				}
			}
		}
	}
}

// TestUDPRefusalsAndValidation: a bad UDP tunnel list is refused with every
// problem listed and the old list in force; an unknown service and an
// unreachable client are refused and counted.
func TestUDPRefusalsAndValidation(t *testing.T) {
	t.Parallel()
	srv, _, _ := udpSetup(t, nil)
	port := freePortBoth(t)
	good := srv.mustPutTunnels(t, []tunnel{udpT(port, "echo", "home"), {Protocol: "tcp", ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "echo", ClientId: "home"}})
	if len(good) != 2 {
		t.Fatalf("a TCP and a UDP tunnel on port %d: %+v", port, good)
	}
	bad := []tunnel{
		{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port, ListenHostnameGlob: "*.example.com", BackEndService: "echo", ClientId: "home"},
		{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port + 1, BackEndService: "echo", ClientId: "home", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 1},
		{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port + 2, BackEndService: "echo", ClientId: "home", UdpSessionIdleSeconds: 100000, UdpMaxSessions: -5},
		{Protocol: "quic", ListenAddress: "127.0.0.1", ListenPort: port + 3, BackEndService: "echo", ClientId: "home"},
		{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port + 4, BackEndService: "echo", ClientId: "nobody"},
	}
	code, body, err := srv.call("PUT", "/tunnels", bad)
	if err != nil || code != http.StatusBadRequest {
		t.Fatalf("PUT of bad UDP tunnels: %d %s %v", code, body, err)
	}
	var answer struct{ Problems []string }
	json.Unmarshal(body, &answer)
	all := strings.Join(answer.Problems, "\n")
	for _, want := range []string{"tunnels[0].ListenHostnameGlob", "tunnels[1].HaProxyProxyProtocolVersion", "tunnels[2].UdpSessionIdleSeconds", "tunnels[2].UdpMaxSessions", "tunnels[3].Protocol", `client "nobody" is not registered`} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %s:\n%s", want, all)
		}
	}
	if ts := srv.tunnels(t); len(ts) != 2 || ts[0].Protocol != "udp" || ts[1].Protocol != "tcp" {
		t.Errorf("after a refused PUT: %+v", ts)
	}
	u := udpUser(t, port)
	mustUDPAsk(t, u, "old list in force", "echo")

	// Unknown service on the client: refused, counted.
	unknown := freePort(t, "udp")
	srv.mustPutTunnels(t, []tunnel{udpT(port, "echo", "home"), udpT(unknown, "no-such-service", "home")})
	udpRefused(t, udpUser(t, unknown), "anyone?")
	series := fmt.Sprintf(`threshold_udp_sessions_refused_total{reason="unknown_service",tunnel="127.0.0.1:%d/udp"}`, unknown)
	waitUntil(t, 5*time.Second, series, func() bool { return srv.metric(t, series) >= 1 })
	if n := srv.tunnelSessions(t, unknown); n != 0 {
		t.Errorf("a refused session stays: ActiveSessions %d", n)
	}
}

// TestUDPDnsmasq: a real DNS server nobody here wrote, dnsmasq from Debian,
// queried through the tunnel with dig: a short answer, and a 3 KB TXT
// answer that is fragmented inside the tunnel and must arrive whole.
func TestUDPDnsmasq(t *testing.T) {
	t.Parallel()
	dnsmasq, err1 := exec.LookPath("dnsmasq")
	dig, err2 := exec.LookPath("dig")
	if err1 != nil || err2 != nil {
		t.Skip("SKIP: dnsmasq or dig is not installed (Debian: apt-get install dnsmasq-base bind9-dnsutils; .ci/run installs them)")
	}
	// 12 strings of 250 characters: a 3 KB answer.
	var txt []string
	for i := range 12 {
		txt = append(txt, fmt.Sprintf("%02d", i)+strings.Repeat("t", 248))
	}
	var dnsPort int
	var dns *proc
	for attempt := 0; ; attempt++ {
		dnsPort = freePort(t, "udp")
		dns = startCmd(t, "dnsmasq", dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
			"--listen-address=127.0.0.1", "--bind-interfaces", fmt.Sprintf("--port=%d", dnsPort), "--pid-file=",
			"--log-facility=-", "--log-queries", "--edns-packet-max=4096",
			"--address=/example.test/192.0.2.7",
			"--txt-record=big.example.test,"+strings.Join(txt, ","))
		ok := false
		waitUntil(t, 10*time.Second, "dnsmasq to answer", func() bool {
			if !dns.running() {
				return true
			}
			out, _ := exec.Command(dig, "@127.0.0.1", "-p", strconv.Itoa(dnsPort), "+short", "+time=1", "+tries=1", "example.test", "A").Output()
			ok = strings.TrimSpace(string(out)) == "192.0.2.7"
			return ok
		})
		if ok {
			break
		}
		if attempt == 3 {
			t.Fatalf("dnsmasq did not start:\n%s", dns.logs.String())
		}
	}
	srv, _, _ := udpSetup(t, func(*udpEcho) map[string]string {
		return map[string]string{"dns": fmt.Sprintf("127.0.0.1:%d", dnsPort)}
	})
	port := freePort(t, "udp")
	srv.mustPutTunnels(t, []tunnel{udpT(port, "dns", "home")})
	query := func(args ...string) string {
		t.Helper()
		var out []byte
		var err error
		waitUntil(t, 20*time.Second, "dig through the tunnel", func() bool {
			out, err = exec.Command(dig, append([]string{"@127.0.0.1", "-p", strconv.Itoa(port), "+time=2", "+tries=2", "+notcp", "+ignore"}, args...)...).Output()
			return err == nil && strings.Contains(string(out), "status: NOERROR")
		})
		return string(out)
	}
	a := query("example.test", "A")
	if !strings.Contains(a, "192.0.2.7") {
		t.Fatalf("dig example.test A through the tunnel:\n%s", a)
	}
	big := query("+bufsize=4096", "big.example.test", "TXT")
	if strings.Contains(big, " tc ") || strings.Contains(big, " tc;") {
		t.Fatalf("the TXT answer came truncated:\n%s", big)
	}
	for _, s := range txt {
		if !strings.Contains(big, strconv.Quote(s)) {
			t.Fatalf("the TXT answer lacks %s...:\n%s", s[:8], big)
		}
	}
	route := fmt.Sprintf("127.0.0.1:%d/udp", port)
	if n := srv.metric(t, fmt.Sprintf(`threshold_udp_datagrams_fragmented_total{tunnel=%q}`, route)); n < 1 {
		t.Errorf("the 3 KB answer was not counted fragmented (%v)", n)
	}
	if !strings.Contains(dns.logs.String(), "query[TXT] big.example.test") {
		t.Errorf("dnsmasq did not log the query:\n%s", dns.logs.String())
	}
}

// TestUDPLargeDatagrams: datagrams above the tunnel MTU (a WireGuard
// packet's 1,452 bytes, and up to 60,000) are fragmented inside the tunnel
// and arrive whole both ways, counted; one too large for UDP once framed
// is dropped and counted, and the session goes on.
func TestUDPLargeDatagrams(t *testing.T) {
	t.Parallel()
	const svc = "large-datagrams" // 15 bytes: a 65,507-byte datagram no longer fits once framed
	srv, _, _ := udpSetup(t, func(e *udpEcho) map[string]string { return map[string]string{svc: e.addr} })
	port := freePort(t, "udp")
	srv.mustPutTunnels(t, []tunnel{udpT(port, svc, "home")})
	u := udpUser(t, port)
	mustUDPAsk(t, u, "small first", "echo")
	for i, size := range []int{1452, 8000, 60000} {
		msg := fmt.Sprintf("%d:", i) + strings.Repeat("w", size-2)
		if got := mustUDPAsk(t, u, msg, "echo"); got == "" {
			t.Fatalf("%d bytes: no peer", size)
		}
	}
	route := fmt.Sprintf("127.0.0.1:%d/udp", port)
	if n := srv.metric(t, fmt.Sprintf(`threshold_udp_datagrams_fragmented_total{tunnel=%q}`, route)); n != 6 {
		t.Errorf("%v datagrams counted fragmented, want 6 (3 each way)", n)
	}
	udpRefused(t, u, strings.Repeat("o", 65507))
	if n := srv.metric(t, fmt.Sprintf(`threshold_udp_datagrams_dropped_total{reason="oversized",tunnel=%q}`, route)); n != 1 {
		t.Errorf("%v datagrams dropped as oversized, want 1", n)
	}
	mustUDPAsk(t, u, "still fine", "echo")
}
