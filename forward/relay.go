package forward

import (
	"context"
	"errors"
	"log/slog"
	"net"
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
	cfg        RelayConfig
	life       lifecycle
	logRefused *throttle // failed requests: relaywatch.go
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
	r := &Relay{cfg: cfg, logRefused: newThrottle()}
	r.life.init(cfg.Logger)
	return r, nil
}

// Serve relays connections accepted on ln until ln or the Relay is closed.
// It takes ownership of ln.
func (r *Relay) Serve(ln net.Listener) error { return r.life.serve(ln, r.handle) }

func (r *Relay) handle(c net.Conn) {
	s := &session{}
	if !r.life.live.start(s) {
		c.Close()
		return
	}
	defer r.life.live.end(s)
	if !s.add(c) {
		return
	}
	ctx, cancel := context.WithTimeout(r.life.ctx, r.cfg.DialTimeout)
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
	local, upstream := r.watchSocks(c, up)
	res := Join(local, upstream, r.cfg.Timeouts)
	r.cfg.Logger.Debug("relay: connection done", "from", addrString(c.RemoteAddr()), "bytes_sent", res.AToB, "bytes_received", res.BToA, "err", res.Err)
}

// CloseAll closes every relayed connection (their far ends went with a
// restarted server) and returns how many there were.
func (r *Relay) CloseAll() int { return r.life.live.closeAll() }

// Live reports how many relayed connections are open.
func (r *Relay) Live() int { return r.life.live.count() }

// Close stops every Serve, closes every connection and waits. Idempotent.
func (r *Relay) Close() error {
	r.life.close()
	return nil
}
