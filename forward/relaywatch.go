package forward

import (
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
)

// The client's view of SOCKS5 refusals. The server decides them
// (egress.go); the application on the client only gets a failure reply
// ("curl: (97) ... (2)"). The relay watches the first bytes each way of
// every session, the greeting and request the application sends and the
// replies the server gives, until the request's reply has passed, and
// logs a failure with the destination and, for a refusal by the server's
// policy, the reason the reply carries (denyreason.go). After that the
// watch costs a branch per Read.

// maxSocksRequest bounds what is kept of the application's side: a
// greeting (2 + 255 bytes) and a request (4 + 1 + 255 + 2).
const maxSocksRequest = 2 + 255 + 4 + 1 + 255 + 2

// socksRefusal is a failed SOCKS5 request as the relay saw it.
type socksRefusal struct {
	Reply       byte       // the SOCKS5 reply code
	Reason      DenyReason // for reply 0x02, what the server's reply says
	Destination string     // host:port the application asked for; "" if unreadable
}

// socksWatch watches one relayed session.
type socksWatch struct {
	report func(socksRefusal)

	mu  sync.Mutex
	req []byte // the application's first bytes
	// finished: the request's reply has passed; nothing more is kept.
	finished atomic.Bool
}

// requestConn records what the application sends.
type requestConn struct {
	net.Conn
	w    *socksWatch
	done bool
}

func (c *requestConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.done && n > 0 {
		if c.w.finished.Load() {
			c.done = true
			return n, err
		}
		c.w.mu.Lock()
		take := min(n, maxSocksRequest-len(c.w.req))
		c.w.req = append(c.w.req, b[:take]...)
		c.done = len(c.w.req) >= maxSocksRequest
		c.w.mu.Unlock()
	}
	return n, err
}

func (c *requestConn) CloseWrite() error { return closeWrite(c.Conn) }
func (c *requestConn) NetConn() net.Conn { return c.Conn }

// replyConn parses the server's replies as they pass.
type replyConn struct {
	net.Conn
	w    *socksWatch
	buf  []byte
	done bool
}

func (c *replyConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.done && n > 0 {
		c.feed(b[:n])
	}
	return n, err
}

func (c *replyConn) CloseWrite() error { return closeWrite(c.Conn) }
func (c *replyConn) NetConn() net.Conn { return c.Conn }

// feed takes the server's bytes until the request's reply is complete:
// the method reply (VER METHOD), then VER REP RSV ATYP BND.ADDR BND.PORT.
func (c *replyConn) feed(p []byte) {
	c.buf = append(c.buf, p[:min(len(p), 2+4+1+255+2-len(c.buf))]...)
	b := c.buf
	if len(b) < 2 {
		return
	}
	if b[1] != socksNoAuth {
		c.finish() // no acceptable method: the server said so, and closes
		return
	}
	r := b[2:]
	if len(r) < 5 {
		return
	}
	var addrLen int
	switch r[3] {
	case 1:
		addrLen = 4
	case 4:
		addrLen = 16
	case 3:
		addrLen = 1 + int(r[4])
	default:
		c.finish()
		return
	}
	if len(r) < 4+addrLen+2 {
		return
	}
	c.finish()
	if r[1] == socksSucceeded {
		c.w.mu.Lock()
		c.w.req = nil
		c.w.mu.Unlock()
		return
	}
	port := uint16(r[4+addrLen])<<8 | uint16(r[4+addrLen+1])
	f := socksRefusal{Reply: r[1]}
	if f.Reply == socksNotAllowed {
		f.Reason = reasonOfPort(port)
	}
	c.w.mu.Lock()
	f.Destination = socksDestination(c.w.req)
	c.w.req = nil
	c.w.mu.Unlock()
	c.w.report(f)
}

// finish ends the watch: the rest of the session is passed through, and
// what was kept is let go (but for the request, until it is read).
func (c *replyConn) finish() {
	c.done = true
	c.w.finished.Store(true)
	c.buf = nil
}

// socksDestination reads the destination of a greeting and request; ""
// if they are not complete or not SOCKS5.
func socksDestination(b []byte) string {
	if len(b) < 2 || b[0] != socksVersion {
		return ""
	}
	b = b[2+int(b[1]):]
	if len(b) < 5 || b[0] != socksVersion {
		return ""
	}
	var host string
	switch b[3] {
	case 1:
		if len(b) < 4+4+2 {
			return ""
		}
		host, b = netip.AddrFrom4([4]byte(b[4:8])).String(), b[8:]
	case 4:
		if len(b) < 4+16+2 {
			return ""
		}
		host, b = netip.AddrFrom16([16]byte(b[4:20])).String(), b[20:]
	case 3:
		n := int(b[4])
		if len(b) < 5+n+2 {
			return ""
		}
		host, b = string(b[5:5+n]), b[5+n:]
	default:
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(int(b[0])<<8|int(b[1])))
}

// socksReplyText says what a SOCKS5 failure reply means.
func socksReplyText(code byte) string {
	switch code {
	case socksGeneralFailure:
		return "the server failed to serve it"
	case socksNotAllowed:
		return "refused by the server's policy"
	case socksNetworkUnreachable:
		return "the server has no route to the destination's network"
	case socksHostUnreachable:
		return "the destination is unreachable from the server, or its name does not resolve there"
	case socksConnectionRefused:
		return "the destination refused the server's connection (nothing listens on that port)"
	case socksCommandNotSupported:
		return "only CONNECT is served (no BIND or UDP ASSOCIATE)"
	case socksAddrTypeUnsupported:
		return "the address type is not supported"
	}
	return "reply code " + strconv.Itoa(int(code))
}

// watchSocks wraps both ends of a relayed session.
func (r *Relay) watchSocks(local, up net.Conn) (net.Conn, net.Conn) {
	from := addrString(local.RemoteAddr())
	w := &socksWatch{report: func(f socksRefusal) { r.logRefusal(from, f) }}
	return &requestConn{Conn: local, w: w}, &replyConn{Conn: up, w: w}
}

// logRefusal writes a refused or failed request at INFO, through the
// relay's throttle.
func (r *Relay) logRefusal(from string, f socksRefusal) {
	args := []any{"destination", f.Destination, "from", from, "reply", int(f.Reply)}
	if f.Reply == socksNotAllowed {
		args = append(args, "reason", f.Reason.String())
		r.logRefused.log(r.cfg.Logger, slog.LevelInfo, "SOCKS5 connection refused by the server: "+f.Reason.Explain(), args...)
		return
	}
	r.logRefused.log(r.cfg.Logger, slog.LevelInfo, "SOCKS5 connection failed: "+socksReplyText(f.Reply), args...)
}
