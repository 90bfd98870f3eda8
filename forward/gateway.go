package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thresholdtunnel/threshold/forward/sniff"
)

// DialFunc opens a connection through the tunnel.
type DialFunc func(ctx context.Context, to netip.AddrPort) (net.Conn, error)

// ListenFunc opens a public listener.
type ListenFunc func(ctx context.Context, network, address string) (net.Listener, error)

var (
	// ErrInvalid classifies a tunnel list that is malformed or inconsistent.
	ErrInvalid = errors.New("invalid tunnel configuration")
	// ErrListen classifies a public port that cannot be opened.
	ErrListen = errors.New("cannot listen")
	// ErrClosed is returned by a forwarder after Close or Shutdown.
	ErrClosed = errors.New("forwarder closed")
)

// GatewayConfig configures a Gateway.
type GatewayConfig struct {
	// Directory returns the newest snapshot of the registered clients; a
	// tunnel's new connections go to the first connected client in its
	// list. Required.
	Directory func() *Directory
	// Dial opens a connection through the tunnel, to a client's
	// Peer.Connector. Required.
	Dial   DialFunc
	Logger *slog.Logger // required
	// Listen opens public listeners; the kernel's TCP stack by default.
	Listen ListenFunc
	// DialTimeout bounds reaching the client and sending it the request.
	DialTimeout time.Duration
	Timeouts    Timeouts
	// PeekTimeout bounds reading a TLS ClientHello or HTTP request head on a
	// port whose tunnels are chosen by host name; sniff.DefaultTimeout if zero.
	PeekTimeout time.Duration
	// Observe, if set, is called for each connection handed to a client;
	// the ConnObserver it returns meters that connection.
	Observe func(t Tunnel, clientID string) ConnObserver
	// Rejected, if set, is told each time a public connection is refused,
	// with one of the Reject* reasons.
	Rejected func(reason string)
	// Limits bound what the internet can hold open.
	Limits GatewayLimits

	// UDP tunnels (udpgateway.go). ListenPacket opens their public sockets;
	// the kernel's UDP by default.
	ListenPacket PacketListenFunc
	// TunnelPacket opens a UDP socket inside the tunnel, on a port of the
	// server's own; each UDP tunnel sends its frames from one. Without it
	// UDP tunnels are refused.
	TunnelPacket func() (net.PacketConn, error)
	// TunnelMTU is the tunnel interface's MTU, to count the datagrams
	// fragmented inside it; DefaultTunnelMTU if zero.
	TunnelMTU int
	// ObserveUDP, if set, is called once for each UDP tunnel's listener;
	// the UDPObserver it returns meters that tunnel.
	ObserveUDP func(t Tunnel) UDPObserver
}

// GatewayLimits bound the public connections held at once, in all and
// per source (an IPv4 address, or an IPv6 /64), so that a flood from a
// few hosts cannot take the server's memory, goroutines or the clients'
// file descriptors from everyone else. A connection over a limit is
// reset at once and counted under its Reject* reason. Zero fields take
// their defaults.
type GatewayLimits struct {
	// Connections and ConnectionsPerSource bound live public connections,
	// from accept to close, peeks included.
	Connections, ConnectionsPerSource int
	// Peeks and PeeksPerSource bound connections whose host name is being
	// read (each holds a goroutine and up to 64 KiB for up to the peek
	// timeout).
	Peeks, PeeksPerSource int
}

// Default GatewayLimits. A connection held open costs the server about
// 45 KB (BENCHMARKS.md: 90 KB for both ends), so 8,192 of them fit a
// small VM; 256 per source leave room for a busy NAT while four hosts
// alone hold an eighth of the total. A peek ends within one round trip
// for any real client, so few are ever in progress: 32 per source and 512
// in all only bound floods of silent or slow connections.
const (
	DefaultMaxConnections          = 8192
	DefaultMaxConnectionsPerSource = 256
	DefaultMaxPeeks                = 512
	DefaultMaxPeeksPerSource       = 32
)

func (l GatewayLimits) withDefaults() GatewayLimits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.Connections, DefaultMaxConnections)
	def(&l.ConnectionsPerSource, DefaultMaxConnectionsPerSource)
	def(&l.Peeks, DefaultMaxPeeks)
	def(&l.PeeksPerSource, DefaultMaxPeeksPerSource)
	return l
}

// ConnObserver meters one proxied connection.
type ConnObserver interface {
	// In and Out report payload bytes from and to the public user.
	In(n int64)
	Out(n int64)
	// Done is called once, when the connection has ended.
	Done()
}

// Reasons a public connection is refused.
const (
	RejectNoHostname         = "no_hostname"         // peek failed: silent, garbage, too large
	RejectNoRoute            = "no_route"            // no tunnel matches the host name
	RejectNoClient           = "client_unreachable"  // no client of the tunnel connected or answering
	RejectUnknownService     = "unknown_service"     // the client has no such service
	RejectBackendUnreachable = "backend_unreachable" // the client could not reach its service
	RejectClientRefused      = "client_refused"      // the client's PROXY policy refused it

	// Admission limits (GatewayLimits, EgressLimits).
	RejectConnections          = "limit_connections"            // GatewayLimits.Connections
	RejectConnectionsPerSource = "limit_connections_per_source" // GatewayLimits.ConnectionsPerSource
	RejectPeeks                = "limit_peeks"                  // GatewayLimits.Peeks
	RejectPeeksPerSource       = "limit_peeks_per_source"       // GatewayLimits.PeeksPerSource
	RejectSocksHandshakes      = "limit_socks5_handshakes"      // EgressLimits.HandshakesPerClient
	RejectSocksSessions        = "limit_socks5_sessions"        // EgressLimits.SessionsPerClient
)

// RejectReasons lists every Reject* reason, for metrics that show each at 0.
var RejectReasons = []string{RejectNoHostname, RejectNoRoute, RejectNoClient, RejectUnknownService, RejectBackendUnreachable, RejectClientRefused,
	RejectConnections, RejectConnectionsPerSource, RejectPeeks, RejectPeeksPerSource, RejectSocksHandshakes, RejectSocksSessions}

// DefaultDialTimeout bounds a dial through the tunnel.
const DefaultDialTimeout = 5 * time.Second

// Gateway is the server's public side: one listener per distinct
// ListenAddress:ListenPort, each connection matched to one of the tunnels
// on it (gateway.go) and handed to that tunnel's client (target.go).
type Gateway struct {
	cfg  GatewayConfig
	log  *slog.Logger
	life lifecycle

	live, peeks admission[netip.Prefix] // by sourceKey
	// Throttled logs of what anyone on the internet can cause.
	logPeek, logRoute, logNoClient, logLimit *throttle

	changeMu  sync.Mutex // held from Prepare to Commit or Abort
	mu        sync.Mutex
	listeners map[string]*listener // by Tunnel.ListenKey
	udp       map[string]*udpListener
	udpDown   bool // the UDP listeners were closed for good
	tunnels   []Tunnel
	routeKeys map[string]bool // of tunnels
	checks    checks          // tokens armed for reachability probes
	refusals  refusals        // the last refusal of each tunnel: refusal.go
}

type listener struct {
	ln     net.Listener
	key    string
	routes atomic.Pointer[[]Tunnel]
	// holdUntil (unix nanos): until then a token is armed for this port,
	// and if it is not peeked, its connections wait for a probe.
	holdUntil atomic.Int64
}

// NewGateway returns a Gateway with no tunnels.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	var errs []error
	if cfg.Directory == nil {
		errs = append(errs, errors.New("forward: GatewayConfig.Directory is required"))
	}
	if cfg.Dial == nil {
		errs = append(errs, errors.New("forward: GatewayConfig.Dial is required"))
	}
	if cfg.Logger == nil {
		errs = append(errs, errors.New("forward: GatewayConfig.Logger is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Listen == nil {
		var lc net.ListenConfig
		cfg.Listen = lc.Listen
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.PeekTimeout <= 0 {
		cfg.PeekTimeout = sniff.DefaultTimeout
	}
	if cfg.Rejected == nil {
		cfg.Rejected = func(string) {}
	}
	if cfg.ListenPacket == nil {
		var lc net.ListenConfig
		cfg.ListenPacket = lc.ListenPacket
	}
	if cfg.TunnelMTU <= 0 {
		cfg.TunnelMTU = DefaultTunnelMTU
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	cfg.Limits = cfg.Limits.withDefaults()
	g := &Gateway{cfg: cfg, log: cfg.Logger, listeners: make(map[string]*listener), udp: make(map[string]*udpListener),
		live:    admission[netip.Prefix]{max: cfg.Limits.Connections, perKey: cfg.Limits.ConnectionsPerSource},
		peeks:   admission[netip.Prefix]{max: cfg.Limits.Peeks, perKey: cfg.Limits.PeeksPerSource},
		logPeek: newThrottle(), logRoute: newThrottle(), logNoClient: newThrottle(), logLimit: newThrottle()}
	g.life.init(cfg.Logger)
	return g, nil
}

// Tunnels returns the tunnels in force, in the order they were applied,
// each with the client its new connections go to now and its live
// connections or sessions.
func (g *Gateway) Tunnels() []Tunnel {
	g.mu.Lock()
	ts := slices.Clone(g.tunnels)
	udp := make(map[string]int, len(g.udp))
	for k, l := range g.udp {
		udp[k] = l.count()
	}
	g.mu.Unlock()
	tcp := g.life.live.countByRoute()
	dir := g.cfg.Directory()
	for i := range ts {
		ts[i].ActiveClientId = dir.Active(ts[i])
		n := tcp[ts[i].RouteKey()]
		if ts[i].IsUDP() {
			n = udp[ts[i].ListenKey()]
		}
		ts[i].ActiveSessions = &n
		g.refusals.fill(&ts[i])
	}
	return ts
}

// countByRoute counts the live sessions of each route.
func (ss *sessions) countByRoute() map[string]int {
	ss.mu.Lock()
	all := make([]*session, 0, len(ss.m))
	for s := range ss.m {
		all = append(all, s)
	}
	ss.mu.Unlock()
	out := make(map[string]int)
	for _, s := range all {
		if r := s.routeKey(); r != "" {
			out[r]++
		}
	}
	return out
}

func (g *Gateway) hasRoute(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.routeKeys[key]
}

// Change is a tunnel list ready to take effect: the listeners it needs are
// open, and nothing else has changed yet, so live traffic is untouched.
// Exactly one of Commit or Abort must follow; until then other changes
// wait.
type Change struct {
	g         *Gateway
	ts        []Tunnel
	routes    map[string][]Tunnel
	opened    map[string]*listener
	openedUDP map[string]*udpListener
	done      bool
}

// Tunnels is the list the change applies, normalized.
func (c *Change) Tunnels() []Tunnel { return slices.Clone(c.ts) }

// Prepare checks ts and opens the public listeners it needs that are not
// open yet. On any problem it closes what it opened and returns an error
// joining one error per problem, each wrapping ErrInvalid or ErrListen.
func (g *Gateway) Prepare(ts []Tunnel) (*Change, error) {
	ts = slices.Clone(ts)
	var probs problemList
	if CheckTunnels(ts, &probs); len(probs.list) > 0 {
		return nil, errors.Join(probs.errs(ErrInvalid)...)
	}
	g.changeMu.Lock()
	if !g.life.up() {
		g.changeMu.Unlock()
		return nil, ErrClosed
	}
	g.mu.Lock()
	have := make(map[string]bool, len(g.listeners)+len(g.udp))
	for k := range g.listeners {
		have[k] = true
	}
	for k := range g.udp {
		have[k] = true
	}
	g.mu.Unlock()

	c := &Change{g: g, ts: ts, routes: make(map[string][]Tunnel), opened: make(map[string]*listener), openedUDP: make(map[string]*udpListener)}
	var order []string
	for _, t := range ts {
		k := t.ListenKey()
		if _, ok := c.routes[k]; !ok {
			order = append(order, k)
		}
		c.routes[k] = append(c.routes[k], t)
	}
	var errs []error
	for _, k := range order {
		if have[k] {
			continue
		}
		if t := c.routes[k][0]; t.IsUDP() {
			if g.cfg.TunnelPacket == nil {
				errs = append(errs, &problem{kind: ErrInvalid, msg: fmt.Sprintf("%s: this server cannot carry UDP tunnels", k)})
				continue
			}
			l, err := g.openUDP(t)
			if err != nil {
				errs = append(errs, &problem{kind: ErrListen, msg: fmt.Sprintf("listening on %s: %v", k, err)})
				continue
			}
			c.openedUDP[k] = l
			continue
		}
		ln, err := g.cfg.Listen(g.life.ctx, "tcp", k)
		if err != nil {
			errs = append(errs, &problem{kind: ErrListen, msg: fmt.Sprintf("listening on %s: %v", k, err)})
			continue
		}
		c.opened[k] = &listener{ln: ln, key: k}
	}
	if len(errs) > 0 {
		c.Abort()
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// problem is one reason a change was refused: its message names the
// tunnel or port, and it unwraps to ErrInvalid or ErrListen.
type problem struct {
	kind error
	msg  string
}

func (p *problem) Error() string { return p.msg }
func (p *problem) Unwrap() error { return p.kind }

// Abort closes the listeners the change opened; nothing else was touched.
func (c *Change) Abort() {
	if c.done {
		return
	}
	c.done = true
	for _, l := range c.opened {
		l.ln.Close()
	}
	for _, l := range c.openedUDP {
		l.close(false)
	}
	c.g.changeMu.Unlock()
}

// Commit puts the change in force: new listeners start accepting, listeners
// no tunnel uses any more are closed, and live connections of removed
// tunnels are closed; those of remaining tunnels are untouched. It fails
// only when the Gateway was closed meanwhile (and then changes nothing).
func (c *Change) Commit() error {
	if c.done {
		return errors.New("forward: change already committed or aborted")
	}
	g := c.g
	g.mu.Lock()
	if !g.life.up() || g.udpDown {
		g.mu.Unlock()
		c.Abort()
		return ErrClosed
	}
	c.done = true
	defer g.changeMu.Unlock()
	oldRoutes := make(map[string]bool)
	for _, t := range g.tunnels {
		oldRoutes[t.RouteKey()] = true
	}
	for k, l := range c.opened {
		g.listeners[k] = l
	}
	var stale []*listener
	for k, l := range g.listeners {
		if r, ok := c.routes[k]; ok {
			l.routes.Store(&r)
		} else {
			stale = append(stale, l)
			delete(g.listeners, k)
		}
	}
	for k, l := range c.openedUDP {
		g.udp[k] = l
	}
	var staleUDP []*udpListener
	for k, l := range g.udp {
		if r, ok := c.routes[k]; ok {
			// New sessions follow the new settings; live ones keep theirs.
			t := r[0]
			l.tunnel.Store(&t)
		} else {
			staleUDP = append(staleUDP, l)
			delete(g.udp, k)
		}
	}
	g.tunnels = c.ts
	g.routeKeys = make(map[string]bool, len(c.ts))
	for _, t := range c.ts {
		g.routeKeys[t.RouteKey()] = true
	}
	for _, l := range c.opened {
		l := l
		if g.life.goServe(l.ln, func(conn net.Conn) { g.handle(l, conn) }) {
			g.log.Info("now listening", "address", l.ln.Addr().String(), "tunnels", describe(c.routes[l.key]))
		}
	}
	for _, l := range c.openedUDP {
		if l.start() {
			g.log.Info("now listening", "address", l.key, "tunnels", describe(c.routes[l.key]))
		}
	}
	g.mu.Unlock()

	for _, l := range stale {
		l.ln.Close()
		g.log.Info("stopped listening", "address", l.key)
	}
	for _, l := range staleUDP {
		n := l.close(true)
		g.log.Info("stopped listening", "address", l.key, "sessions_closed", n)
	}
	for _, t := range c.ts {
		delete(oldRoutes, t.RouteKey())
	}
	if len(oldRoutes) > 0 {
		n := g.life.live.closeMatching(func(s *session) bool { return oldRoutes[s.routeKey()] })
		if n > 0 {
			g.log.Info("closed connections of removed tunnels", "connections", n)
		}
	}
	return nil
}

// describe names the tunnels of one listener for a log line: host name
// glob, service and clients.
func describe(ts []Tunnel) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		what := t.ListenHostnameGlob
		if t.IsUDP() {
			what = "udp"
		}
		out[i] = fmt.Sprintf("%s -> %s on %s", what, t.BackEndService, strings.Join(t.Clients(), ","))
	}
	return out
}

// Apply replaces the whole tunnel list: Prepare, then Commit. Either every
// listener is open and the new list is in force, or an error lists every
// problem and nothing changed. It returns the list as applied, defaults
// filled.
func (g *Gateway) Apply(ts []Tunnel) ([]Tunnel, error) {
	c, err := g.Prepare(ts)
	if err != nil {
		return nil, err
	}
	if err := c.Commit(); err != nil {
		return nil, err
	}
	return c.Tunnels(), nil
}

// CloseClient closes every live connection to a client, for when the
// client is removed; it returns how many there were.
func (g *Gateway) CloseClient(clientID string) int {
	n := g.life.live.closeMatching(func(s *session) bool { return s.is("", clientID) })
	g.mu.Lock()
	udp := make([]*udpListener, 0, len(g.udp))
	for _, l := range g.udp {
		udp = append(udp, l)
	}
	g.mu.Unlock()
	for _, l := range udp {
		n += l.closeClient(clientID)
	}
	return n
}

// closeUDP closes every UDP listener for good, ending their sessions (and
// telling the clients). A datagram session cannot outlive its socket, so
// it has no grace period.
func (g *Gateway) closeUDP() {
	g.mu.Lock()
	g.udpDown = true
	udp := make([]*udpListener, 0, len(g.udp))
	for _, l := range g.udp {
		udp = append(udp, l)
	}
	clear(g.udp)
	g.mu.Unlock()
	for _, l := range udp {
		l.close(true)
	}
}

// Live reports how many proxied connections are open.
func (g *Gateway) Live() int { return g.life.live.count() }

// Shutdown stops accepting, lets live connections finish until ctx ends,
// then closes whatever is left, like Close. It returns how many
// connections had to be cut. UDP sessions end at once.
func (g *Gateway) Shutdown(ctx context.Context) int {
	g.closeUDP()
	return g.life.shutdown(ctx)
}

// Close stops every listener, closes every connection and session and waits
// for all of the Gateway's goroutines. It is idempotent.
func (g *Gateway) Close() error {
	g.closeUDP()
	g.life.close()
	return nil
}

// handle matches a public connection to one of its listener's tunnels and
// hands it to the tunnel's target.
func (g *Gateway) handle(l *listener, public net.Conn) {
	routes := l.routes.Load()
	if routes == nil || len(*routes) == 0 {
		public.Close()
		return
	}
	src := sourceKey(public.RemoteAddr())
	if !g.admit(&g.live, src, public, RejectConnections, RejectConnectionsPerSource) {
		return
	}
	s := &session{}
	if !g.life.live.start(s) {
		g.live.release(src)
		public.Close()
		return
	}
	// The connection counts against the admission limits for as long as
	// it lives: once joined, the join's end releases it.
	ended := func() {
		g.life.live.end(s)
		g.live.release(src)
	}
	joined := false // then the join ends the session
	defer func() {
		if !joined {
			ended()
		}
	}()
	if !s.add(public) {
		return
	}
	t, conn, reason := g.route(*routes, public, src)
	if reason != "" {
		if reason != admissionRefused {
			g.cfg.Rejected(reason)
		} else {
			refuse(public)
		}
		s.close()
		return
	}
	s.setRoute(t.RouteKey())
	// Commit publishes the new tunnels before closing the sessions of
	// removed ones; a session that picked its route from the old list just
	// before is caught here instead.
	if !g.hasRoute(t.RouteKey()) {
		s.close()
		return
	}
	if !s.add(conn) { // the replaying wrapper, if the route was peeked
		return
	}
	conn, answered := g.takeProbe(l, s, conn, t) // a reachability probe? gatewaycheck.go
	if answered {
		return
	}
	joined = g.forward(s, conn, t, ended)
}

// route picks the tunnel for a new connection. A port served by one "*"
// tunnel needs no peeking; otherwise the TLS server name or HTTP Host is
// peeked (and replayed unchanged through the returned conn) and the most
// specific matching glob wins.
func (g *Gateway) route(routes []Tunnel, c net.Conn, src netip.Prefix) (Tunnel, net.Conn, string) {
	if len(routes) == 1 && routes[0].ListenHostnameGlob == "*" {
		return routes[0], c, ""
	}
	// admit counts its refusal itself; handle resets the connection.
	if !g.admit(&g.peeks, src, nil, RejectPeeks, RejectPeeksPerSource) {
		return Tunnel{}, nil, admissionRefused
	}
	host, proto, replay, err := sniff.Hostname(c, g.cfg.PeekTimeout, sniff.DefaultMaxBytes)
	g.peeks.release(src)
	if err != nil {
		g.logPeek.log(g.log, slog.LevelInfo, "connection dropped: no host name could be read", "from", addrString(c.RemoteAddr()), "err", err)
		return Tunnel{}, nil, RejectNoHostname
	}
	globs := make([]string, len(routes))
	for i, t := range routes {
		globs[i] = t.ListenHostnameGlob
	}
	i, ok := sniff.Pick(globs, host)
	if !ok {
		g.logRoute.log(g.log, slog.LevelInfo, "connection dropped: no tunnel for this host name", "from", addrString(c.RemoteAddr()), "host", host, "protocol", proto.String())
		return Tunnel{}, nil, RejectNoRoute
	}
	return routes[i], replay, ""
}

// admissionRefused is route's reason when a limit refused the connection
// (already counted by admit).
const admissionRefused = "-"

// admit takes a slot of a for a connection from src, or refuses it: it
// counts the refusal under its reason, logs it (throttled) and, if c is
// not nil, resets c.
func (g *Gateway) admit(a *admission[netip.Prefix], src netip.Prefix, c net.Conn, total, perSource string) bool {
	why := a.acquire(src)
	if why == admitted {
		return true
	}
	reason, limit := total, a.max
	if why == overKey {
		reason, limit = perSource, a.perKey
	}
	g.cfg.Rejected(reason)
	g.logLimit.log(g.log, slog.LevelWarn, "connection refused: admission limit reached", "limit", reason, "max", limit, "source", src.String())
	if c != nil {
		refuse(c)
	}
	return false
}

// addrString prints an address for logs; gonet and the kernel may give a
// nil one for a connection that failed.
func addrString(a net.Addr) string {
	if a == nil {
		return "?"
	}
	return a.String()
}

// addrPortOf turns a socket address into an AddrPort; zero if it cannot.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch ta := a.(type) {
	case *net.TCPAddr:
		return ta.AddrPort()
	case *net.UDPAddr:
		return ta.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
