package forward

// SOCKS5 egress, server side.
//
// A threshold client exposes a local SOCKS5 port; each connection made to it
// is carried through the tunnel to the server, which hands it to
// Egress.ServeConn. The server parses the SOCKS5 request, resolves and
// checks the destination, dials it from its own network and joins the two
// connections, so the destination sees the server's public address.
//
// Why not socks5.Server from github.com/armon/go-socks5: its ServeConn
// cannot be used safely here, for reasons that cannot be fixed from outside:
//
//   - It reads the client through a bufio.Reader, so bytes a client sends
//     right behind its request (optimistic data) end up in that private
//     buffer; the data phase can then only be its own copy loop.
//   - That copy loop (io.Copy both ways) has no deadlines, no idle or
//     half-close limit and no cancellation: a stalled client or destination
//     pins two goroutines forever and byte counts are not reported.
//   - Its context is context.Background(), so resolution and dialling cannot
//     be cancelled by Close; a resolver error is always reported as "host
//     unreachable", never as "not allowed by ruleset".
//   - It asserts target.LocalAddr().(*net.TCPAddr), which panics on the
//     wrapped connections of a custom Dial.
//   - It logs to stdout unless given a *log.Logger.
//
// So the library is used for what it does well, the wire format: the
// method reply (socks5.NoAuthAuthenticator), request parsing
// (socks5.NewRequest, reading through an unbuffered reader so that nothing
// past the request is consumed) and the command constants. The rest is
// here: a handshake deadline, server-side resolution with the policy
// checked on the exact address dialled, replies (including 0x02 for a
// denial), a bounded dial, and the data phase through Join, which gives
// idle and half-close limits, exact byte counts and prompt ends when a
// session is closed.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	socks5 "github.com/armon/go-socks5"
)

// Defaults for EgressConfig.
const (
	DefaultEgressHandshakeTimeout = 10 * time.Second
	DefaultEgressDialTimeout      = 10 * time.Second
)

// SOCKS5 reply codes (RFC 1928, section 6).
const (
	socksSucceeded           byte = 0x00
	socksGeneralFailure      byte = 0x01
	socksNotAllowed          byte = 0x02
	socksNetworkUnreachable  byte = 0x03
	socksHostUnreachable     byte = 0x04
	socksConnectionRefused   byte = 0x05
	socksCommandNotSupported byte = 0x07
	socksAddrTypeUnsupported byte = 0x08

	socksVersion      byte = 0x05
	socksNoAuth       byte = 0x00
	socksNoAcceptable byte = 0xff
)

// EgressConfig configures an Egress.
type EgressConfig struct {
	// Logger receives debug records for refused and finished sessions.
	// Nil discards them.
	Logger *slog.Logger
	// Policy decides which destinations may be dialled. It is checked on
	// every address actually dialled, after resolution.
	Policy EgressPolicy
	// LocalAddr, if valid, is the source address of outgoing connections
	// made by the default Dial; destinations of the other address family
	// are then skipped (with "network unreachable" if none is left).
	LocalAddr netip.Addr
	// Resolve looks up a host name on the server. Default:
	// net.DefaultResolver.LookupNetIP(ctx, "ip", host). It must return
	// when ctx is done.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Dial connects to a destination; address is always a literal IP and
	// port. Default: a net.Dialer bound to LocalAddr. It must return when
	// ctx is done. The connection it returns may be of any type.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// HandshakeTimeout bounds the arrival of the whole greeting and
	// request. Zero means DefaultEgressHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout bounds resolution and dialling together. Zero means
	// DefaultEgressDialTimeout.
	DialTimeout time.Duration
	// Timeouts bound the data phase (see Join).
	Timeouts Timeouts
	// Directory, if set, returns the newest snapshot of the registered
	// clients: Serve identifies each connection's client by its tunnel
	// address, and a client whose Peer.Socks5 is off (or that is not
	// registered) is refused with "connection not allowed by ruleset".
	// Without it ServeConn serves any client ID it is given, and Serve
	// cannot be used.
	Directory func() *Directory
	// Meter, if set, gives each session that reaches the data phase a
	// Meter told about bytes as they flow (AToB: sent by the client).
	Meter func(clientID string) Meter
	// OnBytes, if set, is called once at the end of every session that
	// reached the data phase, with the payload bytes the client sent to the
	// destination and received from it. It must not block for long.
	OnBytes func(clientID string, sent, received int64)
	// Limits bound each client's sessions.
	Limits EgressLimits
	// Rejected, if set, is told each time a session is refused by Limits,
	// with RejectSocksHandshakes or RejectSocksSessions.
	Rejected func(reason string)
}

// EgressLimits bound the SOCKS5 sessions each client holds at once: a
// client (or whatever runs on its host and reaches its SOCKS5 port) must
// not take the server's goroutines and memory from the others. A session
// over a limit is closed at once. Zero fields take their defaults.
type EgressLimits struct {
	// HandshakesPerClient bounds sessions not yet in the data phase: the
	// greeting, request, resolution and dial (up to HandshakeTimeout plus
	// DialTimeout each).
	HandshakesPerClient int
	// SessionsPerClient bounds all of a client's sessions, handshakes
	// included.
	SessionsPerClient int
}

// Default EgressLimits: a browser behind the proxy opens a few dozen
// connections at once, a mail server fewer; a session costs the server two
// goroutines and about 27 KB while it shakes hands (issue 15: 2,000 took
// 54 MB).
const (
	DefaultSocksHandshakesPerClient = 64
	DefaultSocksSessionsPerClient   = 1024
)

// Egress is the server side of SOCKS5 egress: it serves SOCKS5 sessions
// arriving from clients and dials their destinations from the server.
// Only CONNECT without authentication is supported; the tunnel already
// identifies the client.
type Egress struct {
	cfg     EgressConfig
	log     *slog.Logger
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	dial    func(ctx context.Context, network, address string) (net.Conn, error)

	handshakes, sessions admission[string] // by client ID
	logUnknown, logLimit *throttle

	life lifecycle
}

// NewEgress checks cfg and returns an Egress.
func NewEgress(cfg EgressConfig) (*Egress, error) {
	var errs []error
	if cfg.HandshakeTimeout < 0 {
		errs = append(errs, errors.New("forward: EgressConfig.HandshakeTimeout is negative"))
	}
	if cfg.DialTimeout < 0 {
		errs = append(errs, errors.New("forward: EgressConfig.DialTimeout is negative"))
	}
	if cfg.Timeouts.Idle < 0 || cfg.Timeouts.HalfClosed < 0 {
		errs = append(errs, errors.New("forward: EgressConfig.Timeouts has a negative duration"))
	}
	if err := cfg.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultEgressHandshakeTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultEgressDialTimeout
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	if cfg.Limits.HandshakesPerClient <= 0 {
		cfg.Limits.HandshakesPerClient = DefaultSocksHandshakesPerClient
	}
	if cfg.Limits.SessionsPerClient <= 0 {
		cfg.Limits.SessionsPerClient = DefaultSocksSessionsPerClient
	}
	if cfg.Rejected == nil {
		cfg.Rejected = func(string) {}
	}
	e := &Egress{cfg: cfg, log: cfg.Logger, resolve: cfg.Resolve, dial: cfg.Dial,
		handshakes: admission[string]{perKey: cfg.Limits.HandshakesPerClient},
		sessions:   admission[string]{perKey: cfg.Limits.SessionsPerClient},
		logUnknown: newThrottle(), logLimit: newThrottle()}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.resolve == nil {
		e.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	if e.dial == nil {
		d := &net.Dialer{}
		if cfg.LocalAddr.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: cfg.LocalAddr.AsSlice(), Zone: cfg.LocalAddr.Zone()}
		}
		e.dial = d.DialContext
	}
	e.life.init(e.log)
	return e, nil
}

// socksError is a failure that is answered with a SOCKS5 reply code.
type socksError struct {
	code byte
	err  error
	why  DenyReason // for socksNotAllowed: sent in BND.PORT (denyreason.go)
}

func (e *socksError) Error() string { return e.err.Error() }
func (e *socksError) Unwrap() error { return e.err }

// ServeConn serves one SOCKS5 session from client clientID on c, blocking
// until it ends, and closes c. It returns nil when a proxied connection
// ended cleanly, an error wrapping ErrEgressDenied when the policy refused
// the destination, ErrClosed once the Egress is closed, and otherwise what
// went wrong.
func (e *Egress) ServeConn(clientID string, c net.Conn) error {
	if !e.life.enter() {
		c.Close()
		return ErrClosed
	}
	defer e.life.leave()

	// The handshake slot first: a flood of handshakes is then refused
	// without touching the session count, which it would otherwise fill
	// for a moment with sessions being refused.
	if why := e.handshakes.acquire(clientID); why != admitted {
		return e.refuseLimit(clientID, c, RejectSocksHandshakes, e.cfg.Limits.HandshakesPerClient)
	}
	if why := e.sessions.acquire(clientID); why != admitted {
		e.handshakes.release(clientID)
		return e.refuseLimit(clientID, c, RejectSocksSessions, e.cfg.Limits.SessionsPerClient)
	}
	defer e.sessions.release(clientID)
	handshaking := true
	endHandshake := func() {
		if handshaking {
			handshaking = false
			e.handshakes.release(clientID)
		}
	}
	defer endHandshake()

	s := &session{client: clientID}
	if !e.life.live.start(s) {
		c.Close()
		return ErrClosed
	}
	defer e.life.live.end(s)
	defer c.Close()
	// Closing the session (Close, CloseClient) cancels ctx, which stops a
	// resolution or dial in progress, and closes c and the destination.
	ctx, cancel := context.WithCancel(e.life.ctx)
	defer cancel()
	if !s.add(c) || !s.add(cancelOnClose(cancel)) {
		return ErrClosed
	}
	log := e.log.With("client", clientID)

	if err := c.SetDeadline(time.Now().Add(e.cfg.HandshakeTimeout)); err != nil {
		return fmt.Errorf("egress: setting handshake deadline: %w", err)
	}
	target, dst, err := e.handshake(ctx, clientID, c, log)
	if err != nil {
		var se *socksError
		if !errors.As(err, &se) {
			log.Debug("egress: handshake failed", "err", err)
		} else {
			_ = c.SetWriteDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
			if writeReply(c, se.code, netip.AddrPortFrom(netip.IPv4Unspecified(), socksReasonPort(se.why))) == nil {
				e.drain(c)
			}
		}
		if ctx.Err() != nil {
			return ErrClosed
		}
		return err
	}
	if !s.add(target) {
		return ErrClosed
	}
	_ = c.SetWriteDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
	if err := writeReply(c, socksSucceeded, addrPortOf(target.LocalAddr())); err != nil {
		target.Close()
		log.Debug("egress: sending reply failed", "destination", dst, "err", err)
		return fmt.Errorf("egress: sending reply: %w", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		target.Close()
		return fmt.Errorf("egress: clearing handshake deadline: %w", err)
	}
	endHandshake()

	var m Meter
	if e.cfg.Meter != nil {
		m = e.cfg.Meter(clientID)
	}
	res := JoinMetered(c, target, e.cfg.Timeouts, m)
	if e.cfg.OnBytes != nil {
		e.cfg.OnBytes(clientID, res.AToB, res.BToA)
	}
	log.Debug("egress: connection done", "destination", dst,
		"bytes_sent", res.AToB, "bytes_received", res.BToA, "err", res.Err)
	if res.Err != nil && ctx.Err() != nil {
		return ErrClosed
	}
	return res.Err
}

// ErrEgressLimit: a session was refused because its client holds as many
// as EgressLimits allow.
var ErrEgressLimit = errors.New("egress: session limit reached")

// refuseLimit closes a session over a limit at once and says so.
func (e *Egress) refuseLimit(clientID string, c net.Conn, reason string, limit int) error {
	e.cfg.Rejected(reason)
	e.logLimit.log(e.log, slog.LevelWarn, "egress: session refused: admission limit reached", "client", clientID, "limit", reason, "max", limit)
	refuse(c)
	return fmt.Errorf("%w: %s (%d)", ErrEgressLimit, reason, limit)
}

// handshake reads the greeting and request, resolves and checks the
// destination and dials it. It returns the destination connection and a
// printable destination. A *socksError asks for a reply to be sent.
func (e *Egress) handshake(ctx context.Context, clientID string, c net.Conn, log *slog.Logger) (net.Conn, string, error) {
	r := &exactReader{r: c}

	// Greeting: VER NMETHODS METHODS...
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, "", fmt.Errorf("egress: reading greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return nil, "", fmt.Errorf("egress: unsupported SOCKS version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, "", fmt.Errorf("egress: reading greeting: %w", err)
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == socksNoAuth
	}
	if !noAuth {
		if _, err := c.Write([]byte{socksVersion, socksNoAcceptable}); err == nil {
			e.drain(c)
		}
		return nil, "", errors.New("egress: client offers no acceptable authentication method")
	}
	if _, err := (socks5.NoAuthAuthenticator{}).Authenticate(r, c); err != nil {
		return nil, "", fmt.Errorf("egress: sending method reply: %w", err)
	}

	// Request: VER CMD RSV ATYP DST.ADDR DST.PORT
	r.n = 0
	req, err := socks5.NewRequest(r)
	if err != nil {
		if r.n >= 4 && r.atyp != 1 && r.atyp != 3 && r.atyp != 4 {
			return nil, "", &socksError{code: socksAddrTypeUnsupported, err: fmt.Errorf("egress: address type %d not supported", r.atyp)}
		}
		if r.err != nil {
			// go-socks5 flattens read errors into text; keep the real one,
			// so a timeout is still a timeout.
			err = r.err
		}
		return nil, "", fmt.Errorf("egress: reading request: %w", err)
	}
	d := req.DestAddr
	port := uint16(d.Port)
	host := d.FQDN
	if host == "" && len(d.IP) > 0 {
		host = d.IP.String()
	}
	dst := net.JoinHostPort(host, strconv.Itoa(d.Port))
	if req.Command != socks5.ConnectCommand {
		log.Debug("egress: command not supported", "destination", dst, "command", req.Command)
		return nil, dst, &socksError{code: socksCommandNotSupported, err: fmt.Errorf("egress: SOCKS command %d not supported", req.Command)}
	}
	if e.cfg.Directory != nil {
		if err := socksAllowed(e.cfg.Directory(), clientID); err != nil {
			log.Debug("egress: refused", "destination", dst, "reason", err)
			return nil, dst, &socksError{code: socksNotAllowed, err: fmt.Errorf("%w: %w", ErrEgressDenied, err), why: DenySocksDisabled}
		}
	}

	// Resolution and dialling share one deadline.
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
	defer cancel()

	var addrs []netip.Addr
	if a, ok := netip.AddrFromSlice(d.IP); ok {
		addrs = []netip.Addr{a}
	} else if a, err := netip.ParseAddr(d.FQDN); err == nil {
		addrs = []netip.Addr{a}
	} else if d.FQDN == "" {
		return nil, dst, &socksError{code: socksGeneralFailure, err: errors.New("egress: empty destination")}
	} else {
		addrs, err = e.resolve(ctx, d.FQDN)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no addresses")
		}
		if err != nil {
			log.Debug("egress: resolution failed", "destination", dst, "err", err)
			return nil, dst, &socksError{code: socksHostUnreachable, err: fmt.Errorf("egress: resolving %q: %w", d.FQDN, err)}
		}
	}

	// Resolve once, check, dial exactly the addresses checked: nothing is
	// looked up again between the check and the dial.
	var allowed []netip.Addr
	var denied error
	for _, a := range addrs {
		a = a.Unmap()
		if lf := e.cfg.LocalAddr; lf.IsValid() && lf.Unmap().Is4() != a.Is4() {
			continue
		}
		if err := e.cfg.Policy.Check(netip.AddrPortFrom(a, port)); err != nil {
			if denied == nil {
				denied = err
			}
			continue
		}
		allowed = append(allowed, a)
	}
	if len(allowed) == 0 {
		if denied != nil {
			log.Debug("egress: destination denied", "destination", dst, "reason", denied)
			why := DenyUnknown
			if d := (*EgressDenial)(nil); errors.As(denied, &d) {
				why = d.Reason
			}
			return nil, dst, &socksError{code: socksNotAllowed, err: denied, why: why}
		}
		log.Debug("egress: no address of the source address family", "destination", dst, "local_addr", e.cfg.LocalAddr)
		return nil, dst, &socksError{code: socksNetworkUnreachable, err: fmt.Errorf("egress: %s has no address reachable from %s", dst, e.cfg.LocalAddr)}
	}

	target, err := e.dialAny(ctx, allowed, port)
	if err != nil {
		log.Debug("egress: dial failed", "destination", dst, "err", err)
		return nil, dst, &socksError{code: dialErrorCode(err), err: fmt.Errorf("egress: dialling %s: %w", dst, err)}
	}
	return target, dst, nil
}

// drain is called after an error reply, before c is closed: it shuts the
// write side and briefly discards what the client has already sent (say,
// data pipelined behind its request). Closing a socket with unread data
// resets the connection, which can destroy the reply before the client has
// read it.
func (e *Egress) drain(c net.Conn) {
	if closeWrite(c) != nil {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(min(e.cfg.HandshakeTimeout, time.Second)))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// dialAny tries the addresses in turn, splitting the time left between the
// remaining attempts as net.Dialer does.
func (e *Egress) dialAny(ctx context.Context, addrs []netip.Addr, port uint16) (net.Conn, error) {
	var firstErr error
	for i, a := range addrs {
		if err := ctx.Err(); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			break
		}
		actx := ctx
		var cancel context.CancelFunc = func() {}
		if deadline, ok := ctx.Deadline(); ok && i < len(addrs)-1 {
			left := time.Until(deadline)
			share := max(left/time.Duration(len(addrs)-i), min(left, 2*time.Second))
			actx, cancel = context.WithTimeout(ctx, share)
		}
		c, err := e.dial(actx, "tcp", netip.AddrPortFrom(a, port).String())
		cancel()
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// dialErrorCode maps a dial error to a SOCKS5 reply code.
func dialErrorCode(err error) byte {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return socksConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return socksNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return socksHostUnreachable
	case errors.Is(err, context.Canceled):
		return socksGeneralFailure
	}
	// Dialers that do not wrap an errno (userspace stacks) still say so.
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return socksConnectionRefused
	case strings.Contains(msg, "network is unreachable"):
		return socksNetworkUnreachable
	}
	return socksHostUnreachable
}

// writeReply sends a SOCKS5 reply with bind address bnd (0.0.0.0:0 if not
// valid).
func writeReply(w io.Writer, code byte, bnd netip.AddrPort) error {
	a := bnd.Addr().Unmap()
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	msg := make([]byte, 0, 22)
	msg = append(msg, socksVersion, code, 0)
	if a.Is4() {
		msg = append(msg, 1)
	} else {
		msg = append(msg, 4)
	}
	msg = append(msg, a.AsSlice()...)
	msg = append(msg, byte(bnd.Port()>>8), byte(bnd.Port()))
	_, err := w.Write(msg)
	return err
}

// exactReader fills every Read completely (or fails), so that go-socks5's
// parser, which ignores short reads of single bytes, cannot misparse, and
// reads nothing beyond what is asked for: bytes behind the request stay in
// the connection for the data phase. It notes the fourth byte of the
// request (the address type) for the error reply, and the read error.
type exactReader struct {
	r    io.Reader
	n    int
	atyp byte
	err  error
}

func (x *exactReader) Read(p []byte) (int, error) {
	n, err := io.ReadFull(x.r, p)
	if x.n <= 3 && x.n+n > 3 {
		x.atyp = p[3-x.n]
	}
	x.n += n
	if err != nil {
		x.err = err
	}
	return n, err
}

// cancelOnClose lets a session's close cancel a context.
type cancelOnClose func()

func (c cancelOnClose) Close() error { c(); return nil }

// socksAllowed tells whether a client may use SOCKS5 egress now.
func socksAllowed(d *Directory, clientID string) error {
	p, ok := d.Peer(clientID)
	switch {
	case !ok:
		return fmt.Errorf("client %q is not registered", clientID)
	case !p.Socks5:
		return fmt.Errorf("SOCKS5 is disabled for client %q", clientID)
	}
	return nil
}

// CloseClient ends every live session of a client, for when the client is
// removed; it returns how many there were.
func (e *Egress) CloseClient(clientID string) int {
	return e.life.live.closeMatching(func(s *session) bool { return s.is("", clientID) })
}

// Live reports how many sessions are in progress.
func (e *Egress) Live() int { return e.life.live.count() }

// Close ends every live session, makes later ServeConn calls fail with
// ErrClosed and waits until every ServeConn call has returned. It is
// idempotent.
func (e *Egress) Close() error {
	e.life.close()
	return nil
}

// Serve accepts SOCKS5 connections on ln (inside the tunnel) until ln or
// the Egress is closed, identifying each connection's client by its source
// address in the Directory; a connection from no registered client is
// closed. It takes ownership of ln.
func (e *Egress) Serve(ln net.Listener) error {
	if e.cfg.Directory == nil {
		ln.Close()
		return errors.New("forward: Egress.Serve needs EgressConfig.Directory")
	}
	return e.life.serve(ln, func(c net.Conn) {
		from := addrPortOf(c.RemoteAddr()) // nil after a failed connection
		p, ok := e.cfg.Directory().ByAddr(from.Addr())
		if !ok {
			e.logUnknown.log(e.log, slog.LevelInfo, "egress: connection from an unknown peer refused", "from", addrString(c.RemoteAddr()))
			c.Close()
			return
		}
		e.ServeConn(p.ID, c)
	})
}
