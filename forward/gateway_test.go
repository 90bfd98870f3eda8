package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// ---- test fixtures: backend, connector, gateway ----

// ftSeen is what a backend learned about one connection.
type ftSeen struct {
	remote net.Addr
	header *proxyproto.Header
}

// ftBackend is a loopback echo service. With proxy set it requires a PROXY
// header first; with banner set it greets each connection with it.
type ftBackend struct {
	addr   string
	seen   chan ftSeen
	ln     net.Listener
	proxy  bool
	banner string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func ftStartBackend(t *testing.T, proxy bool, banner string) *ftBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &ftBackend{addr: ln.Addr().String(), seen: make(chan ftSeen, 64), ln: ln, proxy: proxy, banner: banner}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			b.wg.Add(1)
			go b.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *ftBackend) serve(c net.Conn) {
	defer b.wg.Done()
	defer c.Close()
	var r io.Reader = c
	s := ftSeen{remote: c.RemoteAddr()}
	if b.proxy {
		pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(ftPrompt))
		s.header = pc.ProxyHeader()
		if s.header == nil {
			return
		}
		r = pc
	}
	select {
	case b.seen <- s:
	default:
	}
	if b.banner != "" {
		if _, err := c.Write([]byte(b.banner)); err != nil {
			return
		}
	}
	io.Copy(c, r)
	c.(*net.TCPConn).CloseWrite()
}

func (b *ftBackend) nextSeen(t *testing.T) ftSeen {
	t.Helper()
	select {
	case s := <-b.seen:
		return s
	case <-time.After(ftPrompt):
		t.Fatal("backend saw no connection")
	}
	panic("unreachable")
}

// ftLoopbackSources lets the tests' senders on loopback be told of in
// PROXY headers, which a client refuses by default.
var ftLoopbackSources = SourcePolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}

// ftStartConnector runs a Connector on a loopback listener.
func ftStartConnector(t *testing.T, services map[string]string, mod func(*ConnectorConfig)) (*Connector, string) {
	t.Helper()
	cfg := ConnectorConfig{Services: services, Logger: ftLogger(), Sources: ftLoopbackSources}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- c.Serve(ln) }()
	t.Cleanup(func() {
		ftWithin(t, ftPrompt, "Connector.Close", func() { c.Close() })
		select {
		case err := <-served:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("Serve returned %v after Close, want ErrClosed", err)
			}
		case <-time.After(ftPrompt):
			t.Error("Serve did not return after Close")
		}
	})
	return c, ln.Addr().String()
}

// ftListener records whether the Gateway closed it.
type ftListener struct {
	net.Listener
	key    string
	closed atomic.Bool
}

func (l *ftListener) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}

func (l *ftListener) port() int { return l.Listener.Addr().(*net.TCPAddr).Port }

// ftGateway is a Gateway whose clients are Connectors on loopback.
type ftGateway struct {
	gw *Gateway

	mu          sync.Mutex
	clients     map[string]string // client ID -> Connector address
	byConnector map[netip.AddrPort]string
	dials       []string
	listens     []*ftListener
	// listenHook, if set, runs before each listen.
	listenHook func(address string)
}

func ftNewGateway(t *testing.T, mod func(*GatewayConfig)) *ftGateway {
	t.Helper()
	h := &ftGateway{clients: map[string]string{}, byConnector: map[netip.AddrPort]string{}}
	cfg := GatewayConfig{
		Logger:    ftLogger(),
		Directory: func() *Directory { return h.directory(nil) },
		Dial: func(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
			h.mu.Lock()
			id := h.byConnector[to]
			h.dials = append(h.dials, id)
			h.mu.Unlock()
			if id == "" {
				return nil, fmt.Errorf("no client at %s", to)
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", to.String())
		},
		Listen: func(ctx context.Context, network, address string) (net.Listener, error) {
			h.mu.Lock()
			hook := h.listenHook
			h.mu.Unlock()
			if hook != nil {
				hook(address)
			}
			var lc net.ListenConfig
			ln, err := lc.Listen(ctx, network, address)
			if err != nil {
				return nil, err
			}
			l := &ftListener{Listener: ln, key: address}
			h.mu.Lock()
			h.listens = append(h.listens, l)
			h.mu.Unlock()
			return l, nil
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.gw = gw
	t.Cleanup(func() { ftWithin(t, ftPrompt, "Gateway.Close", func() { gw.Close() }) })
	return h
}

func (h *ftGateway) addClient(id, addr string) {
	h.mu.Lock()
	h.clients[id] = addr
	h.byConnector[netip.MustParseAddrPort(addr)] = id
	h.mu.Unlock()
}

// directory lists the clients added, each connected unless connected says
// otherwise; each gets a made-up tunnel address from its connector's port.
func (h *ftGateway) directory(connected func(id string) bool) *Directory {
	h.mu.Lock()
	defer h.mu.Unlock()
	var peers []Peer
	for id, addr := range h.clients {
		ap := netip.MustParseAddrPort(addr)
		peers = append(peers, Peer{
			ID:        id,
			Addr:      netip.AddrFrom16([16]byte{0: 0xfd, 14: byte(ap.Port() >> 8), 15: byte(ap.Port())}),
			Connector: ap,
			Connected: connected == nil || connected(id),
		})
	}
	return NewDirectory(peers...)
}

func (h *ftGateway) dialLog() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.dials)
}

func (h *ftGateway) listenLog() []*ftListener {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.listens)
}

// openListeners lists the ports of listeners the Gateway has not closed.
func (h *ftGateway) openListeners() []int {
	var ports []int
	for _, l := range h.listenLog() {
		if !l.closed.Load() {
			ports = append(ports, l.port())
		}
	}
	slices.Sort(ports)
	return ports
}

// ftProblems lists the messages of the errors joined in err.
func ftProblems(err error) []string {
	var out []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
	}
	return out
}

func (h *ftGateway) apply(t *testing.T, ts ...Tunnel) {
	t.Helper()
	if _, err := h.gw.Apply(ts); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// ftFreePort returns a loopback port that was free a moment ago.
func ftFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func ftTunnel(port int, client string) Tunnel {
	return Tunnel{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "echo", ClientId: client}
}

func ftDialPublic(t *testing.T, port int) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), ftPrompt)
	if err != nil {
		t.Fatalf("dialing public port %d: %v", port, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// ftEcho sends msg and expects it back.
func ftEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(ftPrompt))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	ftReadExactly(t, c, []byte(msg))
}

func ftExpectRefused(t *testing.T, port int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), ftPrompt)
	if err == nil {
		c.Close()
		t.Fatalf("port %d still accepts connections", port)
	}
}

// ftSetup is a Gateway with one client "c1" whose "echo" service is an
// echo backend, and a tunnel to it on a free port.
type ftSetup struct {
	h       *ftGateway
	conn    *Connector
	backend *ftBackend
	tunnel  Tunnel
}

func ftNewSetup(t *testing.T, proxyVersion int) *ftSetup {
	t.Helper()
	be := ftStartBackend(t, proxyVersion != 0, "")
	conn, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	h := ftNewGateway(t, nil)
	h.addClient("c1", addr)
	tu := ftTunnel(ftFreePort(t), "c1")
	if proxyVersion != 0 {
		tu.HaProxyProxyProtocol = true
		tu.HaProxyProxyProtocolVersion = proxyVersion
	}
	h.apply(t, tu)
	return &ftSetup{h: h, conn: conn, backend: be, tunnel: tu}
}

// ---- tests ----

func TestNewGatewayRequires(t *testing.T) {
	_, err := NewGateway(GatewayConfig{})
	for _, want := range []string{"Directory", "Dial", "Logger"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("NewGateway with nothing = %v, want %s named", err, want)
		}
	}
	_, err = NewGateway(GatewayConfig{Logger: ftLogger(), Directory: func() *Directory { return nil }})
	if err == nil || !strings.Contains(err.Error(), "Dial") || strings.Contains(err.Error(), "Directory") {
		t.Fatalf("NewGateway without Dial = %v", err)
	}
	g, err := NewGateway(GatewayConfig{Logger: ftLogger(), Directory: func() *Directory { return nil },
		Dial: func(context.Context, netip.AddrPort) (net.Conn, error) { return nil, errors.New("x") }})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Tunnels()) != 0 || g.Live() != 0 {
		t.Errorf("new Gateway has tunnels %v, live %d", g.Tunnels(), g.Live())
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestGatewayEndToEnd(t *testing.T) {
	for v := 0; v <= 2; v++ {
		t.Run(fmt.Sprintf("backend PROXY v%d", v), func(t *testing.T) {
			ftCheckGoroutines(t)
			s := ftNewSetup(t, v)
			port := s.tunnel.ListenPort
			c := ftDialPublic(t, port)
			// An echo that starts with exactly what we sent proves no
			// stray header reached a backend that did not ask for one.
			ftEcho(t, c, "hello")
			seen := s.backend.nextSeen(t)
			if v == 0 {
				if seen.header != nil {
					t.Errorf("backend got a PROXY header it did not ask for")
				}
			} else {
				if seen.header == nil || int(seen.header.Version) != v {
					t.Fatalf("backend header %+v, want version %d", seen.header, v)
				}
				src, dst, ok := seen.header.TCPAddrs()
				if !ok {
					t.Fatalf("header is not TCP: %+v", seen.header)
				}
				if src.String() != c.LocalAddr().String() {
					t.Errorf("backend sees source %v, want the public client's %v", src, c.LocalAddr())
				}
				if dst.String() != c.RemoteAddr().String() {
					t.Errorf("backend sees destination %v, want the public address %v", dst, c.RemoteAddr())
				}
			}
			if d := s.h.dialLog(); !slices.Equal(d, []string{"c1"}) {
				t.Errorf("dials %v, want [c1]", d)
			}
			if n := s.h.gw.Live(); n != 1 {
				t.Errorf("Live() = %d with one connection open", n)
			}

			// A large payload both ways at once.
			payload := ftRandom(t, 512<<10)
			errc := make(chan error, 1)
			go func() {
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				_, err := c.Write(payload)
				errc <- err
			}()
			got := make([]byte, len(payload))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("reading echo: %v", err)
			}
			c.SetReadDeadline(time.Time{})
			if err := <-errc; err != nil {
				t.Fatalf("writing: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("echoed payload differs")
			}

			// Half-close travels all the way: the backend answers the
			// last bytes after our end of stream, then ends its own.
			c.Write([]byte("last words"))
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			rest, err := ftReadAll(t, c, ftPrompt)
			if err != nil || string(rest) != "last words" {
				t.Fatalf("after half-close read %q, %v; want \"last words\" then EOF", rest, err)
			}
			ftWaitFor(t, ftPrompt, "live connections to end", func() bool {
				return s.h.gw.Live() == 0 && s.conn.Live() == 0
			})
		})
	}
}

func TestGatewayEndToEndIPv6(t *testing.T) {
	probe, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	port := probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	ftCheckGoroutines(t)
	be := ftStartBackend(t, true, "")
	_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	h := ftNewGateway(t, nil)
	h.addClient("c1", addr)
	h.apply(t, Tunnel{ListenAddress: "::1", ListenPort: port, BackEndService: "echo", ClientId: "c1", HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2})
	c, err := net.DialTimeout("tcp", net.JoinHostPort("::1", strconv.Itoa(port)), ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ftEcho(t, c, "over ipv6")
	seen := be.nextSeen(t)
	src, dst, ok := seen.header.TCPAddrs()
	if !ok || src.String() != c.LocalAddr().String() || dst.String() != c.RemoteAddr().String() {
		t.Fatalf("backend header %v -> %v, want %v -> %v", src, dst, c.LocalAddr(), c.RemoteAddr())
	}
}

// ftPipeListener hands net.Pipe ends to a Connector.
type ftPipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newFtPipeListener() *ftPipeListener {
	return &ftPipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *ftPipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *ftPipeListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *ftPipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "pipe"} }

func (l *ftPipeListener) dial(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.ch <- b:
		return a, nil
	case <-ctx.Done():
	case <-l.done:
	}
	a.Close()
	b.Close()
	return nil, errors.New("pipe listener gone")
}

func TestGatewayOverPipe(t *testing.T) {
	ftCheckGoroutines(t)
	be := ftStartBackend(t, true, "")
	conn, err := NewConnector(ConnectorConfig{Services: map[string]string{"echo": be.addr}, Logger: ftLogger(), Sources: ftLoopbackSources})
	if err != nil {
		t.Fatal(err)
	}
	pl := newFtPipeListener()
	served := make(chan error, 1)
	go func() { served <- conn.Serve(pl) }()
	defer func() {
		ftWithin(t, ftPrompt, "Connector.Close and Serve", func() {
			conn.Close()
			<-served
		})
	}()
	pipePeer := Peer{ID: "c1", Addr: netip.MustParseAddr("fd00::1"), Connector: netip.MustParseAddrPort("[fd00::1]:4000"), Connected: true}
	gw, err := NewGateway(GatewayConfig{Dial: pl.dial, Logger: ftLogger(), Directory: func() *Directory { return NewDirectory(pipePeer) }})
	if err != nil {
		t.Fatal(err)
	}
	defer ftWithin(t, ftPrompt, "Gateway.Close", func() { gw.Close() })
	tu := ftTunnel(ftFreePort(t), "c1")
	tu.HaProxyProxyProtocol = true
	if _, err := gw.Apply([]Tunnel{tu}); err != nil {
		t.Fatal(err)
	}
	c := ftDialPublic(t, tu.ListenPort)
	ftEcho(t, c, "through a pipe")
	ftEcho(t, c, "and again")
	seen := be.nextSeen(t)
	if src, _, _ := seen.header.TCPAddrs(); src == nil || src.String() != c.LocalAddr().String() {
		t.Errorf("backend sees source %v, want %v", src, c.LocalAddr())
	}
	c.Close()
	ftWaitFor(t, ftPrompt, "both ends to drop the connection", func() bool {
		return gw.Live() == 0 && conn.Live() == 0
	})
}

func TestGatewayApplyReturnsNormalizedCopy(t *testing.T) {
	h := ftNewGateway(t, nil)
	h.addClient("c1", "127.0.0.1:9")
	in := []Tunnel{{ListenAddress: "127.0.0.1", ListenPort: ftFreePort(t), BackEndService: "echo", ClientId: "c1", HaProxyProxyProtocol: true}}
	orig := slices.Clone(in)
	out, err := h.gw.Apply(in)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, orig) {
		t.Errorf("Apply modified its argument: %+v", in)
	}
	want := orig[0]
	want.Protocol = "tcp"
	want.ListenHostnameGlob = "*"
	want.HaProxyProxyProtocolVersion = 1
	if len(out) != 1 || !reflect.DeepEqual(out[0], want) {
		t.Fatalf("Apply returned %+v, want [%+v]", out, want)
	}
	// Tunnels() also tells which client is active, and the live connections.
	want.ActiveClientId = "c1"
	want.ActiveSessions = new(int)
	if got := h.gw.Tunnels(); len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("Tunnels() = %+v, want [%+v]", got, want)
	}
	out[0].ClientId = "mutated"
	got := h.gw.Tunnels()
	got[0].BackEndService = "mutated too"
	if now := h.gw.Tunnels(); !reflect.DeepEqual(now[0], want) {
		t.Errorf("Gateway state changed through returned slices: %+v", now[0])
	}
}

func TestGatewayApplyAtomicOnListenFailure(t *testing.T) {
	ftCheckGoroutines(t)
	s := ftNewSetup(t, 0)
	h := s.h
	live := ftDialPublic(t, s.tunnel.ListenPort)
	ftEcho(t, live, "before")

	// Two ports taken by someone else, and one free port listed before them
	// so that the Gateway opens it before failing.
	var blocked []int
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		blocked = append(blocked, ln.Addr().(*net.TCPAddr).Port)
	}
	free := ftFreePort(t)
	before := h.gw.Tunnels()
	nListens := len(h.listenLog())

	_, err := h.gw.Apply([]Tunnel{s.tunnel, ftTunnel(free, "c1"), ftTunnel(blocked[0], "c1"), ftTunnel(blocked[1], "c1")})
	if !errors.Is(err, ErrListen) {
		t.Fatalf("Apply = %v, want ErrListen", err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Errorf("listen failure also claims ErrInvalid: %v", err)
	}
	problems := ftProblems(err)
	if len(problems) != 2 {
		t.Fatalf("want one error for each blocked port, got %q", problems)
	}
	for i, p := range blocked {
		if !strings.Contains(problems[i], ":"+strconv.Itoa(p)) {
			t.Errorf("problem %q does not name port %d", problems[i], p)
		}
	}
	// Nothing changed: same tunnels, the new listener was closed again,
	// the old tunnel and its live connection still work.
	if got := h.gw.Tunnels(); !reflect.DeepEqual(got, before) {
		t.Errorf("Tunnels() = %+v after a failed Apply, want %+v", got, before)
	}
	newListens := h.listenLog()[nListens:]
	if len(newListens) != 1 || newListens[0].port() != free {
		t.Fatalf("failed Apply opened %d listeners, want just the free port", len(newListens))
	}
	if !newListens[0].closed.Load() {
		t.Error("listener opened by the failed Apply is still open")
	}
	ftExpectRefused(t, free)
	if got := h.openListeners(); !slices.Equal(got, []int{s.tunnel.ListenPort}) {
		t.Errorf("open listeners %v, want only %d", got, s.tunnel.ListenPort)
	}
	ftEcho(t, live, "after")
	ftEcho(t, ftDialPublic(t, s.tunnel.ListenPort), "new connection")
}

func TestGatewayApplyInvalidChangesNothing(t *testing.T) {
	ftCheckGoroutines(t)
	s := ftNewSetup(t, 0)
	h := s.h
	live := ftDialPublic(t, s.tunnel.ListenPort)
	ftEcho(t, live, "before")
	before := h.gw.Tunnels()
	nListens := len(h.listenLog())
	free := ftFreePort(t)

	bad := []Tunnel{
		ftTunnel(free, "c1"), // fine, but must not be opened
		{ListenAddress: "127.0.0.1", ListenPort: 0, BackEndService: "echo", ClientId: "c1"},
		{ListenAddress: "127.0.0.1", ListenPort: 70000, BackEndService: "", ClientId: "c1"},
		ftTunnel(free, "c2"), // same route as [0]
	}
	_, err := h.gw.Apply(bad)
	if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrListen) {
		t.Fatalf("Apply = %v, want ErrInvalid", err)
	}
	problems := ftProblems(err)
	want := []string{"tunnels[1].ListenPort", "tunnels[2].ListenPort", "tunnels[2].BackEndService", "tunnels[3]: claims"}
	if len(problems) != len(want) {
		t.Fatalf("problems %q, want %d", problems, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(problems[i], w) {
			t.Errorf("problem %d = %q, want it to start with %q", i, problems[i], w)
		}
	}
	if n := len(h.listenLog()); n != nListens {
		t.Errorf("invalid Apply opened %d listeners", n-nListens)
	}
	if got := h.gw.Tunnels(); !reflect.DeepEqual(got, before) {
		t.Errorf("Tunnels() = %+v, want %+v", got, before)
	}
	ftExpectRefused(t, free)
	ftEcho(t, live, "after")
}

func TestGatewayApplyKeepsUnchangedTunnels(t *testing.T) {
	ftCheckGoroutines(t)
	s := ftNewSetup(t, 0)
	h := s.h
	t1 := s.tunnel
	t2 := ftTunnel(ftFreePort(t), "c1")
	h.apply(t, t1, t2)
	c1 := ftDialPublic(t, t1.ListenPort)
	ftEcho(t, c1, "one")
	c2 := ftDialPublic(t, t2.ListenPort)
	ftEcho(t, c2, "two")

	// Add a third, drop the second, reapply the same list: c1 lives on.
	t3 := ftTunnel(ftFreePort(t), "c1")
	h.apply(t, t1, t2, t3)
	ftEcho(t, c1, "after adding")
	ftEcho(t, c2, "t2 after adding")
	h.apply(t, t3, t1) // order changes nothing
	ftEcho(t, c1, "after removing")
	h.apply(t, t3, t1)
	ftEcho(t, c1, "after reapplying")
	ftEcho(t, ftDialPublic(t, t3.ListenPort), "three")

	// t1's socket was opened exactly once and never closed.
	var opened int
	for _, l := range h.listenLog() {
		if l.port() == t1.ListenPort {
			opened++
			if l.closed.Load() {
				t.Error("t1's listener was closed")
			}
		}
	}
	if opened != 1 {
		t.Errorf("t1's port was opened %d times, want once", opened)
	}
	want := []int{t1.ListenPort, t3.ListenPort}
	slices.Sort(want)
	if got := h.openListeners(); !reflect.DeepEqual(got, want) {
		t.Errorf("open listeners %v, want %v", got, want)
	}
}

func TestGatewayApplyRemovesTunnel(t *testing.T) {
	ftCheckGoroutines(t)
	s := ftNewSetup(t, 0)
	h := s.h
	t1 := s.tunnel
	t2 := ftTunnel(ftFreePort(t), "c1")
	h.apply(t, t1, t2)
	c1 := ftDialPublic(t, t1.ListenPort)
	ftEcho(t, c1, "one")
	c2 := ftDialPublic(t, t2.ListenPort)
	ftEcho(t, c2, "two")
	ftWaitFor(t, ftPrompt, "two live connections", func() bool { return h.gw.Live() == 2 })

	h.apply(t, t1)
	// The removed tunnel's connection is closed, and its port with it.
	ftExpectClosed(t, c2, ftPrompt)
	ftExpectRefused(t, t2.ListenPort)
	ftWaitFor(t, ftPrompt, "the removed connection to end on both sides", func() bool {
		return h.gw.Live() == 1 && s.conn.Live() == 1
	})
	// The other is untouched.
	ftEcho(t, c1, "still here")
	if got := h.gw.Tunnels(); len(got) != 1 || got[0].ListenPort != t1.ListenPort {
		t.Errorf("Tunnels() = %+v", got)
	}

	// Removing everything stops every listener.
	h.apply(t)
	ftExpectClosed(t, c1, ftPrompt)
	ftExpectRefused(t, t1.ListenPort)
	if got := h.openListeners(); len(got) != 0 {
		t.Errorf("listeners still open: %v", got)
	}
	if len(h.gw.Tunnels()) != 0 {
		t.Errorf("Tunnels() = %+v after applying none", h.gw.Tunnels())
	}
}

func TestGatewayApplyChangesClientKeepsListener(t *testing.T) {
	ftCheckGoroutines(t)
	beA := ftStartBackend(t, false, "A")
	beB := ftStartBackend(t, false, "B")
	_, addrA := ftStartConnector(t, map[string]string{"echo": beA.addr}, nil)
	_, addrB := ftStartConnector(t, map[string]string{"echo": beB.addr}, nil)
	h := ftNewGateway(t, nil)
	h.addClient("cA", addrA)
	h.addClient("cB", addrB)
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "cA"))

	greeting := func() string {
		t.Helper()
		c := ftDialPublic(t, port)
		defer c.Close()
		b := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(ftPrompt))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("no greeting: %v", err)
		}
		return string(b)
	}
	if g := greeting(); g != "A" {
		t.Fatalf("greeting %q before the change, want A", g)
	}

	// Keep connecting while the client flips back and forth: the port must
	// never refuse a connection.
	stop := make(chan struct{})
	var dialErrs atomic.Int32
	var dialled atomic.Int32
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), ftPrompt)
			if err != nil {
				dialErrs.Add(1)
				continue
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	for i := range 10 {
		client, want := "cB", "B"
		if i%2 == 1 {
			client, want = "cA", "A"
		}
		h.apply(t, ftTunnel(port, client))
		if g := greeting(); g != want {
			t.Fatalf("after switching to %s the greeting is %q, want %q", client, g, want)
		}
	}
	close(stop)
	wg.Wait()
	if n := dialErrs.Load(); n != 0 {
		t.Errorf("%d connection attempts failed while the client changed", n)
	}
	if dialled.Load() == 0 {
		t.Error("background dialer never connected")
	}
	if n := len(h.listenLog()); n != 1 {
		t.Errorf("port was opened %d times, want once", n)
	}
}

func TestGatewayDialFailureClosesPublic(t *testing.T) {
	ftCheckGoroutines(t)
	h := ftNewGateway(t, nil)
	// "unreachable" is connected, but nothing listens where it is.
	h.addClient("unreachable", fmt.Sprintf("127.0.0.1:%d", ftFreePort(t)))
	for _, tc := range []struct {
		client string
		dials  []string
	}{
		{"nobody", nil}, // not in the Directory: refused without a dial
		{"unreachable", []string{"unreachable"}},
	} {
		port := ftFreePort(t)
		h.apply(t, ftTunnel(port, tc.client))
		before := len(h.dialLog())
		c := ftDialPublic(t, port)
		start := time.Now()
		ftExpectClosed(t, c, ftPrompt)
		if el := time.Since(start); el > time.Second {
			t.Errorf("%s: public connection closed after %v, want at once", tc.client, el)
		}
		if d := h.dialLog()[before:]; !slices.Equal(d, tc.dials) {
			t.Errorf("%s: dials %v, want %v", tc.client, d, tc.dials)
		}
	}
	ftWaitFor(t, ftPrompt, "no live connections", func() bool { return h.gw.Live() == 0 })
}

func TestGatewayDialTimeout(t *testing.T) {
	ftCheckGoroutines(t)
	const timeout = 200 * time.Millisecond
	var sawDeadline atomic.Bool
	h := ftNewGateway(t, func(c *GatewayConfig) {
		c.DialTimeout = timeout
		c.Dial = func(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
			if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
				sawDeadline.Store(true)
			}
			<-ctx.Done() // a client that never answers
			return nil, ctx.Err()
		}
	})
	h.addClient("c1", "127.0.0.1:9") // connected; Dial above stands in for reaching it
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "c1"))
	c := ftDialPublic(t, port)
	start := time.Now()
	ftExpectClosed(t, c, ftPrompt)
	if el := time.Since(start); el < timeout/2 {
		t.Errorf("closed after %v, before the dial timeout", el)
	}
	if !sawDeadline.Load() {
		t.Error("Dial's context had no deadline within DialTimeout")
	}
}

func TestGatewayUnknownServiceClosesPublic(t *testing.T) {
	for _, sends := range []bool{false, true} {
		t.Run(fmt.Sprintf("client sends first: %v", sends), func(t *testing.T) {
			ftCheckGoroutines(t)
			be := ftStartBackend(t, false, "")
			conn, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
			h := ftNewGateway(t, nil)
			h.addClient("c1", addr)
			tu := ftTunnel(ftFreePort(t), "c1")
			tu.BackEndService = "nosuch"
			h.apply(t, tu)
			c := ftDialPublic(t, tu.ListenPort)
			if sends {
				c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			}
			// Only the status byte can end this: the public client keeps its
			// side open and the idle timeout is an hour.
			got, _ := ftReadAll(t, c, ftPrompt)
			if len(got) != 0 {
				t.Errorf("public client received %q", got)
			}
			ftWaitFor(t, ftPrompt, "no live connections", func() bool { return h.gw.Live() == 0 && conn.Live() == 0 })
			select {
			case <-be.seen:
				t.Error("backend was reached for an unknown service")
			default:
			}
		})
	}
}

func TestGatewayBackendRefusedClosesPublic(t *testing.T) {
	ftCheckGoroutines(t)
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(ftFreePort(t)))
	conn, addr := ftStartConnector(t, map[string]string{"echo": dead}, nil)
	h := ftNewGateway(t, nil)
	h.addClient("c1", addr)
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "c1"))
	c := ftDialPublic(t, port)
	got, _ := ftReadAll(t, c, ftPrompt)
	if len(got) != 0 {
		t.Errorf("public client received %q", got)
	}
	ftWaitFor(t, ftPrompt, "no live connections", func() bool { return h.gw.Live() == 0 && conn.Live() == 0 })
}

func TestGatewayIdleTimeout(t *testing.T) {
	ftCheckGoroutines(t)
	be := ftStartBackend(t, false, "")
	_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	const idle = 200 * time.Millisecond
	h := ftNewGateway(t, func(c *GatewayConfig) { c.Timeouts = Timeouts{Idle: idle} })
	h.addClient("c1", addr)
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "c1"))
	start := time.Now()
	c := ftDialPublic(t, port)
	// Nothing is sent: with the default idle timeout (an hour) this
	// connection would stay open far beyond ftPrompt.
	ftExpectClosed(t, c, ftPrompt)
	if el := time.Since(start); el < idle {
		t.Errorf("closed after %v, before the idle timeout", el)
	}
}

func TestGatewayCloseClient(t *testing.T) {
	ftCheckGoroutines(t)
	be := ftStartBackend(t, false, "")
	_, addr := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	h := ftNewGateway(t, nil)
	h.addClient("c1", addr)
	h.addClient("c2", addr)
	t1 := ftTunnel(ftFreePort(t), "c1")
	t2 := ftTunnel(ftFreePort(t), "c2")
	h.apply(t, t1, t2)
	a := ftDialPublic(t, t1.ListenPort)
	b := ftDialPublic(t, t1.ListenPort)
	other := ftDialPublic(t, t2.ListenPort)
	for _, c := range []net.Conn{a, b, other} {
		ftEcho(t, c, "up")
	}
	ftWaitFor(t, ftPrompt, "three live connections", func() bool { return h.gw.Live() == 3 })

	if n := h.gw.CloseClient("nobody"); n != 0 {
		t.Errorf("CloseClient(nobody) = %d", n)
	}
	if n := h.gw.CloseClient("c1"); n != 2 {
		t.Errorf("CloseClient(c1) = %d, want 2", n)
	}
	ftExpectClosed(t, a, ftPrompt)
	ftExpectClosed(t, b, ftPrompt)
	ftEcho(t, other, "unaffected")
	ftWaitFor(t, ftPrompt, "one live connection", func() bool { return h.gw.Live() == 1 })
	// The tunnel itself stays: new connections to c1 work.
	ftEcho(t, ftDialPublic(t, t1.ListenPort), "again")
}

func TestGatewayClose(t *testing.T) {
	ftCheckGoroutines(t)
	s := ftNewSetup(t, 0)
	h := s.h
	port := s.tunnel.ListenPort
	c := ftDialPublic(t, port)
	ftEcho(t, c, "x")
	c2 := ftDialPublic(t, port) // accepted, maybe still being set up
	var err error
	ftWithin(t, ftPrompt, "Close", func() { err = h.gw.Close() })
	if err != nil {
		t.Fatal(err)
	}
	// Close waited: nothing is left running.
	if n := h.gw.Live(); n != 0 {
		t.Errorf("Live() = %d after Close", n)
	}
	ftExpectClosed(t, c, ftPrompt)
	ftExpectClosed(t, c2, ftPrompt)
	ftExpectRefused(t, port)
	if got := h.openListeners(); len(got) != 0 {
		t.Errorf("listeners open after Close: %v", got)
	}
	ftWithin(t, ftPrompt, "second Close", func() { err = h.gw.Close() })
	if err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := h.gw.Apply([]Tunnel{s.tunnel}); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
	ftExpectRefused(t, port)
	ftWaitFor(t, ftPrompt, "the client side to drop its connection", func() bool { return s.conn.Live() == 0 })
}

// Close must not return while a connection is still being dialed.
func TestGatewayCloseWaitsForHandlers(t *testing.T) {
	ftCheckGoroutines(t)
	var inDial, dialReturned atomic.Bool
	h := ftNewGateway(t, func(c *GatewayConfig) {
		c.Dial = func(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
			inDial.Store(true)
			<-ctx.Done()
			time.Sleep(100 * time.Millisecond) // a slow teardown, not a wait for readiness
			dialReturned.Store(true)
			return nil, ctx.Err()
		}
	})
	h.addClient("c1", "127.0.0.1:9") // connected; Dial above stands in for reaching it
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "c1"))
	c := ftDialPublic(t, port)
	ftWaitFor(t, ftPrompt, "the dial to start", inDial.Load)
	if n := h.gw.Live(); n != 1 {
		t.Errorf("Live() = %d while dialing", n)
	}
	done := make(chan struct{})
	go func() { h.gw.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(ftPrompt):
		t.Fatal("Close did not return")
	}
	if !dialReturned.Load() {
		t.Fatal("Close returned before the connection handler finished")
	}
	ftExpectClosed(t, c, ftPrompt)
}

// A Close that lands while Apply is opening listeners must not leave a
// listener (and its accept loop) running after both return.
func TestGatewayCloseDuringApply(t *testing.T) {
	ftCheckGoroutines(t)
	h := ftNewGateway(t, nil)
	var once sync.Once
	h.mu.Lock()
	h.listenHook = func(string) {
		once.Do(func() {
			done := make(chan struct{})
			go func() { h.gw.Close(); close(done) }()
			<-done
		})
	}
	h.mu.Unlock()
	port := ftFreePort(t)
	var err error
	ftWithin(t, ftPrompt, "Apply", func() { _, err = h.gw.Apply([]Tunnel{ftTunnel(port, "c1")}) })
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Apply racing Close = %v, want ErrClosed", err)
	}
	if got := h.openListeners(); len(got) != 0 {
		t.Errorf("listeners left open after Close: %v", got)
	}
	ftExpectRefused(t, port)
}

// Concurrent Applies are serialized: whichever wins, exactly its
// listeners are open.
func TestGatewayConcurrentApply(t *testing.T) {
	ftCheckGoroutines(t)
	h := ftNewGateway(t, nil)
	ports := make([]int, 4)
	for i := range ports {
		ports[i] = ftFreePort(t)
	}
	lists := [][]Tunnel{
		{ftTunnel(ports[0], "c"), ftTunnel(ports[1], "c")},
		{ftTunnel(ports[1], "c"), ftTunnel(ports[2], "c")},
		{ftTunnel(ports[3], "c")},
		{},
	}
	var wg sync.WaitGroup
	for i := range lists {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				if _, err := h.gw.Apply(lists[(i+j)%len(lists)]); err != nil {
					t.Errorf("Apply: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	var want []int
	for _, tu := range h.gw.Tunnels() {
		want = append(want, tu.ListenPort)
	}
	slices.Sort(want)
	if got := h.openListeners(); !reflect.DeepEqual(got, want) {
		t.Errorf("open listeners %v, want those of Tunnels() %v", got, want)
	}
}

// A tunnel removed while a connection of it is still being dialed: the
// public side closes at once, and the tunnel connection that arrives
// afterwards is closed without a request being sent on it.
func TestGatewayTunnelRemovedDuringDial(t *testing.T) {
	ftCheckGoroutines(t)
	entered := make(chan struct{})
	release := make(chan struct{})
	farc := make(chan net.Conn, 1)
	h := ftNewGateway(t, func(c *GatewayConfig) {
		c.Dial = func(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
			close(entered)
			<-release
			near, far := ftTCPPair(t)
			farc <- far
			return near, nil
		}
	})
	var releaseOnce sync.Once
	releaseDial := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseDial()              // never leave the handler (and Close) hanging
	h.addClient("c1", "127.0.0.1:9") // connected; Dial above stands in for reaching it
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "c1"))
	pub := ftDialPublic(t, port)
	select {
	case <-entered:
	case <-time.After(ftPrompt):
		t.Fatal("no dial")
	}
	h.apply(t) // remove the tunnel
	ftExpectClosed(t, pub, ftPrompt)
	releaseDial()
	var far net.Conn
	select {
	case far = <-farc:
	case <-time.After(ftPrompt):
		t.Fatal("dial did not finish")
	}
	got, _ := ftReadAll(t, far, ftPrompt)
	if len(got) != 0 {
		t.Errorf("the tunnel connection of a removed tunnel carried %d bytes (%.40q), want none", len(got), got)
	}
	ftWaitFor(t, ftPrompt, "the handler to finish", func() bool { return h.gw.Live() == 0 })
}
