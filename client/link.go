package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/netstack"
	"github.com/thresholdtunnel/threshold/wg"
)

const (
	// heartbeatInterval is how often the client pings each server; a
	// server calls it connected while the last ping is younger than
	// control.DefaultHeartbeatTimeout, and the client judges the server
	// the same way from the answers.
	heartbeatInterval = time.Second
	// persistentKeepalive keeps the NAT mapping towards a server open.
	persistentKeepalive = 25 * time.Second
	// reresolveAfter: when a server has not answered for this long, look
	// its host name up again in case its address changed.
	reresolveAfter = 30 * time.Second
	// resolveTimeout bounds one lookup of a server's host name.
	resolveTimeout = 10 * time.Second
	// Until a host name resolves, it is looked up again after
	// resolveBackoffMin, doubling up to resolveBackoffMax: a home server
	// that boots before its network finds its servers once it is up.
	resolveBackoffMin = time.Second
	resolveBackoffMax = 10 * time.Second
	// A failing lookup is warned about at once, then at most this often.
	resolveWarnEvery = time.Minute
	// A server not connected for warnAfter gets a warning that names the
	// likely causes; it is repeated after warnRepeatMin, doubling up to
	// warnRepeatMax, until the server answers.
	warnAfter     = 10 * time.Second
	warnRepeatMin = 20 * time.Second
	warnRepeatMax = 5 * time.Minute
)

// linkState is where the client stands with one server.
type linkState string

const (
	stateResolving    linkState = "resolving"    // its host name has no address yet
	stateConnecting   linkState = "connecting"   // never answered yet
	stateConnected    linkState = "connected"    // answers heartbeats
	stateDisconnected linkState = "disconnected" // answered, then stopped
)

// link is the client's attachment to one server: a TCP/IP stack and a
// WireGuard device of its own (every server is wg.ServerAddr inside its
// tunnel, so one device with a peer per server would overlap), the
// connectors serving that server's tunneled connections and UDP sessions
// from the shared service map, and the heartbeats that tell whether the server is there.
// Links share nothing but the service map and the SOCKS5 port, so a server
// that is down slows no other.
type link struct {
	index     int
	srv       Server
	serverKey wg.Key
	clientKey wg.Key // the client's public key, for messages
	clientID  string
	log       *slog.Logger
	changed   func() // tells the client the state moved (non-blocking)

	stack  *netstack.Stack
	dev    *wg.Device
	conn   *forward.Connector
	connLn net.Listener
	udp    *forward.UDPConnector
	udpPC  net.PacketConn
	hb     net.Conn

	lastPong atomic.Int64 // unix nanos of the last heartbeat answer
	instance uint32       // the server's, from its heartbeat answers; owned by readPongs
	relayed  connSet      // SOCKS5 connections relayed through this server

	mu            sync.Mutex // guards what follows
	endpoint      netip.AddrPort
	state         linkState
	since         time.Time // when state began
	downSince     time.Time // when the server was last found not answering (or the link started)
	resolveErr    error     // the last failed lookup, while resolving
	resolveWarned time.Time
}

// newLink builds the stack, device, connector and sockets for one server;
// it neither resolves nor sends anything until run. What it built is
// undone by the closers it adds, also when it fails.
func newLink(c *Client, i int, srv Server, onClose func(func() error)) (l *link, err error) {
	l = &link{
		index:     i,
		srv:       srv,
		clientKey: c.key.PublicKey(),
		clientID:  c.cfg.ClientId,
		log:       c.log.With("server", srv.String()),
		changed:   c.notify,
		state:     stateResolving,
	}
	l.since = time.Now()
	l.downSince = l.since
	l.serverKey, _ = wg.ParseKey(srv.ServerPublicKey) // checked
	if a, err := netip.ParseAddr(srv.ServerHost); err == nil {
		l.endpoint = netip.AddrPortFrom(a.Unmap(), uint16(srv.ServerTunnelControlPort))
		l.state = stateConnecting
	}
	addr := wg.ClientAddr(l.clientKey)
	if l.stack, err = netstack.New(netstack.Options{Addresses: []netip.Addr{addr}}); err != nil {
		return nil, err
	}
	onClose(l.stack.Close)
	if l.dev, err = wg.New(wg.Config{PrivateKey: c.key, TUN: l.stack, Logger: l.log.With("component", "wireguard")}); err != nil {
		return nil, err
	}
	onClose(l.dev.Close) // before the stack's: the device closes its TUN itself
	// Until the server has an address it is no peer at all: wireguard-go
	// would only complain that it has nowhere to send.
	if l.endpoint.IsValid() {
		if err = l.dev.SetPeer(l.peer(l.endpoint)); err != nil {
			return nil, err
		}
	}
	if l.connLn, err = l.stack.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), forward.ConnectorPort)); err != nil {
		return nil, fmt.Errorf("listening in the tunnel: %w", err)
	}
	onClose(l.connLn.Close)
	if l.udpPC, err = l.stack.ListenUDPBuffered(netip.AddrPortFrom(netip.IPv6Unspecified(), forward.UDPConnectorPort), forward.UDPTunnelSocketBuffer); err != nil {
		return nil, fmt.Errorf("listening for UDP in the tunnel: %w", err)
	}
	onClose(l.udpPC.Close)
	if l.hb, err = l.stack.DialUDP(netip.AddrPortFrom(wg.ServerAddr, forward.HeartbeatPort)); err != nil {
		return nil, fmt.Errorf("heartbeat socket: %w", err)
	}
	onClose(l.hb.Close)
	cc := c.cfg.connectorConfig()
	cc.Logger = l.log.With("component", "connector")
	if l.conn, err = forward.NewConnector(cc); err != nil {
		return nil, err
	}
	onClose(l.conn.Close)
	uc := c.cfg.udpConnectorConfig()
	uc.Logger = l.log.With("component", "udp")
	if l.udp, err = forward.NewUDPConnector(uc); err != nil {
		return nil, err
	}
	onClose(l.udp.Close)
	onClose(func() error { l.relayed.closeAll(); return nil })
	return l, nil
}

func (l *link) peer(ep netip.AddrPort) wg.Peer {
	return wg.Peer{
		PublicKey:           l.serverKey,
		AllowedIPs:          []netip.Prefix{netip.PrefixFrom(wg.ServerAddr, 128)},
		Endpoint:            ep,
		PersistentKeepalive: persistentKeepalive,
	}
}

// announce logs which server this link uses, so that a user can compare
// the key and address with the server's own start line.
func (l *link) announce() {
	ep := "resolving " + l.srv.ServerHost
	if l.endpoint.IsValid() {
		ep = l.endpoint.String()
	}
	l.log.Info("using server", "server_public_key", l.serverKey.String(), "endpoint", ep, "order", l.index+1)
}

// serve runs the link's goroutines on wg until ctx ends.
func (l *link) serve(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(4)
	go func() { defer wg.Done(); l.conn.Serve(l.connLn) }()
	go func() { defer wg.Done(); l.udp.Serve(l.udpPC) }()
	go func() { defer wg.Done(); l.readPongs(ctx) }()
	go func() { defer wg.Done(); l.run(ctx) }()
}

// connected reports whether the server answered a heartbeat lately.
func (l *link) connected() bool {
	return time.Since(time.Unix(0, l.lastPong.Load())) < control.DefaultHeartbeatTimeout
}

func (l *link) currentEndpoint() netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.endpoint
}

// run resolves the server until it has an address, sends heartbeats, and
// notices when their answers stop (readPongs notices when they start): it
// logs each change, explains a server that does not answer, forces
// handshakes while it does not, and looks its name up again when it has
// been silent for long.
func (l *link) run(ctx context.Context) {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	start := time.Now()
	nextResolve, backoff := start, time.Duration(0)
	lastResolve := start
	var warn warnSchedule
	for seq := uint64(1); ; seq++ {
		now := time.Now()
		ep := l.currentEndpoint()
		if !ep.IsValid() && !now.Before(nextResolve) {
			backoff = min(max(2*backoff, resolveBackoffMin), resolveBackoffMax)
			nextResolve = now.Add(backoff)
			lastResolve = now
			if err := l.resolve(ctx, backoff); err == nil {
				ep = l.currentEndpoint()
			}
		}
		if ep.IsValid() {
			if _, err := l.hb.Write(forward.Ping(seq)); err != nil {
				l.log.Debug("heartbeat send failed", "err", err)
			}
			if seq%forward.HelloEvery == 1 {
				// Our name, for a server that compares it with its own
				// for this key (an older one ignores it).
				l.hb.Write(forward.Hello(l.clientID))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now = time.Now()
		if !l.connected() {
			l.markDown(now)
		}
		l.mu.Lock()
		up, downSince := l.state == stateConnected, l.downSince
		l.mu.Unlock()
		if up {
			warn.reset()
			continue
		}
		if !ep.IsValid() {
			continue // resolve warns by itself
		}
		// The server may have restarted and lost our session: it drops
		// what we send under the old keys until we handshake again.
		// wireguard-go sends at most one initiation per 5 s.
		if err := l.dev.Rehandshake(l.serverKey); err != nil {
			l.log.Debug("forcing a handshake", "err", err)
		}
		if warn.due(now, downSince) {
			l.explain(now.Sub(downSince), downSince)
		}
		if now.Sub(downSince) > reresolveAfter && now.Sub(lastResolve) > reresolveAfter {
			lastResolve = now
			l.reresolve(ctx)
		}
	}
}

// warnSchedule says when a server that does not answer is explained:
// warnAfter after it stopped (or the link started), then after
// warnRepeatMin, doubling up to warnRepeatMax.
type warnSchedule struct {
	next  time.Time // zero: not scheduled since the last reset
	every time.Duration
}

// reset starts over, for the next time the server stops answering.
func (w *warnSchedule) reset() { *w = warnSchedule{} }

// due reports whether to warn now about a server silent since downSince,
// and if so schedules the next warning.
func (w *warnSchedule) due(now, downSince time.Time) bool {
	if w.next.IsZero() {
		w.next, w.every = downSince.Add(warnAfter), warnRepeatMin
	}
	if now.Before(w.next) {
		return false
	}
	w.next, w.every = now.Add(w.every), min(2*w.every, warnRepeatMax)
	return true
}

// markUp records that the server answered; the first answer after none
// is logged, with how long the client waited for it.
func (l *link) markUp(now time.Time) {
	l.mu.Lock()
	if l.state == stateConnected {
		l.mu.Unlock()
		return
	}
	l.state, l.since = stateConnected, now
	waited, ep := now.Sub(l.downSince), l.endpoint
	l.mu.Unlock()
	l.log.Info("connected to server", "endpoint", ep, "after", waited.Round(time.Millisecond))
	l.changed()
}

// markDown records that a connected server stopped answering.
func (l *link) markDown(now time.Time) {
	l.mu.Lock()
	if l.state != stateConnected {
		l.mu.Unlock()
		return
	}
	l.state, l.since, l.downSince = stateDisconnected, now, now
	ep := l.endpoint
	l.mu.Unlock()
	l.log.Warn("server not answering; retrying", "endpoint", ep)
	l.changed()
}

// explain warns that the server has not answered for waited, naming what
// is most likely wrong: without a handshake, the keys or the path; with
// one, the server itself.
func (l *link) explain(waited time.Duration, since time.Time) {
	attrs := []any{"endpoint", l.currentEndpoint(), "waited", waited.Round(time.Second),
		"client_id", l.clientID, "client_public_key", l.clientKey.String(), "server_public_key", l.serverKey.String()}
	if hs := l.lastHandshake(); !hs.IsZero() && hs.After(since) {
		l.log.Warn("WireGuard handshakes with the server succeed but its heartbeats go unanswered: it is probably not a threshold server of a compatible version, or it is overloaded", attrs...)
		return
	}
	l.log.Warn(fmt.Sprintf("no WireGuard handshake with the server for %s. Likely causes, most likely first: "+
		"(1) this client's key is not registered on that server: register client_public_key (below) as %q, with PUT /clients/%s or in the Clients of its server.json; "+
		"(2) ServerPublicKey is not that server's key: compare server_public_key (below) with the public_key the server logs when it starts; "+
		"(3) UDP port %d of %s is blocked on the way (a firewall or cloud security group), or the server is not running",
		waited.Round(time.Second), l.clientID, l.clientID, l.srv.ServerTunnelControlPort, l.srv.ServerHost), attrs...)
}

// lastHandshake is the last WireGuard handshake with the server; zero if
// none.
func (l *link) lastHandshake() time.Time {
	st, ok := l.peerStats()
	if !ok {
		return time.Time{}
	}
	return st.LastHandshake
}

func (l *link) peerStats() (wg.PeerStats, bool) {
	peers, err := l.dev.Peers()
	if err != nil {
		return wg.PeerStats{}, false
	}
	for _, p := range peers {
		if p.PublicKey == l.serverKey {
			return p, true
		}
	}
	return wg.PeerStats{}, false
}

// resolve looks the server's name up for the first time and, on success,
// gives the device its endpoint. It warns at the first failure and then
// every resolveWarnEvery, not at each retry.
func (l *link) resolve(ctx context.Context, retryIn time.Duration) error {
	ep, err := resolveServer(ctx, l.srv.ServerHost, l.srv.ServerTunnelControlPort)
	if err != nil {
		now := time.Now()
		l.mu.Lock()
		l.resolveErr = err
		warn := now.Sub(l.resolveWarned) >= resolveWarnEvery
		if warn {
			l.resolveWarned = now
		}
		l.mu.Unlock()
		level := slog.LevelDebug
		if warn {
			level = slog.LevelWarn
		}
		l.log.Log(ctx, level, "cannot look up the server's address; retrying", "err", err, "retry_in", retryIn)
		return err
	}
	if err := l.dev.SetPeer(l.peer(ep)); err != nil {
		l.log.Warn("setting the server endpoint", "err", err)
		return err
	}
	l.mu.Lock()
	l.endpoint, l.resolveErr = ep, nil
	if l.state == stateResolving {
		l.state, l.since = stateConnecting, time.Now()
	}
	l.mu.Unlock()
	l.changed()
	l.log.Info("server address found", "endpoint", ep)
	return nil
}

// reresolve looks the name up again for a server that has been silent,
// in case its address changed; a failure keeps the old address.
func (l *link) reresolve(ctx context.Context) {
	if _, err := netip.ParseAddr(l.srv.ServerHost); err == nil {
		return // an address never changes
	}
	ep, err := resolveServer(ctx, l.srv.ServerHost, l.srv.ServerTunnelControlPort)
	if err != nil {
		l.log.Warn("re-resolving server", "err", err)
		return
	}
	old := l.currentEndpoint()
	if ep == old {
		return
	}
	if err := l.dev.SetPeer(l.peer(ep)); err != nil {
		l.log.Warn("updating server endpoint", "err", err)
		return
	}
	l.mu.Lock()
	l.endpoint = ep
	l.mu.Unlock()
	l.log.Info("server address changed", "old", old, "new", ep)
}

func resolveServer(ctx context.Context, host string, port int) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolving ServerHost %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolving ServerHost %q: no addresses", host)
	}
	// Prefer IPv4: it is what most home NATs route.
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), uint16(port)), nil
}

func (l *link) readPongs(ctx context.Context) {
	buf := make([]byte, 64)
	for {
		n, err := l.hb.Read(buf)
		if err != nil {
			// A refused datagram (no heartbeat socket on a server that is
			// starting or stopping) surfaces here too: keep listening.
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if forward.IsPing(buf[:n]) {
			now := time.Now()
			l.lastPong.Store(now.UnixNano())
			l.serverInstance(forward.PingInstance(buf[:n]))
			l.markUp(now)
		}
	}
}

// serverInstance notes the server instance a heartbeat answer carries. A
// new one means this server restarted: the connections it had through the
// tunnel died with it, so the client's ends (and the backend connections
// behind them) are closed now rather than when they go idle. Other
// servers' connections are not touched.
func (l *link) serverInstance(id uint32) {
	if id == 0 || id == l.instance {
		return
	}
	old := l.instance
	l.instance = id
	if old == 0 {
		return
	}
	n := l.conn.CloseAll() + l.udp.CloseAll() + l.relayed.closeAll()
	l.log.Info("the server restarted: closed the connections it had", "connections", n)
}

// dialSocks opens a connection to the server's SOCKS5 service through
// this link, tracked so that it is closed with the link.
func (l *link) dialSocks(ctx context.Context) (net.Conn, error) {
	c, err := l.stack.DialTCP(ctx, netip.AddrPortFrom(wg.ServerAddr, forward.SocksPort))
	if err != nil {
		return nil, err
	}
	return l.relayed.track(c), nil
}

// connSet is a set of live connections that can be closed at once.
type connSet struct {
	mu sync.Mutex
	m  map[*trackedConn]struct{}
}

func (s *connSet) track(c net.Conn) net.Conn {
	t := &trackedConn{Conn: c, set: s}
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[*trackedConn]struct{})
	}
	s.m[t] = struct{}{}
	s.mu.Unlock()
	return t
}

func (s *connSet) remove(t *trackedConn) {
	s.mu.Lock()
	delete(s.m, t)
	s.mu.Unlock()
}

// closeAll closes every connection in the set and returns how many.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	victims := make([]*trackedConn, 0, len(s.m))
	for t := range s.m {
		victims = append(victims, t)
	}
	s.mu.Unlock()
	for _, t := range victims {
		t.Close()
	}
	return len(victims)
}

func (s *connSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// trackedConn leaves its set when closed.
type trackedConn struct {
	net.Conn
	set *connSet
}

func (t *trackedConn) Close() error {
	t.set.remove(t)
	return t.Conn.Close()
}

// NetConn is the tunnel's conn beneath: the relay's join waits for it to
// be readable without a goroutine per quiet direction (forward.waiterOf
// unwraps through NetConn); reads, writes and Close still go through t.
func (t *trackedConn) NetConn() net.Conn { return t.Conn }

// CloseWrite half-closes, as the relay's join expects of a TCP conn.
func (t *trackedConn) CloseWrite() error {
	if cw, ok := t.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return t.Conn.Close()
}
