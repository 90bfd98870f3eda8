package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// UDPConnectorConfig configures a UDPConnector.
type UDPConnectorConfig struct {
	// Services maps a service name to the local host:port it stands for,
	// the same map the Connector uses. The server can only ever reach
	// these addresses.
	Services map[string]string
	// ServiceProxy and Sources are the Connector's (see proxychoice.go):
	// the client's own PROXY choice per service, and which sources a
	// backend getting a header may be told of. A service choosing 2 gets
	// PROXY v2 on the datagrams ServiceUDPProxyMode says ("every" if it
	// names none); one choosing 1 is refused, v1 having no datagram form.
	ServiceProxy        map[string]int
	ServiceUDPProxyMode map[string]string
	Sources             SourcePolicy
	Logger              *slog.Logger // required
	// Dial connects a session's socket to a service (network "udp"); a
	// net.Dialer by default.
	Dial BackendDialFunc
	// DialTimeout bounds resolving and connecting a service's address.
	DialTimeout time.Duration
	// MaxSessions bounds the sessions the client keeps, whatever the server
	// asks; DefaultClientUDPSessions if zero.
	MaxSessions int
}

// DefaultClientUDPSessions bounds a client's UDP sessions, over all
// tunnels: each holds a socket.
const DefaultClientUDPSessions = 65536

// clientIdleMargin: a client keeps a session this much longer than its
// idle time, so that the server, which tells it when a session ends, ends
// it first.
const clientIdleMargin = 2 * time.Second

// UDPConnector is the client's end of UDP tunnels: it reads the frames the
// server sends to its UDPConnectorPort and keeps, for each session, one
// local UDP socket connected to the service its own map names, so the
// service sees one peer per public user. Replies go back as frames.
type UDPConnector struct {
	cfg  UDPConnectorConfig
	log  *slog.Logger
	life lifecycle

	refusedLog quietLog // refusals come per datagram
	refused    atomic.Uint64

	mu       sync.Mutex
	sessions map[clientKey]*clientSession
	closed   bool
	served   bool
}

// NewUDPConnector checks the service map and returns a UDPConnector.
func NewUDPConnector(cfg UDPConnectorConfig) (*UDPConnector, error) {
	var errs []error
	if cfg.Logger == nil {
		errs = append(errs, errors.New("forward: UDPConnectorConfig.Logger is required"))
	}
	for _, name := range sortedKeys(cfg.Services) {
		if err := CheckServiceName(name); err != nil {
			errs = append(errs, fmt.Errorf("service name %q: %w", name, err))
		}
		if err := CheckServiceAddr(cfg.Services[name]); err != nil {
			errs = append(errs, fmt.Errorf("service %q: %w", name, err))
		}
	}
	for name, mode := range cfg.ServiceUDPProxyMode {
		if mode != UDPProxyEvery && mode != UDPProxyFirst {
			errs = append(errs, fmt.Errorf("service %q: UDP PROXY mode %q is not %q or %q", name, mode, UDPProxyEvery, UDPProxyFirst))
		}
	}
	if cfg.MaxSessions < 0 {
		errs = append(errs, errors.New("forward: UDPConnectorConfig.MaxSessions must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.Services = maps.Clone(cfg.Services)
	cfg.ServiceProxy = maps.Clone(cfg.ServiceProxy)
	cfg.ServiceUDPProxyMode = maps.Clone(cfg.ServiceUDPProxyMode)
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = DefaultClientUDPSessions
	}
	c := &UDPConnector{cfg: cfg, log: cfg.Logger, sessions: make(map[clientKey]*clientSession)}
	c.life.init(cfg.Logger)
	return c, nil
}

// clientKey names a session: the server's socket for its tunnel, and the
// ID the server gave it.
type clientKey struct {
	from netip.AddrPort
	id   uint32
}

// clientSession is one public user's session on the client: a local UDP
// socket connected to the service, and a goroutine reading its replies.
type clientSession struct {
	c       *UDPConnector
	key     clientKey
	pc      net.PacketConn // the tunnel socket it answers through
	to      net.Addr       // the server's socket for the tunnel
	service string
	addr    string // the service's local address
	src     netip.AddrPort
	dst     netip.AddrPort
	asked   udpProxyMode // what the server asked for
	proxy   udpProxyMode // what the backend gets
	header  []byte       // the PROXY v2 header, if any
	idle    time.Duration
	last    atomic.Int64

	mu        sync.Mutex
	backend   net.Conn // nil until dialled
	pending   [][]byte // datagrams that came while dialling
	sentFirst bool
	closed    bool
}

// maxPending bounds the datagrams held while a session's service is being
// dialled.
const maxPending = 16

// udpHeadroom is the room kept in front of each payload read, so a PROXY
// header (at most 52 bytes without TLVs) is written there without a copy.
const udpHeadroom = 64

// Serve reads frames from pc until pc or the UDPConnector is closed. It
// takes ownership of pc.
func (c *UDPConnector) Serve(pc net.PacketConn) error {
	c.mu.Lock()
	if c.closed || c.served || !c.life.enter() {
		c.mu.Unlock()
		pc.Close()
		return ErrClosed
	}
	c.served = true
	c.mu.Unlock()
	defer c.life.leave()
	stop := context.AfterFunc(c.life.ctx, func() { pc.Close() })
	defer stop()
	defer pc.Close()
	buf := make([]byte, udpHeadroom+1<<16)
	var backoff time.Duration
	for {
		n, from, err := pc.ReadFrom(buf[udpHeadroom:])
		if err != nil {
			if c.life.ctx.Err() != nil {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			c.log.Debug("reading UDP frames", "err", err)
			select {
			case <-time.After(backoff):
			case <-c.life.ctx.Done():
				return ErrClosed
			}
			continue
		}
		backoff = 0
		frame := buf[udpHeadroom : udpHeadroom+n]
		switch frameType(frame) {
		case frameData:
			c.data(pc, from, buf, n)
		case frameClose:
			if _, id, _, err := parseShort(frame); err == nil {
				c.end(clientKey{udpAddrPort(from), id})
			}
		}
	}
}

// data relays one data frame, buf[udpHeadroom:][:n], to its session.
func (c *UDPConnector) data(pc net.PacketConn, from net.Addr, buf []byte, n int) {
	frame := buf[udpHeadroom : udpHeadroom+n]
	h, payload, err := parseData(frame)
	if err != nil {
		c.log.Debug("malformed UDP frame dropped", "from", from, "err", err)
		return
	}
	start := udpHeadroom + n - len(payload)
	key := clientKey{udpAddrPort(from), h.id}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	s := c.sessions[key]
	var stale *clientSession
	if s != nil && !s.matches(h) {
		// The server's session of this ID is another one now (a server
		// restart): the old one is over.
		delete(c.sessions, key)
		stale, s = s, nil
	}
	var reason byte
	if s == nil {
		s, reason = c.begin(pc, from, key, h)
	}
	c.mu.Unlock()
	if stale != nil {
		stale.close()
	}
	if s == nil {
		_, _ = pc.WriteTo(refusedFrame(h.id, reason), from)
		return
	}
	s.send(buf, start, udpHeadroom+n)
}

// begin makes a session for a frame of a new session; c.mu is held. It
// returns the refusal reason when it cannot.
func (c *UDPConnector) begin(pc net.PacketConn, from net.Addr, key clientKey, h udpSession) (*clientSession, byte) {
	addr, ok := c.cfg.Services[string(h.service)]
	if !ok {
		c.refusedLog.do(func(more int) {
			c.log.Warn("UDP session refused: no such service", "service", string(h.service), "from", h.src, "refused_since_last_line", more)
		})
		return nil, udpRefuseUnknownService
	}
	if len(c.sessions) >= c.cfg.MaxSessions {
		c.refusedLog.do(func(more int) {
			c.log.Warn("UDP session refused: too many sessions", "max", c.cfg.MaxSessions, "from", h.src, "refused_since_last_line", more)
		})
		return nil, udpRefuseSessionCap
	}
	s := &clientSession{
		c:       c,
		key:     key,
		pc:      pc,
		to:      from,
		service: string(h.service),
		addr:    addr,
		src:     h.src,
		dst:     h.dst,
		asked:   h.proxy,
		idle:    h.idle + clientIdleMargin,
	}
	var err error
	if s.proxy, err = c.udpBackendProxy(string(h.service), h.proxy, h.src); err != nil {
		n := c.refused.Add(1)
		c.refusedLog.do(func(more int) {
			c.log.Warn("UDP session refused", "service", string(h.service), "from", h.src, "err", err, "refused_total", n, "refused_since_last_line", more)
		})
		return nil, udpRefuseRefused
	}
	if s.proxy != udpProxyNone {
		hdr, err := udpProxyHeader(h.src, h.dst)
		if err != nil {
			c.log.Info("UDP session refused: no PROXY header for its addresses", "from", h.src, "err", err)
			return nil, udpRefuseBackendUnreachable
		}
		s.header = hdr
	}
	s.touch()
	if !c.life.enter() {
		return nil, udpRefuseBackendUnreachable
	}
	c.sessions[key] = s
	go func() {
		defer c.life.leave()
		s.run()
	}()
	return s, 0
}

// udpBackendProxy decides which PROXY header a UDP session's backend gets,
// as backendProxy does for TCP: the client's own choice for the service if
// it made one, else what the server asked; and whenever a header is sent,
// only for a source the client believes. The error wraps ErrRefused.
func (c *UDPConnector) udpBackendProxy(service string, asked udpProxyMode, src netip.AddrPort) (udpProxyMode, error) {
	chosen, own := c.cfg.ServiceProxy[service]
	askedVersion := 0
	if asked != udpProxyNone {
		askedVersion = 2
	}
	if own && chosen == 1 {
		return udpProxyNone, fmt.Errorf("%w: this service's backend gets PROXY v1 (ProxyProtocol 1), which has no datagram form; use 2", ErrRefused)
	}
	v, err := backendProxy(chosen, own, askedVersion, src, c.cfg.Sources)
	switch {
	case err != nil:
		return udpProxyNone, err
	case v == 0:
		return udpProxyNone, nil
	case !own:
		return asked, nil
	case c.cfg.ServiceUDPProxyMode[service] == UDPProxyFirst:
		return udpProxyFirst, nil
	}
	return udpProxyEvery, nil
}

// Refused reports how many sessions the PROXY policy refused.
func (c *UDPConnector) Refused() uint64 { return c.refused.Load() }

// udpProxyHeader is the PROXY v2 header, with the DGRAM transport, of a
// session from src to dst.
func udpProxyHeader(src, dst netip.AddrPort) ([]byte, error) {
	s := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	d := netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if s.Addr().Is4() != d.Addr().Is4() {
		s = netip.AddrPortFrom(netip.AddrFrom16(s.Addr().As16()), s.Port())
		d = netip.AddrPortFrom(netip.AddrFrom16(d.Addr().As16()), d.Port())
	}
	h := proxyproto.HeaderProxyFromAddrs(2, net.UDPAddrFromAddrPort(s), net.UDPAddrFromAddrPort(d))
	if !h.TransportProtocol.IsDatagram() {
		return nil, fmt.Errorf("no datagram PROXY header for %s -> %s", s, d)
	}
	return h.Format()
}

func (s *clientSession) matches(h udpSession) bool {
	return s.service == string(h.service) && s.src == h.src && s.dst == h.dst && s.asked == h.proxy
}

func (s *clientSession) touch() {
	now := time.Now().UnixNano()
	if s.last.Load() != now {
		s.last.Store(now)
	}
}

// send writes one user datagram, buf[start:end], to the service, with the
// PROXY header in front if the session's mode says so (there is room for
// it before start).
func (s *clientSession) send(buf []byte, start, end int) {
	s.touch()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if s.backend == nil {
		if len(s.pending) < maxPending {
			s.pending = append(s.pending, bytes.Clone(buf[start:end]))
		}
		s.mu.Unlock()
		return
	}
	first := !s.sentFirst
	s.sentFirst = true
	conn := s.backend
	s.mu.Unlock()
	if s.proxy == udpProxyEvery || (s.proxy == udpProxyFirst && first) {
		start -= copy(buf[start-len(s.header):start], s.header)
	}
	if _, err := conn.Write(buf[start:end]); err != nil {
		s.failed(err)
	}
}

// failed handles an error from the service's socket: a service that is not
// there (ICMP port unreachable) refuses the session, which the server then
// counts; the user's next datagram starts a new one.
func (s *clientSession) failed(err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		s.c.refusedLog.do(func(more int) {
			s.c.log.Warn("UDP session ended: the service refused it", "service", s.service, "backend", s.addr, "from", s.src, "refused_since_last_line", more)
		})
		s.refuse(udpRefuseBackendUnreachable)
		return
	}
	s.c.log.Debug("UDP datagram to the service failed", "service", s.service, "from", s.src, "err", err)
}

func (s *clientSession) refuse(reason byte) {
	if s.c.remove(s) {
		_, _ = s.pcWrite(refusedFrame(s.key.id, reason))
	}
	s.close()
}

// pcWrite sends a frame to the server's socket of the session's tunnel.
func (s *clientSession) pcWrite(b []byte) (int, error) { return s.pc.WriteTo(b, s.to) }

// run dials the service, then relays its replies until the session ends.
// The replies are relayed by a goroutine of their own, started once the
// dial is done: the dial's deep call stack would otherwise stay with the
// goroutine that waits, idle, for the rest of the session.
func (s *clientSession) run() {
	c := s.c
	relaying := false
	defer func() {
		if !relaying {
			c.remove(s)
			s.close()
		}
	}()
	ctx, cancel := context.WithTimeout(c.life.ctx, c.cfg.DialTimeout)
	conn, err := c.cfg.Dial(ctx, "udp", s.addr)
	cancel()
	if err != nil {
		c.refusedLog.do(func(more int) {
			c.log.Warn("UDP session refused: the service cannot be reached", "service", s.service, "backend", s.addr, "err", err, "refused_since_last_line", more)
		})
		s.refuse(udpRefuseBackendUnreachable)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.backend = conn
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	c.log.Debug("UDP session started", "service", s.service, "backend", s.addr, "from", s.src, "local", conn.LocalAddr())
	for _, p := range pending {
		b := make([]byte, len(s.header)+len(p))
		copy(b[len(s.header):], p)
		s.send(b, len(s.header), len(b))
	}
	if !c.life.enter() {
		return
	}
	relaying = true
	go func() {
		defer c.life.leave()
		defer s.close()
		defer c.remove(s)
		s.relayReplies(conn)
	}()
}

// relayReplies reads the service's datagrams and sends each to the server
// as a reply frame, until the session is idle for its idle time or closed.
// The read buffer is taken from a pool only once a datagram is ready, so
// an idle session holds none (readReady).
func (s *clientSession) relayReplies(conn net.Conn) {
	c := s.c
	read := readerOf(conn)
	var deadline time.Time
	for {
		// The deadline moves only when it is reached, not with every
		// datagram: at most one timer change per idle period.
		until := time.Unix(0, s.last.Load()).Add(s.idle)
		if !until.After(time.Now()) {
			c.log.Debug("UDP session idle: ended", "service", s.service, "from", s.src)
			return
		}
		if !until.Equal(deadline) {
			deadline = until
			_ = conn.SetReadDeadline(deadline)
		}
		err := read(udpShortLen, func(buf []byte, n int) {
			s.touch()
			frame := buf[:udpShortLen+n]
			if len(frame) > udpMaxFrame {
				_, _ = s.pcWrite(shortFrame(frameTooBig, s.key.id))
				return
			}
			putShort(frame, frameReply, s.key.id)
			if _, err := s.pcWrite(frame); err != nil {
				c.log.Debug("UDP reply not sent into the tunnel", "service", s.service, "err", err)
			}
		})
		switch {
		case err == nil:
		case errors.Is(err, syscall.ECONNREFUSED):
			s.failed(err)
			return
		case isTimeout(err):
			// Idle, or activity since the deadline was set: checked above.
		default:
			return
		}
	}
}

// remove takes s out of the session map; it reports whether it was there.
func (c *UDPConnector) remove(s *clientSession) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sessions[s.key] == s {
		delete(c.sessions, s.key)
		return true
	}
	return false
}

// end closes the session the server says has ended.
func (c *UDPConnector) end(key clientKey) {
	c.mu.Lock()
	s := c.sessions[key]
	delete(c.sessions, key)
	c.mu.Unlock()
	if s != nil {
		s.close()
	}
}

func (s *clientSession) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	conn := s.backend
	s.pending = nil
	s.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// Sessions reports how many UDP sessions are open.
func (c *UDPConnector) Sessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions)
}

// Close stops Serve, closes every session's socket and waits. Idempotent.
func (c *UDPConnector) Close() error {
	c.closeSessions(true)
	c.life.close()
	return nil
}

// CloseAll closes every session and keeps serving: for a server that
// restarted, whose sessions (and their IDs) died with it. It sends the
// server nothing and reports how many it closed.
func (c *UDPConnector) CloseAll() int { return c.closeSessions(false) }

// closeSessions closes every session; with final, no new one begins.
func (c *UDPConnector) closeSessions(final bool) int {
	c.mu.Lock()
	if final {
		c.closed = true
	}
	all := make([]*clientSession, 0, len(c.sessions))
	for _, s := range c.sessions {
		all = append(all, s)
	}
	clear(c.sessions)
	c.mu.Unlock()
	for _, s := range all {
		s.close()
	}
	return len(all)
}
