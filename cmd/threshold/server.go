package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/mgmt"
	"github.com/thresholdtunnel/threshold/netstack"
	"github.com/thresholdtunnel/threshold/wg"
)

// Ports inside the tunnel. Only the tunnel's peers can reach them.
const (
	connectorPort = 4000 // on each client: tunneled public connections
	heartbeatPort = 4001 // on the server: UDP echo the clients ping
	socksPort     = 1080 // on the server: SOCKS5 egress
)

// How a client is judged connected: it pings the server through the tunnel
// every heartbeatInterval; the server calls it connected while the last
// ping is younger than heartbeatTimeout. A lost client is therefore noticed
// within heartbeatTimeout plus one state check (stateCheckInterval).
const (
	heartbeatInterval  = time.Second
	heartbeatTimeout   = 3 * time.Second
	stateCheckInterval = 250 * time.Millisecond
)

// ErrClientNotConnected is returned when a tunnel's client is not connected.
var ErrClientNotConnected = errors.New("client is not connected")

type server struct {
	log     *slog.Logger
	cfg     ServerConfig
	key     wg.Key
	stack   *netstack.Stack
	dev     *wg.Device
	gw      *forward.Gateway
	egress  *forward.Egress
	hb      net.PacketConn
	auth    *mgmt.Auth
	metrics *metrics

	opMu    sync.Mutex // serializes changes made through the API
	mu      sync.Mutex // guards clients and byAddr
	clients map[string]*registered
	byAddr  map[netip.Addr]*registered

	wg sync.WaitGroup
}

type registered struct {
	id        string
	pub       wg.Key
	addr      netip.Addr
	socks     bool
	lastPing  time.Time
	state     string
	lastState string
	// SOCKS5 egress payload bytes, kept across key rotations.
	egressSent, egressReceived *atomic.Uint64
}

func newServer(cfg ServerConfig, log *slog.Logger) (_ *server, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &server{
		log:     log,
		cfg:     cfg,
		clients: make(map[string]*registered),
		byAddr:  make(map[netip.Addr]*registered),
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	// Everything that can refuse to start does so before anything listens.
	var saved stateFile
	found := false
	if cfg.StateDir != "" {
		if saved, found, err = loadState(cfg.StateDir); err != nil {
			return nil, err
		}
		if found {
			log.Info("restoring state", "dir", cfg.StateDir, "clients", len(saved.Clients), "tunnels", len(saved.Tunnels))
		}
	}
	// The config's Clients bootstrap a server with no saved state. Once
	// there is state, it is authoritative: a key rotated or a client removed
	// through the API must not come back with a restart.
	clients := saved.Clients
	if !found {
		clients = cfg.Clients
	} else {
		for _, c := range configClientsNotInState(cfg.Clients, saved.Clients) {
			log.Warn("config Clients entry differs from the saved state and is ignored; change clients through the API", "client", c)
		}
	}
	if s.auth, err = mgmt.NewAuth(cfg.authConfigWithLog(netip.MustParseAddr(cfg.ManagementAddress), log.With("component", "mgmt"))); err != nil {
		return nil, err
	}
	if s.key, err = loadOrCreateKey(cfg.PrivateKeyFile, log); err != nil {
		return nil, err
	}
	s.metrics = newMetrics(s.Clients)
	if s.stack, err = netstack.New(netstack.Options{Addresses: []netip.Addr{wg.ServerAddr}}); err != nil {
		return nil, err
	}
	if s.dev, err = wg.New(wg.Config{PrivateKey: s.key, ListenPort: cfg.TunnelControlPort, TUN: s.stack, Logger: log.With("component", "wireguard")}); err != nil {
		s.stack.Close()
		s.stack = nil
		return nil, err
	}
	for _, c := range clients {
		if _, _, err := s.putClient(c.ClientId, mgmt.ClientRegistration{PublicKey: c.PublicKey, Socks5Enabled: c.Socks5Enabled}); err != nil {
			return nil, fmt.Errorf("registering client %q: %w", c.ClientId, err)
		}
	}
	if s.hb, err = s.stack.ListenUDP(netip.AddrPortFrom(wg.ServerAddr, heartbeatPort)); err != nil {
		return nil, fmt.Errorf("heartbeat socket: %w", err)
	}
	if s.gw, err = forward.NewGateway(forward.GatewayConfig{
		Dial:        s.dialClient,
		Connected:   s.connected,
		PeekTimeout: time.Duration(cfg.HostnamePeekTimeoutSeconds * float64(time.Second)),
		Observe:     s.metrics.observe,
		Rejected:    func(reason string) { s.metrics.rejected.WithLabelValues(reason).Inc() },
		Logger:      log.With("component", "gateway"),
	}); err != nil {
		return nil, err
	}
	policy, err := cfg.egressPolicy()
	if err != nil {
		return nil, err
	}
	var egressAddr netip.Addr
	if cfg.Socks5EgressAddress != "" {
		egressAddr = netip.MustParseAddr(cfg.Socks5EgressAddress) // validated
	}
	if s.egress, err = forward.NewEgress(forward.EgressConfig{
		Logger:        log.With("component", "socks5"),
		Policy:        policy,
		LocalAddr:     egressAddr,
		ClientAllowed: s.socksAllowed,
		Meter:         s.egressMeter,
	}); err != nil {
		return nil, err
	}
	if len(saved.Tunnels) > 0 {
		if _, err := s.applyTunnels(saved.Tunnels); err != nil {
			return nil, fmt.Errorf("restoring tunnels from %s: %w", cfg.StateDir, err)
		}
	}
	if err := s.persist(); err != nil {
		return nil, err
	}
	log.Info("threshold server started", "public_key", s.key.PublicKey().String(), "tunnel_port", cfg.TunnelControlPort)
	return s, nil
}

// run serves until ctx ends, then shuts down gracefully: public listeners
// close at once, live connections get the grace period to finish.
func (s *server) run(ctx context.Context) error {
	mgmtAddr := net.JoinHostPort(s.cfg.ManagementAddress, strconv.Itoa(s.cfg.ManagementPort))
	handler, err := mgmt.NewHandler(s, s.log.With("component", "mgmt"), mgmt.Options{Auth: s.auth, Metrics: s.metrics.reg})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", mgmtAddr)
	if err != nil {
		return fmt.Errorf("management API: %w", err)
	}
	tlsConfig := s.auth.TLSConfig()
	api := mgmt.NewHTTPServer(handler, tlsConfig, slog.NewLogLogger(s.log.Handler(), slog.LevelDebug))
	s.log.Info("management API listening", "address", ln.Addr().String(), "auth", s.auth.Mode())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	socksLn, err := s.stack.ListenTCP(netip.AddrPortFrom(wg.ServerAddr, socksPort))
	if err != nil {
		ln.Close()
		return fmt.Errorf("SOCKS5 listener in the tunnel: %w", err)
	}
	s.wg.Add(4)
	go func() { defer s.wg.Done(); s.egress.Serve(socksLn, s.identify) }()
	go func() { defer s.wg.Done(); s.echoHeartbeats() }()
	go func() { defer s.wg.Done(); s.trackStates(ctx) }()
	apiErr := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		var err error
		if tlsConfig != nil {
			err = api.ServeTLS(ln, "", "")
		} else {
			err = api.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			apiErr <- err
			cancel()
		}
	}()
	<-ctx.Done()
	grace := time.Duration(s.cfg.ShutdownGracePeriodSeconds * float64(time.Second))
	s.log.Info("shutting down: no new connections; live ones may finish", "live", s.gw.Live(), "grace", grace)
	apiCtx, stopAPI := context.WithTimeout(context.Background(), 2*time.Second)
	api.Shutdown(apiCtx)
	stopAPI()
	graceCtx, stopGrace := context.WithTimeout(context.Background(), grace)
	if cut := s.gw.Shutdown(graceCtx); cut > 0 {
		s.log.Warn("grace period over: closed live connections", "connections", cut)
	}
	stopGrace()
	s.close()
	s.wg.Wait()
	s.log.Info("stopped")
	select {
	case err := <-apiErr:
		return fmt.Errorf("management API: %w", err)
	default:
		return nil
	}
}

// close releases everything newServer built; safe on a partial server.
func (s *server) close() {
	if s.gw != nil {
		s.gw.Close()
	}
	if s.egress != nil {
		s.egress.Close()
	}
	if s.hb != nil {
		s.hb.Close()
	}
	if s.dev != nil {
		s.dev.Close() // closes the stack too
	} else if s.stack != nil {
		s.stack.Close()
	}
}

// echoHeartbeats answers each client's ping. The source address is
// authenticated: WireGuard only accepts it from the peer it belongs to.
func (s *server) echoHeartbeats() {
	buf := make([]byte, 64)
	for {
		n, from, err := s.hb.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok || !isPing(buf[:n]) {
			continue
		}
		addr := ua.AddrPort().Addr().Unmap()
		s.mu.Lock()
		if c := s.byAddr[addr]; c != nil {
			c.lastPing = time.Now()
		}
		s.mu.Unlock()
		s.hb.WriteTo(buf[:n], from)
	}
}

func (s *server) trackStates(ctx context.Context) {
	t := time.NewTicker(stateCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		s.mu.Lock()
		for _, c := range s.clients {
			want := c.state
			switch {
			case !c.lastPing.IsZero() && now.Sub(c.lastPing) < heartbeatTimeout:
				want = mgmt.ClientConnected
			case c.state == mgmt.ClientConnected:
				want = mgmt.ClientDisconnected
			}
			if want != c.state {
				c.lastState, c.state = c.state, want
				s.log.Info("client state changed", "client", c.id, "state", want)
			}
		}
		s.mu.Unlock()
	}
}

// identify names the client a tunnel connection comes from. Its source
// address is authenticated by WireGuard.
func (s *server) identify(c net.Conn) (string, error) {
	ra, ok := c.RemoteAddr().(*net.TCPAddr) // nil after a failed connection
	if !ok {
		return "", errors.New("connection has no remote address")
	}
	addr := ra.AddrPort().Addr().Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.byAddr[addr]; r != nil {
		return r.id, nil
	}
	return "", fmt.Errorf("%s is no registered client's tunnel address", addr)
}

func (s *server) socksAllowed(clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.clients[clientID]; r == nil || !r.socks {
		return fmt.Errorf("SOCKS5 is disabled for client %q", clientID)
	}
	return nil
}

// egressMeter counts a SOCKS5 session's bytes for GET /clients and /metrics.
func (s *server) egressMeter(clientID string) forward.Meter {
	s.mu.Lock()
	r := s.clients[clientID]
	s.mu.Unlock()
	if r == nil {
		return forward.Meter{}
	}
	sent, received := s.metrics.egressMeter(clientID)
	return forward.Meter{
		AToB: func(n int64) { r.egressSent.Add(uint64(n)); sent.Add(float64(n)) },
		BToA: func(n int64) { r.egressReceived.Add(uint64(n)); received.Add(float64(n)) },
	}
}

func (s *server) connected(clientID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[clientID]
	return c != nil && c.state == mgmt.ClientConnected
}

// dialClient reaches a client's connector through the tunnel.
func (s *server) dialClient(ctx context.Context, clientID string) (net.Conn, error) {
	s.mu.Lock()
	c := s.clients[clientID]
	var addr netip.Addr
	connected := false
	if c != nil {
		addr, connected = c.addr, c.state == mgmt.ClientConnected
	}
	s.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("client %q: %w", clientID, mgmt.ErrNotFound)
	}
	if !connected {
		return nil, fmt.Errorf("client %q: %w", clientID, ErrClientNotConnected)
	}
	conn, err := s.stack.DialTCP(ctx, netip.AddrPortFrom(addr, connectorPort))
	if err != nil {
		return nil, fmt.Errorf("dialing client %q: %w", clientID, err)
	}
	return conn, nil
}

// --- mgmt.Backend ---

func (s *server) Tunnels() []forward.Tunnel { return s.gw.Tunnels() }

// SetTunnels applies a new tunnel list and saves it; if it cannot be
// saved, the previous list is put back.
func (s *server) SetTunnels(ts []forward.Tunnel) ([]forward.Tunnel, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	prev := s.gw.Tunnels()
	applied, err := s.applyTunnels(ts)
	if err != nil {
		return nil, err
	}
	if err := s.persist(); err != nil {
		if _, undoErr := s.gw.Apply(prev); undoErr != nil {
			s.log.Error("undoing a tunnel change that could not be saved", "err", undoErr)
			return nil, fmt.Errorf("%w; undoing the change failed too (%v): the new tunnels are in force but not saved", err, undoErr)
		}
		return nil, fmt.Errorf("%w; the change was undone", err)
	}
	return applied, nil
}

// applyTunnels checks that every client is registered, then applies.
func (s *server) applyTunnels(ts []forward.Tunnel) ([]forward.Tunnel, error) {
	s.mu.Lock()
	var p []string
	for i, t := range ts {
		for _, id := range t.Clients() {
			if id != "" && s.clients[id] == nil {
				p = append(p, fmt.Sprintf("tunnels[%d]: client %q is not registered", i, id))
			}
		}
	}
	s.mu.Unlock()
	if len(p) > 0 {
		// Report field problems too, so the caller sees everything at once.
		p = append(forward.CheckTunnels(slices.Clone(ts)), p...)
		return nil, &forward.ProblemsError{Kind: forward.ErrInvalid, Problems: p}
	}
	if _, err := s.gw.Apply(ts); err != nil {
		return nil, err
	}
	return s.gw.Tunnels(), nil
}

// persist saves clients and tunnels to StateDir, if there is one.
func (s *server) persist() error {
	if s.cfg.StateDir == "" {
		return nil
	}
	st := stateFile{}
	s.mu.Lock()
	for _, c := range s.clients {
		socks := c.socks
		st.Clients = append(st.Clients, ClientRegistration{ClientId: c.id, PublicKey: c.pub.String(), Socks5Enabled: &socks})
	}
	s.mu.Unlock()
	slices.SortFunc(st.Clients, func(a, b ClientRegistration) int { return strings.Compare(a.ClientId, b.ClientId) })
	if s.gw != nil {
		st.Tunnels = s.gw.Tunnels()
	}
	return saveState(s.cfg.StateDir, st)
}

func (s *server) Clients() map[string]mgmt.ClientStatus {
	stats, err := s.dev.Peers()
	if err != nil {
		s.log.Warn("reading WireGuard peers", "err", err)
	}
	byKey := make(map[wg.Key]wg.PeerStats, len(stats))
	for _, st := range stats {
		byKey[st.PublicKey] = st
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]mgmt.ClientStatus, len(s.clients))
	for id, c := range s.clients {
		out[id] = s.statusLocked(c, byKey[c.pub])
	}
	return out
}

func (s *server) statusLocked(c *registered, st wg.PeerStats) mgmt.ClientStatus {
	cs := mgmt.ClientStatus{
		CurrentState:        c.state,
		LastState:           c.lastState,
		PublicKey:           c.pub.String(),
		TunnelAddress:       c.addr.String(),
		BytesIn:             st.RxBytes,
		BytesOut:            st.TxBytes,
		Socks5Enabled:       c.socks,
		Socks5BytesSent:     c.egressSent.Load(),
		Socks5BytesReceived: c.egressReceived.Load(),
	}
	if !st.LastHandshake.IsZero() {
		t := st.LastHandshake.UTC()
		cs.LastHandshake = &t
	}
	return cs
}

// PutClient registers a client or rotates its key, and saves the change.
// A rotation replaces the peer and closes the client's connections; other
// clients are untouched.
func (s *server) PutClient(id string, reg mgmt.ClientRegistration) (mgmt.ClientStatus, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	st, undo, err := s.putClient(id, reg)
	if err != nil {
		return mgmt.ClientStatus{}, err
	}
	if err := s.persist(); err != nil {
		undo()
		return mgmt.ClientStatus{}, fmt.Errorf("%w; the change was undone", err)
	}
	return st, nil
}

// putClient makes the change and returns how to take it back.
func (s *server) putClient(id string, reg mgmt.ClientRegistration) (mgmt.ClientStatus, func(), error) {
	var p []string
	if err := checkClientID(id); err != nil {
		p = append(p, "ClientId: "+err.Error())
	}
	pub, err := wg.ParseKey(reg.PublicKey)
	if err != nil {
		p = append(p, "PublicKey: "+err.Error())
	}
	if len(p) > 0 {
		return mgmt.ClientStatus{}, nil, &forward.ProblemsError{Kind: mgmt.ErrInvalid, Problems: p}
	}
	if pub == s.key.PublicKey() {
		return mgmt.ClientStatus{}, nil, fmt.Errorf("%w: PublicKey is the server's own key", mgmt.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for otherID, other := range s.clients {
		if otherID != id && other.pub == pub {
			return mgmt.ClientStatus{}, nil, fmt.Errorf("%w: PublicKey already belongs to client %q", mgmt.ErrConflict, otherID)
		}
	}
	socks := reg.Socks5Enabled == nil || *reg.Socks5Enabled
	addr := wg.ClientAddr(pub)
	old := s.clients[id]
	if old != nil && old.pub == pub {
		prevSocks := old.socks
		if old.socks != socks {
			old.socks = socks
			if !socks && s.egress != nil {
				s.egress.CloseClient(id)
			}
			s.log.Info("client SOCKS5 setting changed", "client", id, "socks5_enabled", socks)
		}
		undo := func() {
			s.mu.Lock()
			old.socks = prevSocks
			s.mu.Unlock()
		}
		return s.statusLocked(old, wg.PeerStats{}), undo, nil
	}
	if err := s.dev.SetPeer(wg.Peer{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, 128)}}); err != nil {
		if errors.Is(err, wg.ErrAllowedIPTaken) {
			return mgmt.ClientStatus{}, nil, fmt.Errorf("%w: %w", mgmt.ErrConflict, err)
		}
		return mgmt.ClientStatus{}, nil, err
	}
	c := &registered{id: id, pub: pub, addr: addr, socks: socks, state: mgmt.ClientUnknown, lastState: mgmt.ClientUnknown,
		egressSent: new(atomic.Uint64), egressReceived: new(atomic.Uint64)}
	if old != nil {
		c.egressSent, c.egressReceived = old.egressSent, old.egressReceived
		if err := s.dev.RemovePeer(old.pub); err != nil {
			s.log.Warn("removing rotated peer", "client", id, "err", err)
		}
		delete(s.byAddr, old.addr)
		if s.gw != nil {
			s.gw.CloseClient(id)
			s.egress.CloseClient(id)
		}
		s.log.Info("client key rotated", "client", id, "tunnel_address", addr)
	} else {
		s.log.Info("client registered", "client", id, "tunnel_address", addr)
	}
	s.clients[id] = c
	s.byAddr[addr] = c
	undo := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.dev.RemovePeer(pub)
		delete(s.byAddr, addr)
		delete(s.clients, id)
		if old != nil {
			s.dev.SetPeer(wg.Peer{PublicKey: old.pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(old.addr, 128)}})
			s.clients[id] = old
			s.byAddr[old.addr] = old
		}
	}
	return s.statusLocked(c, wg.PeerStats{}), undo, nil
}

// DeleteClient removes a client that no tunnel uses.
func (s *server) DeleteClient(id string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	var users []string
	for i, t := range s.gw.Tunnels() {
		if slices.Contains(t.Clients(), id) {
			users = append(users, fmt.Sprintf("tunnels[%d] (%s)", i, t.RouteKey()))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[id]
	if c == nil {
		return fmt.Errorf("client %q: %w", id, mgmt.ErrNotFound)
	}
	if len(users) > 0 {
		return &forward.ProblemsError{Kind: mgmt.ErrConflict, Problems: []string{fmt.Sprintf("client %q is used by %v; change those tunnels first", id, users)}}
	}
	if err := s.dev.RemovePeer(c.pub); err != nil {
		return err
	}
	delete(s.clients, id)
	delete(s.byAddr, c.addr)
	s.mu.Unlock()
	err := s.persist()
	s.mu.Lock()
	if err != nil {
		s.dev.SetPeer(wg.Peer{PublicKey: c.pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(c.addr, 128)}})
		s.clients[id] = c
		s.byAddr[c.addr] = c
		return fmt.Errorf("%w; the client was kept", err)
	}
	s.gw.CloseClient(id)
	s.egress.CloseClient(id)
	s.log.Info("client removed", "client", id)
	return nil
}

// configClientsNotInState names the config entries the saved state does
// not hold as they are written.
func configClientsNotInState(config, saved []ClientRegistration) []string {
	var out []string
	for _, c := range config {
		same := false
		for _, st := range saved {
			if st.ClientId == c.ClientId {
				k1, err1 := wg.ParseKey(c.PublicKey)
				k2, err2 := wg.ParseKey(st.PublicKey)
				socks1 := c.Socks5Enabled == nil || *c.Socks5Enabled
				socks2 := st.Socks5Enabled == nil || *st.Socks5Enabled
				same = err1 == nil && err2 == nil && k1 == k2 && socks1 == socks2
			}
		}
		if !same {
			out = append(out, c.ClientId)
		}
	}
	return out
}
