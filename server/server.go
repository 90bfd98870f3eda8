// Package server is threshold's public server assembled: the gVisor stack
// and WireGuard device, the public gateway, SOCKS5 egress, the control
// plane and the management API. cmd/threshold turns a config file into a
// Config and runs New, Run and Close; tests and benchmarks do the same in
// process.
package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/keyfile"
	"github.com/thresholdtunnel/threshold/mgmt"
	"github.com/thresholdtunnel/threshold/netstack"
	"github.com/thresholdtunnel/threshold/wg"
)

// Server is a running threshold server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	key     wg.Key
	stack   *netstack.Stack
	dev     *wg.Device
	dir     atomic.Pointer[forward.Directory]
	gw      *forward.Gateway
	egress  *forward.Egress
	plane   *control.Plane
	metrics *metrics
	hb      net.PacketConn
	socksLn net.Listener
	apiLn   net.Listener
	api     *http.Server
	tls     bool

	ctx       context.Context // ends with Close
	cancel    context.CancelFunc
	closers   []func() error // what Close undoes, in the order it was built
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New checks cfg (every problem at once, in a *control.Problems), then
// builds the server and binds every socket it needs: the WireGuard port,
// the saved tunnels' public ports and the management port. It serves
// nothing until Run. On error nothing is left open.
func New(cfg Config, log *slog.Logger) (_ *Server, err error) {
	if log == nil {
		return nil, errors.New("server: a logger is required")
	}
	cfg.FillDefaults()
	policy, auth, err := cfg.validate(log.With("component", "mgmt"))
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, tls: auth.TLSConfig() != nil}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	store, err := openStore(cfg.StateDir, log)
	if err != nil {
		return nil, err
	}
	if store == nil {
		log.Warn("no StateDir: tunnels, and clients registered through the API, live in memory only and are lost when the server restarts; set StateDir to keep them")
	}
	if s.key, err = keyfile.Load(cfg.PrivateKeyFile, log); err != nil {
		return nil, err
	}
	if err := s.startTunnel(); err != nil {
		return nil, err
	}
	if err := s.startForwarders(policy); err != nil {
		return nil, err
	}
	if s.plane, err = control.New(control.Options{
		Device:    device{s.dev, log},
		Gateway:   s.gw,
		Egress:    s.egress,
		Store:     store,
		Publish:   s.dir.Store,
		ServerKey: control.Key(s.key.PublicKey()),
		Bootstrap: cfg.Clients,
		Logger:    log.With("component", "control"),
	}); err != nil {
		return nil, err
	}
	s.onClose(s.plane.Close)
	if err := s.startAPI(auth); err != nil {
		return nil, err
	}
	port, _ := s.dev.ListenPort()
	log.Info("threshold server started", "public_key", s.key.PublicKey().String(), "tunnel_port", port,
		"management", s.apiLn.Addr().String(), "auth", auth.Mode())
	return s, nil
}

// Check reports every problem of cfg that New would refuse before it
// binds anything (the authentication files are read), in a
// *control.Problems; nil if there is none. cmd/threshold uses it to list
// them together with a config file's JSON problems.
func Check(cfg Config) error {
	cfg.FillDefaults()
	_, _, err := cfg.validate(slog.New(slog.DiscardHandler))
	return err
}

// validate finds every problem of a config with defaults filled in; the
// authentication files are read once, and only for an otherwise sound
// config.
func (c *Config) validate(mgmtLog *slog.Logger) (forward.EgressPolicy, *mgmt.Auth, error) {
	probs := control.NewProblems(control.ErrInvalid, "server config")
	c.check(probs)
	policy := c.egressPolicy(probs)
	if probs.Len() > 0 {
		return policy, nil, probs
	}
	ac := c.authConfig()
	ac.Logger = mgmtLog
	auth, err := mgmt.NewAuth(ac)
	var ap *control.Problems
	switch {
	case err == nil:
		return policy, auth, nil
	case !errors.As(err, &ap):
		return policy, nil, err
	}
	for _, line := range ap.Lines() {
		// mgmt calls the address ListenAddress; this config, ManagementAddress.
		if rest, ok := strings.CutPrefix(line, "ListenAddress:"); ok {
			line = "ManagementAddress:" + rest
		}
		probs.Add(line)
	}
	return policy, nil, probs
}

// openStore is the state store of a StateDir; nil without one.
func openStore(dir string, log *slog.Logger) (control.Store, error) {
	if dir == "" {
		return nil, nil
	}
	fs := control.FileStore{Dir: dir}
	removed, err := fs.RemoveStale()
	if err != nil {
		return nil, fmt.Errorf("StateDir %s: %w", dir, err)
	}
	if len(removed) > 0 {
		log.Info("removed temporary state files left by a crash", "dir", dir, "files", removed)
	}
	return fs, nil
}

// startTunnel brings up the stack, the WireGuard device and the sockets
// the server serves inside the tunnel.
func (s *Server) startTunnel() (err error) {
	if s.stack, err = netstack.New(netstack.Options{Addresses: []netip.Addr{wg.ServerAddr}}); err != nil {
		return err
	}
	s.onClose(s.stack.Close)
	if s.dev, err = wg.New(wg.Config{PrivateKey: s.key, ListenPort: s.cfg.TunnelControlPort, TUN: s.stack, Logger: s.log.With("component", "wireguard"),
		RefusedHandshake: s.refusedHandshake}); err != nil {
		return err
	}
	s.onClose(s.dev.Close) // before the stack's: the device closes its TUN itself
	if s.hb, err = s.stack.ListenUDP(netip.AddrPortFrom(wg.ServerAddr, forward.HeartbeatPort)); err != nil {
		return fmt.Errorf("heartbeat socket: %w", err)
	}
	s.onClose(s.hb.Close)
	if s.socksLn, err = s.stack.ListenTCP(netip.AddrPortFrom(wg.ServerAddr, forward.SocksPort)); err != nil {
		return fmt.Errorf("SOCKS5 listener in the tunnel: %w", err)
	}
	s.onClose(s.socksLn.Close)
	return nil
}

// startForwarders builds the public gateway and SOCKS5 egress; both read
// the clients from the Directory the control plane publishes.
func (s *Server) startForwarders(policy forward.EgressPolicy) (err error) {
	s.metrics = newMetrics(func() map[string]control.ClientStatus { return s.plane.Clients() })
	gwLimits, egressLimits := s.cfg.limits()
	s.dir.Store(forward.NewDirectory())
	if s.gw, err = forward.NewGateway(forward.GatewayConfig{
		Directory: s.dir.Load,
		Dial: func(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
			return s.stack.DialTCP(ctx, to)
		},
		PeekTimeout: time.Duration(s.cfg.HostnamePeekTimeoutSeconds * float64(time.Second)),
		Observe:     s.metrics.observe,
		Rejected:    func(reason string) { s.metrics.rejected.WithLabelValues(reason).Inc() },
		Limits:      gwLimits,
		Logger:      s.log.With("component", "gateway"),
		// Each UDP tunnel's frames leave from a port of their own.
		TunnelPacket: func() (net.PacketConn, error) {
			return s.stack.ListenUDPBuffered(netip.AddrPortFrom(wg.ServerAddr, 0), forward.UDPTunnelSocketBuffer)
		},
		TunnelMTU:  mtuOf(s.stack),
		ObserveUDP: s.metrics.observeUDP,
	}); err != nil {
		return err
	}
	s.onClose(s.gw.Close)
	var egressAddr netip.Addr
	if s.cfg.Socks5EgressAddress != "" {
		egressAddr = netip.MustParseAddr(s.cfg.Socks5EgressAddress) // checked
	}
	if s.egress, err = forward.NewEgress(forward.EgressConfig{
		Logger:    s.log.With("component", "socks5"),
		Policy:    policy,
		LocalAddr: egressAddr,
		Directory: s.dir.Load,
		Meter:     s.egressMeter,
		Limits:    egressLimits,
		Rejected:  func(reason string) { s.metrics.rejected.WithLabelValues(reason).Inc() },
	}); err != nil {
		return err
	}
	s.onClose(s.egress.Close)
	return nil
}

func mtuOf(st *netstack.Stack) int {
	mtu, _ := st.MTU()
	return mtu
}

// startAPI binds the management port.
func (s *Server) startAPI(auth *mgmt.Auth) error {
	handler, err := mgmt.NewHandler(s.plane, s.log.With("component", "mgmt"), mgmt.Options{Auth: auth, Metrics: s.metrics.reg})
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(s.cfg.ManagementAddress, strconv.Itoa(s.cfg.ManagementPort))
	if s.apiLn, err = net.Listen("tcp", addr); err != nil {
		return fmt.Errorf("management API: %w", err)
	}
	s.api = mgmt.NewHTTPServer(handler, auth.TLSConfig(), slog.NewLogLogger(s.log.Handler(), slog.LevelDebug))
	s.onClose(s.apiLn.Close)
	s.onClose(s.api.Close)
	return nil
}

// onClose adds a step to Close; steps run in reverse order.
func (s *Server) onClose(f func() error) { s.closers = append(s.closers, f) }

// PublicKey is the server's WireGuard public key.
func (s *Server) PublicKey() wg.Key { return s.key.PublicKey() }

// ManagementAddr is where the management API listens.
func (s *Server) ManagementAddr() net.Addr { return s.apiLn.Addr() }

// Control is the control plane, for driving the server in process (tests,
// benchmarks) as the management API does.
func (s *Server) Control() *control.Plane { return s.plane }

// Stack is the server's netstack, for in-process measurements.
func (s *Server) Stack() *netstack.Stack { return s.stack }

// TunnelPort is the WireGuard UDP port.
func (s *Server) TunnelPort() (int, error) { return s.dev.ListenPort() }

// Run serves until ctx ends, then shuts down gracefully: the management
// API and the public listeners close at once, live connections get the
// grace period to finish, then everything is closed. It returns the
// management API's error if that failed instead. Close ends it at once.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.egress.Serve(s.socksLn) }()
	go func() { defer s.wg.Done(); s.echoHeartbeats() }()
	apiErr := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		var err error
		if s.tls {
			err = s.api.ServeTLS(s.apiLn, "", "")
		} else {
			err = s.api.Serve(s.apiLn)
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
	s.api.Shutdown(apiCtx)
	stopAPI()
	graceCtx, stopGrace := context.WithTimeout(context.Background(), grace)
	if cut := s.gw.Shutdown(graceCtx); cut > 0 {
		s.log.Warn("grace period over: closed live connections", "connections", cut)
	}
	stopGrace()
	s.Close()
	s.log.Info("stopped")
	select {
	case err := <-apiErr:
		return fmt.Errorf("management API: %w", err)
	default:
		return nil
	}
}

// Close stops everything at once and waits for it; safe on a server New
// only partly built, and idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		for i := len(s.closers) - 1; i >= 0; i-- {
			s.closers[i]()
		}
	})
	s.wg.Wait()
	return nil
}

// echoHeartbeats answers each client's ping and tells the control plane
// who it came from. The source address is authenticated: WireGuard only
// accepts it from the peer it belongs to.
func (s *Server) echoHeartbeats() {
	buf := make([]byte, 256) // a Ping or a Hello
	var instance uint32
	for instance == 0 {
		var b [4]byte
		rand.Read(b[:])
		instance = binary.BigEndian.Uint32(b[:])
	}
	for {
		n, from, err := s.hb.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		if name, ok := forward.ParseHello(buf[:n]); ok {
			s.plane.HeardName(ua.AddrPort().Addr(), name)
			continue
		}
		if !forward.IsPing(buf[:n]) {
			continue
		}
		s.plane.Heard(ua.AddrPort().Addr())
		forward.SetPingInstance(buf[:n], instance)
		s.hb.WriteTo(buf[:n], from)
	}
}

// egressMeter counts a SOCKS5 session's bytes for GET /clients and /metrics.
func (s *Server) egressMeter(clientID string) forward.Meter {
	sent, received := s.plane.EgressCounters(clientID)
	if sent == nil {
		return forward.Meter{}
	}
	promSent, promReceived := s.metrics.egressMeter(clientID)
	return forward.Meter{
		AToB: func(n int64) { sent.Add(uint64(n)); promSent.Add(float64(n)) },
		BToA: func(n int64) { received.Add(uint64(n)); promReceived.Add(float64(n)) },
	}
}

// device is the wg.Device as the control plane drives it.
type device struct {
	dev *wg.Device
	log *slog.Logger
}

func (d device) ParseKey(s string) (control.Key, error) {
	k, err := wg.ParseKey(s)
	return control.Key(k), err
}

func (d device) Addr(k control.Key) netip.Addr { return wg.ClientAddr(wg.Key(k)) }

func (d device) AddPeer(k control.Key) error {
	addr := wg.ClientAddr(wg.Key(k))
	err := d.dev.SetPeer(wg.Peer{PublicKey: wg.Key(k), AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, 128)}})
	if errors.Is(err, wg.ErrAllowedIPTaken) {
		return fmt.Errorf("%w: %w", control.ErrConflict, err)
	}
	return err
}

func (d device) RemovePeer(k control.Key) error { return d.dev.RemovePeer(wg.Key(k)) }

func (d device) Stats() map[control.Key]control.PeerStats {
	stats, err := d.dev.Peers()
	if err != nil {
		d.log.Warn("reading WireGuard peers", "err", err)
		return nil
	}
	out := make(map[control.Key]control.PeerStats, len(stats))
	for _, st := range stats {
		out[control.Key(st.PublicKey)] = control.PeerStats{LastHandshake: st.LastHandshake, RxBytes: st.RxBytes, TxBytes: st.TxBytes}
	}
	return out
}
