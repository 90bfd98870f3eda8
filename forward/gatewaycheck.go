package forward

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/thresholdtunnel/threshold/forward/sniff"
)

// Reachability checks on the Gateway's side.
//
// Gateway.Check opens a connection through a tunnel to its active client,
// as a user's would be, and sends a check instead of a connection
// (check.go): the client answers it itself.
//
// An outside prober (threshold check) proves the public port too: it arms
// a one-time token for a tunnel (ArmCheck, through the management API),
// then connects to the public port like a user and sends a probe carrying
// the token. The Gateway recognises the probe before the connection would
// go to a client, answers the check through the tunnel, and writes the
// result back to the prober, with the token the client echoed. A probe is
//
//   - on a port that routes by host name: a TLS ClientHello, with the
//     tunnel's name as SNI and CheckALPNPrefix+token as its one ALPN
//     protocol; the peek that reads the SNI sees it anyway.
//   - on a port of one "*" tunnel, which is not peeked (the server may
//     speak first there, as SMTP does): the line CheckLinePrefix+token.
//     While a token is armed for such a port, and only then, its new
//     connections wait up to CheckHoldTimeout for their first bytes
//     before they go to the client.
//
// A user's connection is never taken for a probe: a probe must carry an
// armed token, which only the management API hands out. And a probe
// never reaches a backend: one with a token that is unknown, used or
// expired is closed, and any connection whose first bytes are a probe's
// (one that came after the wait, or to a port armed for nothing) is cut
// before they are passed on.

const (
	// CheckALPNPrefix starts the ALPN protocol of a TLS probe.
	CheckALPNPrefix = "threshold-check/1."
	// CheckLinePrefix starts a line probe, and the answer to any probe.
	CheckLinePrefix = "THRESHOLD-CHECK/1 "
	// CheckHoldTimeout is how long connections to an armed port that is
	// not peeked wait for their first bytes.
	CheckHoldTimeout = 2 * time.Second
	// CheckTokenTTL is how long an armed token is good for.
	CheckTokenTTL = 20 * time.Second
	// MaxArmedChecks bounds the tokens armed at once.
	MaxArmedChecks = 16
	// MaxCheckedTunnels bounds the tunnels one Check call checks.
	MaxCheckedTunnels = 100
	// MaxCheckDuration bounds one Check call.
	MaxCheckDuration = 25 * time.Second
	// checkConcurrency is how many tunnels one Check call checks at once.
	checkConcurrency = 8
)

// Reasons a check fails, in CheckResult.Reason.
const (
	CheckNoClient           = "no_client_connected" // none of the tunnel's clients is connected
	CheckClientUnreachable  = "client_unreachable"  // connected, but no answer through the tunnel
	CheckClientRefused      = "client_refused"      // the client refused the check (one older than checks does)
	CheckUnknownService     = "unknown_service"     // the client has no such service
	CheckBackendRefused     = "backend_refused"     // the service refused the connect (or ICMP port unreachable)
	CheckBackendTimeout     = "backend_timeout"     // the service did not answer the connect in time
	CheckBackendUnreachable = "backend_unreachable" // no route, a name that does not resolve, ...
	CheckProxyRefused       = "proxy_refused"       // the client's PROXY choice for the service refuses the tunnel's connections
	CheckWrongTunnel        = "wrong_tunnel"        // a probe routed to another tunnel than its token's
)

var (
	// ErrNoTunnel: no tunnel matches what a check names.
	ErrNoTunnel = errors.New("no such tunnel")
	// ErrTooManyChecks: MaxArmedChecks tokens are armed already.
	ErrTooManyChecks = errors.New("too many checks armed")
	// errCheckTooLong ends the checks a call has not finished in
	// MaxCheckDuration.
	errCheckTooLong = fmt.Errorf("not finished within the %s one check call may take (name fewer tunnels)", MaxCheckDuration)
)

// CheckResult is how a check of one tunnel went.
type CheckResult struct {
	Tunnel Tunnel
	OK     bool
	// Reason is one of the Check* reasons when OK is false; Error says
	// more, when there is more to say.
	Reason string `json:",omitempty"`
	Error  string `json:",omitempty"`
	// ClientId is the client that answered.
	ClientId string `json:",omitempty"`
	// RoundTripMillis is the round trip through the tunnel: from the
	// request sent to the client's token back. BackendMillis is how long
	// the client's try of its service took.
	RoundTripMillis float64 `json:",omitempty"`
	BackendMillis   float64 `json:",omitempty"`
	// Token is the token the client echoed: in the answer to a probe, the
	// one that was armed for it.
	Token string `json:",omitempty"`
}

// CheckSelector names tunnels to check: each field that is set must
// match.
type CheckSelector struct {
	Protocol           string `json:",omitempty"` // "tcp" or "udp"
	ListenAddress      string `json:",omitempty"`
	ListenPort         int    `json:",omitempty"`
	ListenHostnameGlob string `json:",omitempty"`
	BackEndService     string `json:",omitempty"`
	ClientId           string `json:",omitempty"` // one of the tunnel's clients
}

func (s CheckSelector) matches(t Tunnel) bool {
	if s.ListenAddress != "" {
		if a, err := netip.ParseAddr(s.ListenAddress); err == nil {
			s.ListenAddress = a.String()
		}
		if s.ListenAddress != t.ListenAddress {
			return false
		}
	}
	return (s.Protocol == "" || strings.EqualFold(s.Protocol, t.Protocol)) &&
		(s.ListenPort == 0 || s.ListenPort == t.ListenPort) &&
		(s.ListenHostnameGlob == "" || strings.EqualFold(s.ListenHostnameGlob, t.ListenHostnameGlob)) &&
		(s.BackEndService == "" || s.BackEndService == t.BackEndService) &&
		(s.ClientId == "" || containsString(t.Clients(), s.ClientId))
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Check checks the tunnels that sel names (every tunnel if sel is empty),
// a few at a time, and returns one result for each, in the order of the
// tunnel list. Each check sends nothing to a service but one connect.
func (g *Gateway) Check(ctx context.Context, sel []CheckSelector) ([]CheckResult, error) {
	all := g.Tunnels()
	var ts []Tunnel
	var errs []error
	matched := make([]bool, len(sel))
	for _, t := range all {
		take := len(sel) == 0
		for i, s := range sel {
			if s.matches(t) {
				take, matched[i] = true, true
			}
		}
		if take {
			ts = append(ts, t)
		}
	}
	for i, m := range matched {
		if !m {
			errs = append(errs, &problem{kind: ErrNoTunnel, msg: fmt.Sprintf("Tunnels[%d] matches no tunnel", i)})
		}
	}
	if len(ts) > MaxCheckedTunnels {
		errs = append(errs, &problem{kind: ErrInvalid, msg: fmt.Sprintf("%d tunnels match; at most %d are checked at once: name some", len(ts), MaxCheckedTunnels)})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// The whole call is bounded, so that its answer is written before the
	// management API's write timeout (30 s) however many services are
	// silent; a tunnel not finished by then is reported as such.
	ctx, cancel := context.WithTimeoutCause(ctx, MaxCheckDuration, errCheckTooLong)
	defer cancel()
	out := make([]CheckResult, len(ts))
	sem := make(chan struct{}, checkConcurrency)
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var token [CheckTokenLen]byte
			rand.Read(token[:])
			out[i] = g.checkTunnel(ctx, t, netip.AddrPortFrom(netip.IPv4Unspecified(), 0), netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(t.ListenPort)), token)
		}()
	}
	wg.Wait()
	return out, nil
}

// checkTunnel checks one tunnel through the first of its connected
// clients that answers, as the tunnel's users would reach it, with token
// for the client to echo. src and dst are what the client is told of the
// connection.
func (g *Gateway) checkTunnel(ctx context.Context, t Tunnel, src, dst netip.AddrPort, token [CheckTokenLen]byte) CheckResult {
	res := CheckResult{Tunnel: t}
	fail := func(reason string, err error) CheckResult {
		res.Reason = reason
		if err != nil {
			res.Error = err.Error()
		}
		return res
	}
	if len(g.cfg.Directory().Connected(t.Clients())) == 0 {
		return fail(CheckNoClient, fmt.Errorf("none of %v is connected", t.Clients()))
	}
	if ctx.Err() != nil {
		return fail(CheckClientUnreachable, context.Cause(ctx))
	}
	up, peer, err := g.dial(t)
	if err != nil {
		return fail(CheckClientUnreachable, err)
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { up.Close() })
	defer stop()
	res.ClientId = peer.ID
	req := Request{Service: t.BackEndService, Source: src, Destination: dst, Check: &CheckRequest{Token: token, UDP: t.IsUDP(), Asked: t.backendProxyVersion(), AskedKnown: true}}
	_ = up.SetWriteDeadline(time.Now().Add(g.cfg.DialTimeout))
	sent := time.Now()
	if err := WriteRequest(up, req); err != nil {
		return fail(CheckClientUnreachable, err)
	}
	// The client answers the token at once; its try of the service takes
	// up to its own dial timeout (5 s by default), a UDP one a second more.
	ans, err := readCheckAnswer(up, token, sent, sent.Add(g.cfg.DialTimeout+DefaultDialTimeout+checkUDPWait+2*time.Second))
	if ans.roundTrip > 0 {
		res.RoundTripMillis = millis(ans.roundTrip)
	}
	switch {
	case errors.Is(err, ErrUnknownService):
		return fail(CheckUnknownService, fmt.Errorf("client %q has no service %q in its ServiceToLocalAddrMap", peer.ID, t.BackEndService))
	case errors.Is(err, ErrBadRequest) && res.RoundTripMillis == 0:
		return fail(CheckClientRefused, fmt.Errorf("%w (a client older than reachability checks refuses them)", err))
	case err != nil && ctx.Err() != nil && res.RoundTripMillis > 0:
		// The client answered; its try of the service outlasted the call.
		return fail(CheckBackendTimeout, context.Cause(ctx))
	case err != nil && ctx.Err() != nil:
		return fail(CheckClientUnreachable, context.Cause(ctx))
	case err != nil:
		return fail(CheckClientUnreachable, err)
	}
	res.Token = encodeToken(token)
	res.BackendMillis = millis(ans.took)
	switch ans.result {
	case BackendOK:
		res.OK = true
		return res
	case BackendRefused:
		return fail(CheckBackendRefused, errors.New(ans.message))
	case BackendTimeout:
		return fail(CheckBackendTimeout, errors.New(ans.message))
	case BackendProxyRefused:
		return fail(CheckProxyRefused, fmt.Errorf("client %q refuses this tunnel's connections: %s", peer.ID, ans.message))
	}
	return fail(CheckBackendUnreachable, errors.New(ans.message))
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func encodeToken(t [CheckTokenLen]byte) string { return base64.RawURLEncoding.EncodeToString(t[:]) }

func decodeToken(s string) ([CheckTokenLen]byte, bool) {
	var t [CheckTokenLen]byte
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != CheckTokenLen {
		return t, false
	}
	copy(t[:], b)
	return t, true
}

// ArmRequest names the tunnel a probe is about to reach: the public port
// (and address, when several listen on it) it will connect to, and the
// host name it will carry, for a port that routes by host name.
type ArmRequest struct {
	ListenAddress string `json:",omitempty"`
	ListenPort    int
	Hostname      string `json:",omitempty"`
}

// ArmedCheck is a one-time token for a probe.
type ArmedCheck struct {
	Token string
	// Probe is "tls" (send a ClientHello with SNI Hostname and ALPN
	// CheckALPNPrefix+Token) or "line" (send CheckLinePrefix+Token and
	// CRLF).
	Probe            string
	ExpiresInSeconds float64
	Tunnel           Tunnel
}

// armed is a token waiting for its probe.
type armed struct {
	listener *listener
	route    string // the tunnel's RouteKey
	expires  time.Time
}

// checks are the armed tokens of a Gateway.
type checks struct {
	mu sync.Mutex
	m  map[[CheckTokenLen]byte]*armed
}

// expire drops tokens past their time; c.mu is held.
func (c *checks) expire(now time.Time) {
	for k, a := range c.m {
		if now.After(a.expires) {
			delete(c.m, k)
			c.rearm(a.listener, now)
		}
	}
}

// rearm sets how long l's connections are held for a probe: until the
// last of its tokens expires; c.mu is held.
func (c *checks) rearm(l *listener, now time.Time) {
	var until time.Time
	for _, a := range c.m {
		if a.listener == l && a.expires.After(until) {
			until = a.expires
		}
	}
	l.holdUntil.Store(until.UnixNano())
}

// ArmCheck arms a one-time token for a probe of the tunnel req names, as
// the Gateway would route the probe. It fails with an error wrapping
// ErrInvalid, ErrNoTunnel or ErrTooManyChecks.
func (g *Gateway) ArmCheck(req ArmRequest) (ArmedCheck, error) {
	if req.ListenPort < 1 || req.ListenPort > 65535 {
		return ArmedCheck{}, &problem{kind: ErrInvalid, msg: fmt.Sprintf("ListenPort: %d is not a port number (1-65535)", req.ListenPort)}
	}
	want := req.ListenAddress
	if a, err := netip.ParseAddr(want); err == nil {
		want = a.String()
	}
	var found []*listener
	g.mu.Lock()
	for _, l := range g.listeners {
		routes := l.routes.Load()
		if routes == nil || len(*routes) == 0 {
			continue
		}
		t := (*routes)[0]
		if t.ListenPort == req.ListenPort && (req.ListenAddress == "" || t.ListenAddress == want) {
			found = append(found, l)
		}
	}
	g.mu.Unlock()
	switch {
	case len(found) == 0 && g.hasUDPPort(req.ListenPort):
		return ArmedCheck{}, &problem{kind: ErrNoTunnel, msg: fmt.Sprintf("port %d has a UDP tunnel, which an outside probe cannot reach (it speaks TCP); POST /tunnels/check checks UDP tunnels through their clients", req.ListenPort)}
	case len(found) == 0:
		return ArmedCheck{}, &problem{kind: ErrNoTunnel, msg: fmt.Sprintf("no TCP tunnel listens on port %d%s", req.ListenPort, addressSuffix(req.ListenAddress))}
	case len(found) > 1:
		return ArmedCheck{}, &problem{kind: ErrInvalid, msg: fmt.Sprintf("tunnels listen on port %d at several addresses: name ListenAddress", req.ListenPort)}
	}
	l := found[0]
	routes := *l.routes.Load()
	probe, t := "line", routes[0]
	if peeked(routes) {
		probe = "tls"
		globs := make([]string, len(routes))
		for i, r := range routes {
			globs[i] = r.ListenHostnameGlob
		}
		host := strings.TrimSuffix(strings.ToLower(req.Hostname), ".")
		i, ok := sniff.Pick(globs, host)
		if !ok {
			return ArmedCheck{}, &problem{kind: ErrNoTunnel, msg: fmt.Sprintf("port %d routes by host name and no tunnel there matches %q: give the name users connect with", req.ListenPort, req.Hostname)}
		}
		t = routes[i]
	}
	var token [CheckTokenLen]byte
	rand.Read(token[:])
	now := time.Now()
	g.checks.mu.Lock()
	defer g.checks.mu.Unlock()
	g.checks.expire(now)
	if len(g.checks.m) >= MaxArmedChecks {
		return ArmedCheck{}, &problem{kind: ErrTooManyChecks, msg: fmt.Sprintf("%d checks are armed already; try again in %s", MaxArmedChecks, CheckTokenTTL)}
	}
	if g.checks.m == nil {
		g.checks.m = make(map[[CheckTokenLen]byte]*armed)
	}
	g.checks.m[token] = &armed{listener: l, route: t.RouteKey(), expires: now.Add(CheckTokenTTL)}
	g.checks.rearm(l, now)
	t.ActiveClientId = g.cfg.Directory().Active(t)
	g.log.Info("reachability check armed", "tunnel", t.RouteKey(), "probe", probe)
	return ArmedCheck{Token: encodeToken(token), Probe: probe, ExpiresInSeconds: CheckTokenTTL.Seconds(), Tunnel: t}, nil
}

// hasUDPPort reports whether a UDP tunnel listens on port.
func (g *Gateway) hasUDPPort(port int) bool {
	for _, t := range g.Tunnels() {
		if t.IsUDP() && t.ListenPort == port {
			return true
		}
	}
	return false
}

func addressSuffix(a string) string {
	if a == "" {
		return ""
	}
	return " at " + a
}

// peeked reports whether a listener with these routes peeks at each
// connection's host name (see Gateway.route).
func peeked(routes []Tunnel) bool {
	return !(len(routes) == 1 && routes[0].ListenHostnameGlob == "*")
}

// consume takes an armed token for a probe that came to l; false if the
// token is unknown, used, expired or armed for another port.
func (g *Gateway) consume(l *listener, token [CheckTokenLen]byte) (*armed, bool) {
	now := time.Now()
	g.checks.mu.Lock()
	defer g.checks.mu.Unlock()
	g.checks.expire(now)
	a, ok := g.checks.m[token]
	if !ok {
		return nil, false
	}
	delete(g.checks.m, token)
	g.checks.rearm(a.listener, now)
	return a, a.listener == l
}

// probeToken finds a probe's token in the first bytes of a connection or
// in the ALPN of its ClientHello. isProbe is true whenever the bytes are a
// probe's, even when the token in them is malformed.
func probeToken(first []byte, alpn []string) (token [CheckTokenLen]byte, isProbe, ok bool) {
	for _, p := range alpn {
		if s, found := strings.CutPrefix(p, CheckALPNPrefix); found {
			token, ok = decodeToken(s)
			return token, true, ok
		}
	}
	if rest, found := bytes.CutPrefix(first, []byte(CheckLinePrefix)); found {
		line, _, _ := bytes.Cut(rest, []byte("\n"))
		token, ok = decodeToken(strings.TrimSpace(string(line)))
		return token, true, ok
	}
	return token, false, false
}

// looksLikeProbe reports whether the first bytes read from a connection
// are a probe's: the line, or a TLS record that names the probe's ALPN.
func looksLikeProbe(b []byte) bool {
	return bytes.HasPrefix(b, []byte(CheckLinePrefix)) ||
		(len(b) > 0 && b[0] == 0x16 && bytes.Contains(b, []byte(CheckALPNPrefix)))
}

// errLateProbe cuts a connection that turned out to be a probe.
var errLateProbe = errors.New("a reachability probe, not passed on")

// probeGuard passes a connection's bytes on unless its first ones are a
// probe's: a probe never reaches a backend, also one that came too late
// to be answered.
type probeGuard struct {
	net.Conn
	g       *Gateway
	checked bool
}

func (p *probeGuard) Read(b []byte) (int, error) {
	n, err := p.Conn.Read(b)
	if !p.checked && n > 0 {
		p.checked = true
		if looksLikeProbe(b[:n]) {
			// Anyone can send a probe's line: throttled like a route miss.
			p.g.logRoute.log(p.g.log, slog.LevelInfo, "connection cut: a reachability probe came after the port stopped waiting for it, or with no token armed", "from", addrString(p.RemoteAddr()))
			p.Conn.Close()
			return 0, errLateProbe
		}
	}
	return n, err
}

// Raw is the wrapped connection, for a half-close.
func (p *probeGuard) Raw() net.Conn { return p.Conn }

// Rewrap is the guard, in its state, over inner (the same socket, read and
// written with raw syscalls: rawIO). The copy is read from instead of p,
// so the first read is checked once, by whichever is read first.
func (p *probeGuard) Rewrap(inner net.Conn) net.Conn {
	return &probeGuard{Conn: inner, g: p.g, checked: p.checked}
}

// takeProbe is called for each routed public connection before it goes
// to a client. It answers a probe and reports true, or returns the
// connection to forward, guarded. On a port that is not peeked it first
// waits for a probe while a token is armed for the port.
func (g *Gateway) takeProbe(l *listener, s *session, conn net.Conn, t Tunnel) (net.Conn, bool) {
	if routes := l.routes.Load(); routes != nil && !peeked(*routes) && time.Now().UnixNano() < l.holdUntil.Load() {
		// Wait for the first bytes; whatever they are, they are replayed
		// unchanged unless they are a probe. A silent client (the server
		// speaks first) goes on after CheckHoldTimeout.
		_, _, replay, _ := sniff.Hostname(conn, CheckHoldTimeout, 4096)
		if !s.add(replay) {
			return nil, true
		}
		conn = replay
	}
	token, isProbe, ok := probeToken(sniff.Peeked(conn), sniff.ALPN(conn))
	if !isProbe {
		return &probeGuard{Conn: conn, g: g}, false
	}
	from := addrString(conn.RemoteAddr())
	if !ok {
		g.log.Debug("probe with a malformed token dropped", "from", from)
		s.close()
		return nil, true
	}
	a, ok := g.consume(l, token)
	if !ok {
		g.log.Debug("probe with an unknown, used or expired token dropped", "from", from)
		s.close()
		return nil, true
	}
	var res CheckResult
	if a.route != t.RouteKey() {
		res = CheckResult{Tunnel: t, Reason: CheckWrongTunnel,
			Error: fmt.Sprintf("the probe was routed to tunnel %q, the token was armed for %q: give the host name users connect with", t.RouteKey(), a.route)}
	} else {
		res = g.checkTunnel(g.life.ctx, t, addrPortOf(conn.RemoteAddr()), addrPortOf(conn.LocalAddr()), token)
	}
	g.log.Info("reachability probe answered", "tunnel", t.RouteKey(), "from", from, "ok", res.OK, "reason", res.Reason, "client", res.ClientId, "round_trip_ms", res.RoundTripMillis)
	body, _ := json.Marshal(res)
	_ = conn.SetWriteDeadline(time.Now().Add(g.cfg.DialTimeout))
	_, _ = io.WriteString(conn, CheckLinePrefix+string(body)+"\n")
	_ = closeWrite(conn)
	// Let the prober read the answer before the close.
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
	s.close()
	return nil, true
}

// ProbeLine is the probe for a port that is not peeked.
func ProbeLine(token string) []byte { return []byte(CheckLinePrefix + token + "\r\n") }

// ProbeClientHello is the probe for a port that routes by host name: a TLS
// ClientHello with serverName as SNI (none if empty) and the token in its
// one ALPN protocol. It offers X25519 only, so that it fits one segment.
func ProbeClientHello(serverName, token string) ([]byte, error) {
	c := &helloCapture{}
	cfg := &tls.Config{
		ServerName:         serverName,
		InsecureSkipVerify: true, // nothing is verified: no handshake follows
		NextProtos:         []string{CheckALPNPrefix + token},
		CurvePreferences:   []tls.CurveID{tls.X25519},
		MinVersion:         tls.VersionTLS12,
	}
	err := tls.Client(c, cfg).Handshake()
	if c.buf.Len() == 0 {
		return nil, fmt.Errorf("making the probe's ClientHello: %w", err)
	}
	return c.buf.Bytes(), nil
}

// errHelloCaptured ends the handshake once the ClientHello is written.
var errHelloCaptured = errors.New("ClientHello captured")

// helloCapture is a connection that keeps what is written and has nothing
// to read.
type helloCapture struct{ buf bytes.Buffer }

func (c *helloCapture) Read([]byte) (int, error)         { return 0, errHelloCaptured }
func (c *helloCapture) Write(p []byte) (int, error)      { return c.buf.Write(p) }
func (c *helloCapture) Close() error                     { return nil }
func (c *helloCapture) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *helloCapture) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *helloCapture) SetDeadline(time.Time) error      { return nil }
func (c *helloCapture) SetReadDeadline(time.Time) error  { return nil }
func (c *helloCapture) SetWriteDeadline(time.Time) error { return nil }

// ParseProbeAnswer reads the Gateway's answer line to a probe.
func ParseProbeAnswer(line []byte) (CheckResult, error) {
	var res CheckResult
	rest, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte(CheckLinePrefix))
	if !ok {
		return res, fmt.Errorf("not a check answer: %.80q", line)
	}
	if err := json.Unmarshal(rest, &res); err != nil {
		return res, fmt.Errorf("malformed check answer: %w", err)
	}
	return res, nil
}
