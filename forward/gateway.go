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
)

// DialFunc opens a connection to a client, through the tunnel.
type DialFunc func(ctx context.Context, clientID string) (net.Conn, error)

// ListenFunc opens a public listener.
type ListenFunc func(ctx context.Context, network, address string) (net.Listener, error)

var (
	// ErrInvalid classifies a tunnel list that is malformed or inconsistent.
	ErrInvalid = errors.New("invalid tunnel configuration")
	// ErrListen classifies a tunnel list whose ports cannot all be opened.
	ErrListen = errors.New("cannot listen")
	// ErrClosed is returned by a Gateway or Connector after Close.
	ErrClosed = errors.New("forwarder closed")
)

// ProblemsError lists every problem that made a change be refused; it
// unwraps to its Kind (ErrInvalid or ErrListen).
type ProblemsError struct {
	Kind     error
	Problems []string
}

func (e *ProblemsError) Error() string {
	return e.Kind.Error() + ": " + strings.Join(e.Problems, "; ")
}

func (e *ProblemsError) Unwrap() error { return e.Kind }

// GatewayConfig configures a Gateway.
type GatewayConfig struct {
	// Dial reaches a client through the tunnel. Required.
	Dial   DialFunc
	Logger *slog.Logger // required
	// Listen opens public listeners; the kernel's TCP stack by default.
	Listen ListenFunc
	// DialTimeout bounds reaching the client and sending it the request.
	DialTimeout time.Duration
	Timeouts    Timeouts
	// Connected tells whether a client is connected now; a tunnel's new
	// connections go to the first connected client in its list. Nil
	// treats every client as connected.
	Connected func(clientID string) bool
	// PeekTimeout bounds reading a TLS ClientHello or HTTP request head on a
	// port whose tunnels are chosen by host name; DefaultPeekTimeout if zero.
	PeekTimeout time.Duration
	// Observe, if set, is called for each connection handed to a client;
	// the ConnObserver it returns meters that connection.
	Observe func(t Tunnel, clientID string) ConnObserver
	// Rejected, if set, is told each time a public connection is refused,
	// with one of the Reject* reasons.
	Rejected func(reason string)
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
)

// failoverDialTimeout bounds a dial to a client when another client could
// take the connection instead: a live client answers well within it.
const failoverDialTimeout = 2 * time.Second

// DefaultDialTimeout bounds a dial through the tunnel.
const DefaultDialTimeout = 5 * time.Second

// Gateway is the server's public side: one listener per distinct
// ListenAddress:ListenPort, each connection sent to its tunnel's client.
type Gateway struct {
	cfg GatewayConfig
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	applyMu   sync.Mutex // serializes Apply
	mu        sync.Mutex
	listeners map[string]*listener // by Tunnel.ListenKey
	tunnels   []Tunnel
	routeKeys map[string]bool // of tunnels
	closed    bool
	draining  bool // Shutdown began: Apply is refused

	live sessions
}

type listener struct {
	ln     net.Listener
	key    string
	routes atomic.Pointer[[]Tunnel]
}

// NewGateway returns a Gateway with no tunnels.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	var errs []error
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
		cfg.PeekTimeout = DefaultPeekTimeout
	}
	if cfg.Connected == nil {
		cfg.Connected = func(string) bool { return true }
	}
	if cfg.Rejected == nil {
		cfg.Rejected = func(string) {}
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	g := &Gateway{cfg: cfg, log: cfg.Logger, listeners: make(map[string]*listener)}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g, nil
}

// Tunnels returns the tunnels in force, in the order they were applied,
// each with the client its new connections go to now.
func (g *Gateway) Tunnels() []Tunnel {
	g.mu.Lock()
	ts := slices.Clone(g.tunnels)
	g.mu.Unlock()
	for i := range ts {
		ts[i].ActiveClientId = g.activeClient(ts[i])
	}
	return ts
}

func (g *Gateway) hasRoute(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.routeKeys[key]
}

// activeClient is the first connected client of t, or "" if none is.
func (g *Gateway) activeClient(t Tunnel) string {
	for _, id := range t.Clients() {
		if g.cfg.Connected(id) {
			return id
		}
	}
	return ""
}

// Apply replaces the whole tunnel list. It is atomic: either every listener
// is open and the new list is in force, or an error lists every problem and
// nothing changed. Listeners whose address stays in use keep running, and
// live connections of tunnels that remain are untouched; connections of
// removed tunnels are closed. It returns the list as applied, defaults filled.
func (g *Gateway) Apply(ts []Tunnel) ([]Tunnel, error) {
	ts = slices.Clone(ts)
	if problems := CheckTunnels(ts); len(problems) > 0 {
		return nil, &ProblemsError{Kind: ErrInvalid, Problems: problems}
	}
	g.applyMu.Lock()
	defer g.applyMu.Unlock()

	g.mu.Lock()
	closed := g.closed || g.draining
	have := make(map[string]bool, len(g.listeners))
	for k := range g.listeners {
		have[k] = true
	}
	g.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}

	routes := make(map[string][]Tunnel)
	var order []string
	for _, t := range ts {
		k := t.ListenKey()
		if _, ok := routes[k]; !ok {
			order = append(order, k)
		}
		routes[k] = append(routes[k], t)
	}
	opened := make(map[string]*listener)
	var problems []string
	for _, k := range order {
		if have[k] {
			continue
		}
		ln, err := g.cfg.Listen(g.ctx, "tcp", k)
		if err != nil {
			problems = append(problems, fmt.Sprintf("listening on %s: %v", k, err))
			continue
		}
		opened[k] = &listener{ln: ln, key: k}
	}
	if len(problems) > 0 {
		for _, l := range opened {
			l.ln.Close()
		}
		return nil, &ProblemsError{Kind: ErrListen, Problems: problems}
	}

	g.mu.Lock()
	if g.closed || g.draining {
		// Close ran while the listeners were being opened: it has already
		// stopped everything it knew of and may have finished waiting.
		g.mu.Unlock()
		for _, l := range opened {
			l.ln.Close()
		}
		return nil, ErrClosed
	}
	oldRoutes := make(map[string]bool)
	for _, t := range g.tunnels {
		oldRoutes[t.RouteKey()] = true
	}
	for k, l := range opened {
		g.listeners[k] = l
	}
	var stale []*listener
	for k, l := range g.listeners {
		if r, ok := routes[k]; ok {
			l.routes.Store(&r)
		} else {
			stale = append(stale, l)
			delete(g.listeners, k)
		}
	}
	g.tunnels = ts
	g.routeKeys = make(map[string]bool, len(ts))
	for _, t := range ts {
		g.routeKeys[t.RouteKey()] = true
	}
	for _, l := range opened {
		g.wg.Add(1)
		go g.serve(l)
	}
	g.mu.Unlock()

	for _, l := range stale {
		l.ln.Close()
		g.log.Info("stopped listening", "address", l.key)
	}
	for _, l := range opened {
		g.log.Info("now listening", "address", l.ln.Addr().String())
	}
	for _, t := range ts {
		delete(oldRoutes, t.RouteKey())
	}
	if len(oldRoutes) > 0 {
		n := g.live.closeMatching(func(s *session) bool { return oldRoutes[s.routeKey()] })
		if n > 0 {
			g.log.Info("closed connections of removed tunnels", "connections", n)
		}
	}
	return slices.Clone(ts), nil
}

// CloseClient closes every live connection to a client, for when the
// client is removed; it returns how many there were.
func (g *Gateway) CloseClient(clientID string) int {
	return g.live.closeMatching(func(s *session) bool { return s.is("", clientID) })
}

// Live reports how many proxied connections are open.
func (g *Gateway) Live() int { return g.live.count() }

// Shutdown stops accepting, lets live connections finish until ctx ends,
// then closes whatever is left, like Close. It returns how many
// connections had to be cut.
func (g *Gateway) Shutdown(ctx context.Context) int {
	g.mu.Lock()
	ls := g.listeners
	g.listeners = map[string]*listener{}
	g.draining = true
	g.mu.Unlock()
	for _, l := range ls {
		l.ln.Close()
	}
	for delay := 5 * time.Millisecond; g.live.count() > 0; delay = min(2*delay, 100*time.Millisecond) {
		select {
		case <-ctx.Done():
			n := g.live.count()
			g.Close()
			return n
		case <-time.After(delay):
		}
	}
	g.Close()
	return 0
}

// Close stops every listener, closes every connection and waits for all of
// the Gateway's goroutines. It is idempotent.
func (g *Gateway) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	ls := g.listeners
	g.listeners = map[string]*listener{}
	g.mu.Unlock()
	g.cancel()
	for _, l := range ls {
		l.ln.Close()
	}
	g.live.shutdown()
	g.wg.Wait()
	return nil
}

func (g *Gateway) serve(l *listener) {
	defer g.wg.Done()
	acceptLoop(g.ctx, l.ln, g.log, &g.wg, func(c net.Conn) { g.handle(l, c) })
}

func (g *Gateway) handle(l *listener, public net.Conn) {
	routes := l.routes.Load()
	if routes == nil || len(*routes) == 0 {
		public.Close()
		return
	}
	s := &session{}
	if !g.live.start(s) {
		public.Close()
		return
	}
	defer g.live.end(s)
	if !s.add(public) {
		return
	}
	t, public, reason := g.route(*routes, public)
	if reason != "" {
		g.cfg.Rejected(reason)
		s.close()
		return
	}
	s.setRoute(t.RouteKey())
	// Apply publishes the new tunnels before closing the sessions of removed
	// ones; a session that picked its route from the old list just before is
	// caught here instead.
	if !g.hasRoute(t.RouteKey()) {
		s.close()
		return
	}
	if !s.add(public) { // the replaying wrapper, if the route was peeked
		return
	}
	log := g.log.With("tunnel", t.RouteKey(), "from", addrString(public.RemoteAddr()))
	up, client, err := g.dial(t)
	if err != nil {
		log.Info("connection refused: no client reachable", "clients", t.Clients(), "err", err)
		g.cfg.Rejected(RejectNoClient)
		s.close()
		return
	}
	s.setClient(client)
	if !s.add(up) {
		return
	}
	// Likewise for a client removed or rotated while it was being dialled.
	if !g.cfg.Connected(client) {
		s.close()
		return
	}
	log = log.With("client", client)
	req := Request{
		Service:              t.BackEndService,
		Source:               addrPortOf(public.RemoteAddr()),
		Destination:          addrPortOf(public.LocalAddr()),
		BackendProxyProtocol: t.backendProxyVersion(),
	}
	_ = up.SetWriteDeadline(time.Now().Add(g.cfg.DialTimeout))
	if err := WriteRequest(up, req); err != nil {
		log.Info("connection refused: sending request to client", "err", err)
		g.cfg.Rejected(RejectNoClient)
		s.close()
		return
	}
	_ = up.SetWriteDeadline(time.Time{})
	var m Meter
	if g.cfg.Observe != nil {
		obs := g.cfg.Observe(t, client)
		defer obs.Done()
		m = Meter{AToB: obs.In, BToA: obs.Out}
	}
	res := JoinMetered(public, &statusConn{Conn: up}, g.cfg.Timeouts, m)
	switch {
	case errors.Is(res.Err, ErrUnknownService):
		g.cfg.Rejected(RejectUnknownService)
	case errors.Is(res.Err, ErrBackendUnreachable):
		g.cfg.Rejected(RejectBackendUnreachable)
	}
	log.Debug("connection done", "bytes_in", res.AToB, "bytes_out", res.BToA, "err", res.Err)
}

// route picks the tunnel for a new connection. A port served by one "*"
// tunnel needs no peeking; otherwise the TLS server name or HTTP Host is
// peeked (and replayed unchanged through the returned conn) and the most
// specific matching glob wins.
func (g *Gateway) route(routes []Tunnel, c net.Conn) (Tunnel, net.Conn, string) {
	if len(routes) == 1 && routes[0].ListenHostnameGlob == "*" {
		return routes[0], c, ""
	}
	host, proto, replay, err := PeekHostname(c, g.cfg.PeekTimeout, DefaultPeekMaxBytes)
	if err != nil {
		g.log.Info("connection dropped: no host name could be read", "from", addrString(c.RemoteAddr()), "err", err)
		return Tunnel{}, nil, RejectNoHostname
	}
	globs := make([]string, len(routes))
	for i, t := range routes {
		globs[i] = t.ListenHostnameGlob
	}
	i, ok := PickRoute(globs, host)
	if !ok {
		g.log.Info("connection dropped: no tunnel for this host name", "from", addrString(c.RemoteAddr()), "host", host, "protocol", proto.String())
		return Tunnel{}, nil, RejectNoRoute
	}
	return routes[i], replay, ""
}

// dial reaches the first connected client of t that answers.
func (g *Gateway) dial(t Tunnel) (net.Conn, string, error) {
	var candidates []string
	for _, id := range t.Clients() {
		if g.cfg.Connected(id) {
			candidates = append(candidates, id)
		}
	}
	if len(candidates) == 0 {
		return nil, "", fmt.Errorf("none of %v is connected", t.Clients())
	}
	var errs []error
	for i, id := range candidates {
		timeout := g.cfg.DialTimeout
		if i < len(candidates)-1 {
			timeout = min(timeout, failoverDialTimeout)
		}
		ctx, cancel := context.WithTimeout(g.ctx, timeout)
		up, err := g.cfg.Dial(ctx, id)
		cancel()
		if err == nil {
			return up, id, nil
		}
		errs = append(errs, err)
		if g.ctx.Err() != nil {
			break
		}
	}
	return nil, "", errors.Join(errs...)
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
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
