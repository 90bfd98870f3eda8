// Package client is threshold's home client assembled: for each server it
// attaches to, a gVisor stack and WireGuard device, the connector that
// serves tunneled connections from the client's own ServiceToLocalAddrMap,
// and the heartbeats (link.go); the local SOCKS5 port relayed to the first
// connected server; and the local status endpoint (status.go).
// cmd/threshold turns a config file into a Config and runs New, Run and
// Close.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/keyfile"
	"github.com/thresholdtunnel/threshold/netstack"
	"github.com/thresholdtunnel/threshold/wg"
)

// socksFailoverDialTimeout bounds a dial to one server's SOCKS5 service
// when another connected server could take the connection instead.
const socksFailoverDialTimeout = 2 * time.Second

// Client is a running threshold client.
type Client struct {
	log      *slog.Logger
	cfg      Config
	key      wg.Key
	links    []*link // in the order of Config.Servers
	relay    *forward.Relay
	socksLn  net.Listener
	statusLn net.Listener
	status   *http.Server
	started  time.Time

	changed chan struct{} // a link's state moved; capacity 1
	viaMu   sync.Mutex
	via     int // the link SOCKS5 egress uses now; -1 for none

	ctx       context.Context // ends with Close
	cancel    context.CancelFunc
	closers   []func() error // what Close undoes, in the order it was built
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New checks cfg (every problem at once, in a *control.Problems), then
// builds the client and binds its sockets. It needs no network: server
// names are looked up, with retries, once Run starts. It serves nothing
// until Run. On error nothing is left open.
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
	c := &Client{log: log, cfg: cfg, changed: make(chan struct{}, 1), via: -1, started: time.Now()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.key, err = keyfile.Load(cfg.PrivateKeyFile, log); err != nil {
		return nil, err
	}
	for i, srv := range cfg.servers() {
		l, err := newLink(c, i, srv, c.onClose)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", srv, err)
		}
		c.links = append(c.links, l)
	}
	if cfg.Socks5ListenAddress != "" {
		if err := c.startRelay(); err != nil {
			return nil, err
		}
	}
	if cfg.StatusListenAddress != "" {
		if err := c.startStatus(); err != nil {
			return nil, err
		}
	}
	log.Info("threshold client started", "client", cfg.ClientId, "public_key", c.key.PublicKey().String(),
		"tunnel_address", wg.ClientAddr(c.key.PublicKey()), "servers", len(c.links))
	for _, l := range c.links {
		l.announce()
	}
	return c, nil
}

// startRelay opens the local SOCKS5 port, relayed to the first connected
// server.
func (c *Client) startRelay() (err error) {
	if c.socksLn, err = net.Listen("tcp", c.cfg.Socks5ListenAddress); err != nil {
		return fmt.Errorf("Socks5ListenAddress: %w", err)
	}
	c.onClose(c.socksLn.Close)
	if c.relay, err = forward.NewRelay(forward.RelayConfig{
		Dial:   c.dialSocks,
		Logger: c.log.With("component", "socks5"),
	}); err != nil {
		return err
	}
	c.onClose(c.relay.Close)
	c.log.Info("SOCKS5 proxy listening; connections leave from the first connected server", "address", c.socksLn.Addr().String(), "order", c.serverNames())
	return nil
}

// serverNames lists the servers in order, for logs.
func (c *Client) serverNames() string {
	names := make([]string, len(c.links))
	for i, l := range c.links {
		names[i] = l.srv.String()
	}
	return strings.Join(names, ", ")
}

// dialSocks reaches the SOCKS5 service of the first connected server that
// answers, in the order of the config.
func (c *Client) dialSocks(ctx context.Context) (net.Conn, error) {
	var candidates []*link
	for _, l := range c.links {
		if l.connected() {
			candidates = append(candidates, l)
		}
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("no server is connected (servers: %s)", c.serverNames())
	}
	var errs []error
	for i, l := range candidates {
		dctx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(candidates)-1 {
			dctx, cancel = context.WithTimeout(ctx, socksFailoverDialTimeout)
		}
		conn, err := l.dialSocks(dctx)
		cancel()
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("server %s: %w", l.srv, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// notify tells the client that a link's state moved.
func (c *Client) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// watchSocks follows which server SOCKS5 egress leaves from, and logs
// each change with the order.
func (c *Client) watchSocks(ctx context.Context) {
	for {
		via := -1
		for i, l := range c.links {
			if l.connected() {
				via = i
				break
			}
		}
		c.viaMu.Lock()
		old := c.via
		c.via = via
		c.viaMu.Unlock()
		if via != old && c.relay != nil {
			if via >= 0 {
				c.log.Info("SOCKS5 egress now leaves from server", "server", c.links[via].srv.String(), "order", c.serverNames())
			} else {
				c.log.Warn("SOCKS5 egress has no connected server; its connections are refused until one answers", "order", c.serverNames())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
		}
	}
}

// socksVia is the server SOCKS5 egress leaves from now; nil for none.
func (c *Client) socksVia() *link {
	c.viaMu.Lock()
	defer c.viaMu.Unlock()
	if c.via < 0 {
		return nil
	}
	return c.links[c.via]
}

// onClose adds a step to Close; steps run in reverse order.
func (c *Client) onClose(f func() error) { c.closers = append(c.closers, f) }

// PublicKey is the client's WireGuard public key.
func (c *Client) PublicKey() wg.Key { return c.key.PublicKey() }

// Stack is the netstack of the client's first server, for in-process
// measurements.
func (c *Client) Stack() *netstack.Stack { return c.links[0].stack }

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
	if c.status != nil {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.serveStatus() }()
	}
	for _, l := range c.links {
		l.serve(ctx, &c.wg)
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.watchSocks(ctx) }()
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
