package forward

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// UpstreamDialFunc opens the far end of a relayed connection.
type UpstreamDialFunc func(ctx context.Context) (net.Conn, error)

// RelayConfig configures a Relay.
type RelayConfig struct {
	Dial        UpstreamDialFunc // required
	Logger      *slog.Logger     // required
	DialTimeout time.Duration    // DefaultDialTimeout when zero
	Timeouts    Timeouts
}

// Relay joins each connection accepted on a local listener to a new
// connection from Dial: the client's SOCKS5 port, relayed through the
// tunnel to the server's SOCKS5 service.
type Relay struct {
	cfg    RelayConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	live      sessions
}

// NewRelay checks cfg and returns a Relay.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	var errs []error
	if cfg.Dial == nil {
		errs = append(errs, errors.New("forward: RelayConfig.Dial is required"))
	}
	if cfg.Logger == nil {
		errs = append(errs, errors.New("forward: RelayConfig.Logger is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	r := &Relay{cfg: cfg, listeners: make(map[net.Listener]struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// Serve relays connections accepted on ln until ln or the Relay is closed.
// It takes ownership of ln.
func (r *Relay) Serve(ln net.Listener) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	r.listeners[ln] = struct{}{}
	r.wg.Add(1)
	r.mu.Unlock()
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.listeners, ln)
		r.mu.Unlock()
		ln.Close()
	}()
	return acceptLoop(r.ctx, ln, r.cfg.Logger, &r.wg, r.handle)
}

func (r *Relay) handle(c net.Conn) {
	s := &session{}
	if !r.live.start(s) {
		c.Close()
		return
	}
	defer r.live.end(s)
	if !s.add(c) {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.DialTimeout)
	up, err := r.cfg.Dial(ctx)
	cancel()
	if err != nil {
		r.cfg.Logger.Info("relay: upstream unreachable", "from", addrString(c.RemoteAddr()), "err", err)
		s.close()
		return
	}
	if !s.add(up) {
		return
	}
	res := Join(c, up, r.cfg.Timeouts)
	r.cfg.Logger.Debug("relay: connection done", "from", addrString(c.RemoteAddr()), "bytes_sent", res.AToB, "bytes_received", res.BToA, "err", res.Err)
}

// Live reports how many relayed connections are open.
func (r *Relay) Live() int { return r.live.count() }

// Close stops every Serve, closes every connection and waits. Idempotent.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	lns := make([]net.Listener, 0, len(r.listeners))
	for ln := range r.listeners {
		lns = append(lns, ln)
	}
	r.mu.Unlock()
	r.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	r.live.shutdown()
	r.wg.Wait()
	return nil
}

// acceptLoop accepts on ln until it is closed or ctx ends, running handle
// for each connection in a goroutine counted by wg. Transient accept errors
// (out of file descriptors) back off instead of spinning.
func acceptLoop(ctx context.Context, ln net.Listener, log *slog.Logger, wg *sync.WaitGroup, handle func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("accept failed", "address", ln.Addr().String(), "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return ErrClosed
			}
			continue
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(c)
		}()
	}
}
