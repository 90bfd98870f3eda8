// Package server is threshold's public server assembled: the gVisor stack
// and WireGuard device, the public gateway, SOCKS5 egress, the control
// plane and the management API. cmd/threshold turns a config file into a
// Config and runs New, Run and Close; tests and benchmarks do the same in
// process.
package server

import (
	"context"
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
	probs := control.NewProblems(control.ErrInvalid, "server config")
	cfg.check(probs)
	policy := cfg.egressPolicy(probs)
	var auth *mgmt.Auth
	if probs.Len() == 0 { // the auth files are read once, and only for a sound config
		ac := cfg.authConfig()
		ac.Logger = log.With("component", "mgmt")
		if auth, err = mgmt.NewAuth(ac); err != nil {
			var ap *control.Problems
			if !errors.As(err, &ap) {
				return nil, err
			}
			for _, line := range ap.Lines() {
				// mgmt calls the address ListenAddress; this config, ManagementAddress.
				if rest, ok := strings.CutPrefix(line, "ListenAddress:"); ok {
					line = "ManagementAddress:" + rest
				}
				probs.Add(line)
			}
		}
	}
	if err := probs.Err(); err != nil {
		return nil, err
	}

	s := &Server{cfg: cfg, log: log, tls: auth.TLSConfig() != nil}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	var store control.Store
	if cfg.StateDir != "" {
		fs := control.FileStore{Dir: cfg.StateDir}
		removed, err := fs.RemoveStale()
		if err != nil {
			return nil, fmt.Errorf("StateDir %s: %w", cfg.StateDir, err)
		}
		if len(removed) > 0 {
			log.Info("removed temporary state files left by a crash", "dir", cfg.StateDir, "files", removed)
		}
		store = fs
	}
	if s.key, err = keyfile.Load(cfg.PrivateKeyFile, log); err != nil {
		return nil, err
	}
	if s.stack, err = netstack.New(netstack.Options{Addresses: []netip.Addr{wg.ServerAddr}}); err != nil {
		return nil, err
	}
	if s.dev, err = wg.New(wg.Config{PrivateKey: s.key, ListenPort: cfg.TunnelControlPort, TUN: s.stack, Logger: log.With("component", "wireguard")}); err != nil {
		return nil, err
	}
	s.metrics = newMetrics(func() map[string]control.ClientStatus { return s.plane.Clients() })
	s.dir.Store(forward.NewDirectory())
	if s.gw, err = forward.NewGateway(forward.GatewayConfig{
		Directory: s.dir.Load,
		Dial: func(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
			return s.stack.DialTCP(ctx, to)
		},
		PeekTimeout: time.Duration(cfg.HostnamePeekTimeoutSeconds * float64(time.Second)),
		Observe:     s.metrics.observe,
		Rejected:    func(reason string) { s.metrics.rejected.WithLabelValues(reason).Inc() },
		Logger:      log.With("component", "gateway"),
	}); err != nil {
		return nil, err
	}
	var egressAddr netip.Addr
	if cfg.Socks5EgressAddress != "" {
		egressAddr = netip.MustParseAddr(cfg.Socks5EgressAddress) // checked
	}
	if s.egress, err = forward.NewEgress(forward.EgressConfig{
		Logger:    log.With("component", "socks5"),
		Policy:    policy,
		LocalAddr: egressAddr,
		Directory: s.dir.Load,
		Meter:     s.egressMeter,
	}); err != nil {
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
	if s.hb, err = s.stack.ListenUDP(netip.AddrPortFrom(wg.ServerAddr, forward.HeartbeatPort)); err != nil {
		return nil, fmt.Errorf("heartbeat socket: %w", err)
	}
	if s.socksLn, err = s.stack.ListenTCP(netip.AddrPortFrom(wg.ServerAddr, forward.SocksPort)); err != nil {
		return nil, fmt.Errorf("SOCKS5 listener in the tunnel: %w", err)
	}
	handler, err := mgmt.NewHandler(s.plane, log.With("component", "mgmt"), mgmt.Options{Auth: auth, Metrics: s.metrics.reg})
	if err != nil {
		return nil, err
	}
	mgmtAddr := net.JoinHostPort(cfg.ManagementAddress, strconv.Itoa(cfg.ManagementPort))
	if s.apiLn, err = net.Listen("tcp", mgmtAddr); err != nil {
		return nil, fmt.Errorf("management API: %w", err)
	}
	s.api = mgmt.NewHTTPServer(handler, auth.TLSConfig(), slog.NewLogLogger(log.Handler(), slog.LevelDebug))
	port, _ := s.dev.ListenPort()
	log.Info("threshold server started", "public_key", s.key.PublicKey().String(), "tunnel_port", port,
		"management", s.apiLn.Addr().String(), "auth", auth.Mode())
	return s, nil
}

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
		if s.api != nil {
			s.api.Close()
		}
		if s.apiLn != nil {
			s.apiLn.Close()
		}
		if s.plane != nil {
			s.plane.Close()
		}
		if s.gw != nil {
			s.gw.Close()
		}
		if s.egress != nil {
			s.egress.Close()
		}
		if s.socksLn != nil {
			s.socksLn.Close()
		}
		if s.hb != nil {
			s.hb.Close()
		}
		if s.dev != nil {
			s.dev.Close() // closes the stack too
		} else if s.stack != nil {
			s.stack.Close()
		}
	})
	s.wg.Wait()
	return nil
}

// echoHeartbeats answers each client's ping and tells the control plane
// who it came from. The source address is authenticated: WireGuard only
// accepts it from the peer it belongs to.
func (s *Server) echoHeartbeats() {
	buf := make([]byte, 64)
	for {
		n, from, err := s.hb.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok || !forward.IsPing(buf[:n]) {
			continue
		}
		s.plane.Heard(ua.AddrPort().Addr())
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
