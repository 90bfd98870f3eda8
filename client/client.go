// Package client is threshold's home client assembled: the gVisor stack and
// WireGuard device, the connector that serves tunneled connections from the
// client's own ServiceToLocalAddrMap, the heartbeats, and the local SOCKS5
// port relayed to the server. cmd/threshold turns a config file into a
// Config and runs New, Run and Close.
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
	"github.com/thresholdtunnel/threshold/keyfile"
	"github.com/thresholdtunnel/threshold/netstack"
	"github.com/thresholdtunnel/threshold/wg"
)

const (
	// heartbeatInterval is how often the client pings the server; the
	// server calls it connected while the last ping is younger than
	// control.DefaultHeartbeatTimeout.
	heartbeatInterval = time.Second
	// persistentKeepalive keeps the NAT mapping towards the server open.
	persistentKeepalive = 25 * time.Second
	// reresolveAfter: when the server has not answered for this long, look
	// its host name up again in case its address changed.
	reresolveAfter = 30 * time.Second
)

// Client is a running threshold client.
type Client struct {
	log       *slog.Logger
	cfg       Config
	key       wg.Key
	serverKey wg.Key
	endpoint  netip.AddrPort // owned by the ping loop once Run starts
	stack     *netstack.Stack
	dev       *wg.Device
	conn      *forward.Connector
	connLn    net.Listener
	udp       *forward.UDPConnector
	udpPC     net.PacketConn
	relay     *forward.Relay
	socksLn   net.Listener
	hb        net.Conn

	lastPong  atomic.Int64    // unix nanos of the last heartbeat answer
	instance  uint32          // the server's, from its heartbeat answers; owned by readPongs
	ctx       context.Context // ends with Close
	cancel    context.CancelFunc
	closers   []func() error // what Close undoes, in the order it was built
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New checks cfg (every problem at once, in a *control.Problems), then
// builds the client and binds its sockets. It serves nothing until Run.
// On error nothing is left open.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Client, err error) {
	if log == nil {
		return nil, errors.New("client: a logger is required")
	}
	cfg.FillDefaults()
	probs := control.NewProblems(control.ErrInvalid, "client config")
	cfg.check(probs)
	if err := probs.Err(); err != nil {
		return nil, err
	}
	c := &Client{log: log, cfg: cfg}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.serverKey, _ = wg.ParseKey(cfg.ServerPublicKey) // checked
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.key, err = keyfile.Load(cfg.PrivateKeyFile, log); err != nil {
		return nil, err
	}
	if c.endpoint, err = resolveServer(ctx, cfg.ServerHost, cfg.ServerTunnelControlPort); err != nil {
		return nil, err
	}
	if err := c.startTunnel(); err != nil {
		return nil, err
	}
	cc := cfg.connectorConfig()
	cc.Logger = log.With("component", "connector")
	if c.conn, err = forward.NewConnector(cc); err != nil {
		return nil, err
	}
	c.onClose(c.conn.Close)
	uc := cfg.udpConnectorConfig()
	uc.Logger = log.With("component", "udp")
	if c.udp, err = forward.NewUDPConnector(uc); err != nil {
		return nil, err
	}
	c.onClose(c.udp.Close)
	if cfg.Socks5ListenAddress != "" {
		if err := c.startRelay(); err != nil {
			return nil, err
		}
	}
	log.Info("threshold client started", "client", cfg.ClientId, "public_key", c.key.PublicKey().String(),
		"tunnel_address", wg.ClientAddr(c.key.PublicKey()), "server", c.endpoint)
	return c, nil
}

// Check reports every problem of cfg that New would refuse before it
// does anything, in a *control.Problems; nil if there is none.
func Check(cfg Config) error {
	cfg.FillDefaults()
	probs := control.NewProblems(control.ErrInvalid, "client config")
	cfg.check(probs)
	return probs.Err()
}

// startTunnel brings up the stack, the WireGuard device with the server as
// its peer, and the client's sockets inside the tunnel.
func (c *Client) startTunnel() (err error) {
	addr := wg.ClientAddr(c.key.PublicKey())
	if c.stack, err = netstack.New(netstack.Options{Addresses: []netip.Addr{addr}}); err != nil {
		return err
	}
	c.onClose(c.stack.Close)
	if c.dev, err = wg.New(wg.Config{PrivateKey: c.key, TUN: c.stack, Logger: c.log.With("component", "wireguard")}); err != nil {
		return err
	}
	c.onClose(c.dev.Close) // before the stack's: the device closes its TUN itself
	if err = c.dev.SetPeer(c.serverPeer()); err != nil {
		return err
	}
	if c.connLn, err = c.stack.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), forward.ConnectorPort)); err != nil {
		return fmt.Errorf("listening in the tunnel: %w", err)
	}
	c.onClose(c.connLn.Close)
	if c.udpPC, err = c.stack.ListenUDPBuffered(netip.AddrPortFrom(netip.IPv6Unspecified(), forward.UDPConnectorPort), forward.UDPTunnelSocketBuffer); err != nil {
		return fmt.Errorf("listening for UDP in the tunnel: %w", err)
	}
	c.onClose(c.udpPC.Close)
	if c.hb, err = c.stack.DialUDP(netip.AddrPortFrom(wg.ServerAddr, forward.HeartbeatPort)); err != nil {
		return fmt.Errorf("heartbeat socket: %w", err)
	}
	c.onClose(c.hb.Close)
	return nil
}

// startRelay opens the local SOCKS5 port, relayed to the server.
func (c *Client) startRelay() (err error) {
	if c.socksLn, err = net.Listen("tcp", c.cfg.Socks5ListenAddress); err != nil {
		return fmt.Errorf("Socks5ListenAddress: %w", err)
	}
	c.onClose(c.socksLn.Close)
	socksServer := netip.AddrPortFrom(wg.ServerAddr, forward.SocksPort)
	if c.relay, err = forward.NewRelay(forward.RelayConfig{
		Dial:   func(ctx context.Context) (net.Conn, error) { return c.stack.DialTCP(ctx, socksServer) },
		Logger: c.log.With("component", "socks5"),
	}); err != nil {
		return err
	}
	c.onClose(c.relay.Close)
	c.log.Info("SOCKS5 proxy listening; connections leave from the server", "address", c.socksLn.Addr().String())
	return nil
}

// onClose adds a step to Close; steps run in reverse order.
func (c *Client) onClose(f func() error) { c.closers = append(c.closers, f) }

// PublicKey is the client's WireGuard public key.
func (c *Client) PublicKey() wg.Key { return c.key.PublicKey() }

// Stack is the client's netstack, for in-process measurements.
func (c *Client) Stack() *netstack.Stack { return c.stack }

func (c *Client) serverPeer() wg.Peer {
	return wg.Peer{
		PublicKey:           c.serverKey,
		AllowedIPs:          []netip.Prefix{netip.PrefixFrom(wg.ServerAddr, 128)},
		Endpoint:            c.endpoint,
		PersistentKeepalive: persistentKeepalive,
	}
}

func resolveServer(ctx context.Context, host string, port int) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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

// Run serves until ctx ends or Close is called, then closes everything.
func (c *Client) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-c.ctx.Done():
			stop()
		case <-ctx.Done():
		}
	}()
	if c.relay != nil {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.relay.Serve(c.socksLn) }()
	}
	c.wg.Add(4)
	go func() { defer c.wg.Done(); c.conn.Serve(c.connLn) }()
	go func() { defer c.wg.Done(); c.udp.Serve(c.udpPC) }()
	go func() { defer c.wg.Done(); c.readPongs(ctx) }()
	go func() { defer c.wg.Done(); c.ping(ctx) }()
	<-ctx.Done()
	c.log.Info("shutting down")
	c.Close()
	return nil
}

// Close stops everything and waits for it; safe on a client New only
// partly built, and idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		for i := len(c.closers) - 1; i >= 0; i-- {
			c.closers[i]()
		}
	})
	c.wg.Wait()
	return nil
}

// ping sends heartbeats. Besides telling the server we are here, they are
// data packets: wireguard-go starts a new handshake when data it sends gets
// no answer, so a restarted server is found again within seconds.
func (c *Client) ping(ctx context.Context) {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	connected := false
	lastResolve := time.Now()
	for seq := uint64(1); ; seq++ {
		if _, err := c.hb.Write(forward.Ping(seq)); err != nil {
			c.log.Debug("heartbeat send failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		last := time.Unix(0, c.lastPong.Load())
		now := time.Now()
		up := now.Sub(last) < control.DefaultHeartbeatTimeout
		if up != connected {
			connected = up
			if up {
				c.log.Info("connected to server", "server", c.endpoint)
			} else {
				c.log.Warn("server not answering; retrying", "server", c.endpoint)
			}
		}
		if !up {
			// The server may have restarted and lost our session: it drops
			// what we send under the old keys until we handshake again.
			if err := c.dev.Rehandshake(c.serverKey); err != nil {
				c.log.Debug("forcing a handshake", "err", err)
			}
		}
		if !up && now.Sub(last) > reresolveAfter && now.Sub(lastResolve) > reresolveAfter {
			lastResolve = now
			c.reresolve(ctx)
		}
	}
}

func (c *Client) reresolve(ctx context.Context) {
	ep, err := resolveServer(ctx, c.cfg.ServerHost, c.cfg.ServerTunnelControlPort)
	if err != nil {
		c.log.Warn("re-resolving server", "err", err)
		return
	}
	if ep == c.endpoint {
		return
	}
	c.log.Info("server address changed", "old", c.endpoint, "new", ep)
	c.endpoint = ep
	if err := c.dev.SetPeer(c.serverPeer()); err != nil {
		c.log.Warn("updating server endpoint", "err", err)
	}
}

// serverInstance notes the server instance a heartbeat answer carries. A
// new one means the server restarted: the connections it had through the
// tunnel died with it, so the client's ends (and the backend connections
// behind them) are closed now rather than when they go idle.
func (c *Client) serverInstance(id uint32) {
	if id == 0 || id == c.instance {
		return
	}
	old := c.instance
	c.instance = id
	if old == 0 {
		return
	}
	n := c.conn.CloseAll()
	if c.relay != nil {
		n += c.relay.CloseAll()
	}
	c.log.Info("the server restarted: closed the connections it had", "connections", n)
}

func (c *Client) readPongs(ctx context.Context) {
	buf := make([]byte, 64)
	for {
		n, err := c.hb.Read(buf)
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
			c.lastPong.Store(time.Now().UnixNano())
			c.serverInstance(forward.PingInstance(buf[:n]))
		}
	}
}
