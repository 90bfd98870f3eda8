package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"sort"
	"sync/atomic"
	"time"
)

// BackendDialFunc connects to a local service.
type BackendDialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ConnectorConfig configures a Connector.
type ConnectorConfig struct {
	// Services maps a service name to the local host:port it stands for.
	// The server can only ever reach these addresses.
	Services map[string]string
	// ServiceProxy is the client's own choice of PROXY header (0 none, 1
	// or 2) for the services it names; the others get what the server
	// asks for (see proxychoice.go).
	ServiceProxy map[string]int
	// Sources decides which source addresses the server may report when
	// a backend gets a PROXY header.
	Sources SourcePolicy
	Logger  *slog.Logger // required
	// Dial connects to services; a net.Dialer by default.
	Dial BackendDialFunc
	// HeaderTimeout bounds reading a request; DialTimeout bounds
	// connecting to a service.
	HeaderTimeout time.Duration
	DialTimeout   time.Duration
	Timeouts      Timeouts
}

const DefaultHeaderTimeout = 10 * time.Second

// Connector is the client's end: it accepts tunneled connections, reads
// which service each is for, and joins it to that service.
type Connector struct {
	cfg  ConnectorConfig
	log  *slog.Logger
	life lifecycle

	refused    atomic.Uint64 // requests refused by the PROXY policy
	logRefused *throttle
}

// NewConnector checks the service map and returns a Connector.
func NewConnector(cfg ConnectorConfig) (*Connector, error) {
	var errs []error
	if cfg.Logger == nil {
		errs = append(errs, errors.New("forward: ConnectorConfig.Logger is required"))
	}
	names := sortedKeys(cfg.Services)
	for _, name := range names {
		if err := CheckServiceName(name); err != nil {
			errs = append(errs, fmt.Errorf("service name %q: %w", name, err))
		}
		if err := CheckServiceAddr(cfg.Services[name]); err != nil {
			errs = append(errs, fmt.Errorf("service %q: %w", name, err))
		}
	}
	for name, v := range cfg.ServiceProxy {
		if _, ok := cfg.Services[name]; !ok {
			errs = append(errs, fmt.Errorf("ServiceProxy names %q, which is not a service", name))
		}
		if v < 0 || v > 2 {
			errs = append(errs, fmt.Errorf("service %q: PROXY version %d is not 0, 1 or 2", name, v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.Services = maps.Clone(cfg.Services)
	cfg.ServiceProxy = maps.Clone(cfg.ServiceProxy)
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = DefaultHeaderTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	c := &Connector{cfg: cfg, log: cfg.Logger, logRefused: newThrottle()}
	c.life.init(cfg.Logger)
	return c, nil
}

func sortedKeys(m map[string]string) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// Serve accepts tunneled connections on ln until ln or the Connector is
// closed. It takes ownership of ln.
func (c *Connector) Serve(ln net.Listener) error { return c.life.serve(ln, c.handle) }

func (c *Connector) handle(conn net.Conn) {
	s := &session{}
	if !c.life.live.start(s) {
		conn.Close()
		return
	}
	joined := false // then the join ends the session
	defer func() {
		if !joined {
			c.life.live.end(s)
		}
	}()
	if !s.add(conn) {
		return
	}
	refuse := func(err error, log *slog.Logger) {
		// Users on the internet cause these (an unknown service, a
		// backend down), one per connection: throttled.
		c.logRefused.log(log, slog.LevelInfo, "tunneled connection refused", "err", err)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write([]byte{byte(statusFor(err))})
		s.close()
	}
	pc, req, err := ReadRequest(conn, c.cfg.HeaderTimeout)
	if err != nil {
		refuse(err, c.log)
		return
	}
	log := c.log.With("service", req.Service, "from", req.Source.String())
	addr, ok := c.cfg.Services[req.Service]
	if !ok {
		refuse(fmt.Errorf("%w: %q", ErrUnknownService, req.Service), log)
		return
	}
	if req.Check != nil {
		c.answerCheck(conn, req, addr, log)
		s.close()
		return
	}
	chosen, own := c.cfg.ServiceProxy[req.Service]
	req.BackendProxyProtocol, err = backendProxy(chosen, own, req.BackendProxyProtocol, req.Source, c.cfg.Sources)
	if err != nil {
		n := c.refused.Add(1)
		c.logRefused.log(log, slog.LevelWarn, "tunneled connection refused", "err", err, "refused_total", n)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write([]byte{byte(StatusRefused)})
		s.close()
		return
	}
	ctx, cancel := context.WithTimeout(c.life.ctx, c.cfg.DialTimeout)
	backend, err := c.cfg.Dial(ctx, "tcp", addr)
	cancel()
	if err != nil {
		refuse(fmt.Errorf("%w: %w", ErrBackendUnreachable, err), log)
		return
	}
	if !s.add(backend) {
		return
	}
	_ = backend.SetWriteDeadline(time.Now().Add(c.cfg.DialTimeout))
	if err := writeBackendHeader(backend, req); err != nil {
		refuse(fmt.Errorf("%w: %w", ErrBackendUnreachable, err), log)
		return
	}
	_ = backend.SetWriteDeadline(time.Time{})
	_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.DialTimeout))
	if _, err := conn.Write([]byte{byte(StatusOK)}); err != nil {
		log.Info("tunneled connection lost before it started", "err", err)
		s.close()
		return
	}
	_ = conn.SetWriteDeadline(time.Time{})
	// The join ends the session; this goroutine ends now, with the stack it
	// grew while dialling.
	joined = true
	release := c.life.hold()
	j := joinThen(pc, backend, c.cfg.Timeouts, Meter{}, c.life.poll, func(res Joined) {
		defer release()
		defer c.life.live.end(s)
		log.Debug("connection done", "backend", addr, "bytes_in", res.AToB, "bytes_out", res.BToA, "err", res.Err)
	})
	// The session closes the connection through the join (joinThen).
	s.add(j)
}

// Live reports how many tunneled connections are open.
func (c *Connector) Live() int { return c.life.live.count() }

// CloseAll closes every tunneled connection, for when the server they
// came from is gone (it restarted), and returns how many there were.
func (c *Connector) CloseAll() int { return c.life.live.closeAll() }

// Refused reports how many requests the PROXY policy refused (a header
// the client turned off, a source it does not believe).
func (c *Connector) Refused() uint64 { return c.refused.Load() }

// Close stops every Serve, closes every connection and waits. Idempotent.
func (c *Connector) Close() error {
	c.life.close()
	return nil
}
