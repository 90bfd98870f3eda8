package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// Proto is what Hostname recognized at the start of a connection.
type Proto int

const (
	// Other is anything but TLS and plain HTTP/1.x.
	Other Proto = iota
	// TLS is a TLS ClientHello; the host is its SNI.
	TLS
	// HTTP is a plain HTTP/1.x request; the host is its Host header.
	HTTP
)

func (p Proto) String() string {
	switch p {
	case Other:
		return "other"
	case TLS:
		return "tls"
	case HTTP:
		return "http"
	}
	return fmt.Sprintf("Proto(%d)", int(p))
}

var (
	// ErrTooLarge means the client sent more than the byte limit
	// without naming a host.
	ErrTooLarge = errors.New("peek: client sent too many bytes before naming a host")
	// ErrMalformed means the client's TLS ClientHello or HTTP request
	// head could not be parsed; the cause is wrapped.
	ErrMalformed = errors.New("peek: malformed client greeting")
)

const (
	// DefaultTimeout is used when Hostname is given no timeout.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxBytes is used when Hostname is given no byte limit.
	DefaultMaxBytes = 64 << 10
)

// maxMethodLen bounds the HTTP method token; the longest registered
// method ("UPDATEREDIRECTREF") has 17 bytes.
const maxMethodLen = 24

// errPeekGotHello aborts the TLS handshake once the ClientHello is parsed.
var errPeekGotHello = errors.New("peek: got ClientHello")

// errPeekReadOnly is what the TLS handshake gets if it tries to write.
var errPeekReadOnly = errors.New("peek: connection is read-only while peeking")

// Hostname reads from c just enough to learn which host the client
// wants: the SNI of a TLS ClientHello (without terminating TLS), or the
// Host of a plain HTTP/1.x request (the authority of an absolute-form
// request target wins). Hosts are lowercased, with the port, IPv6 brackets
// and one trailing dot removed. TLS without SNI and HTTP without Host give
// host "". Anything else gives Other and host "" as soon as the bytes
// read rule out TLS and HTTP: TLS starts with a handshake record (0x16),
// HTTP with a method token, a space, and its first line must be an
// HTTP/x.y request line.
//
// The whole peek has a read deadline of timeout (DefaultTimeout if not
// positive); afterwards the read deadline is cleared, so one c had before
// is lost. If the deadline cannot be set, Hostname fails at once. A client that stays silent or never finishes its greeting gets an
// error wrapping os.ErrDeadlineExceeded. At most maxBytes
// (DefaultMaxBytes if not positive) are read; a greeting that does not
// fit gives ErrTooLarge. An unparsable greeting gives ErrMalformed.
//
// replay is never nil: it reads every byte consumed during the peek,
// unchanged, then continues from c; everything else goes to c. It is
// returned on error too, so a caller may still forward the connection.
func Hostname(c net.Conn, timeout time.Duration, maxBytes int) (host string, proto Proto, replay net.Conn, err error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	r := &peekRecorder{c: c, max: maxBytes}
	var alpn []string
	defer func() { replay = &replayConn{Conn: c, pending: r.buf, peeked: len(r.buf), alpn: alpn} }()

	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", Other, nil, fmt.Errorf("peek: setting read deadline: %w", err)
	}
	// Best effort: it fails only on a closed connection (or, for net.Pipe,
	// one whose other end is closed), where reads fail anyway.
	defer c.SetReadDeadline(time.Time{})

	if err := r.fill(); err != nil {
		return "", Other, nil, r.readError(err)
	}
	if r.buf[0] == 0x16 { // TLS record of type handshake
		var host string
		host, alpn, err = peekTLS(r)
		return host, TLS, nil, err
	}
	isHTTP, err := looksLikeHTTP(r)
	if err != nil {
		return "", Other, nil, err
	}
	if !isHTTP {
		return "", Other, nil, nil
	}
	host, isHTTP, err = peekHTTP(r)
	if !isHTTP {
		return "", Other, nil, err
	}
	return host, HTTP, nil, err
}

// peekRecorder reads from c, keeping every byte, up to max bytes. Its
// Read returns the kept bytes from pos on before reading more from c.
type peekRecorder struct {
	c   net.Conn
	buf []byte
	pos int // how much of buf Read has returned
	max int
	err error // first error: from c, or ErrTooLarge
}

func (r *peekRecorder) Read(p []byte) (int, error) {
	if r.pos < len(r.buf) {
		n := copy(p, r.buf[r.pos:])
		r.pos += n
		return n, nil
	}
	n, err := r.read(p)
	r.pos += n
	return n, err
}

// read reads more from c into buf and p.
func (r *peekRecorder) read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	room := r.max - len(r.buf)
	if room <= 0 {
		r.err = ErrTooLarge
		return 0, r.err
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := r.c.Read(p)
	r.buf = append(r.buf, p[:n]...)
	if err != nil {
		r.err = err
	}
	return n, err
}

// fill reads at least one more byte from c into r.buf.
func (r *peekRecorder) fill() error {
	var chunk [2048]byte
	for {
		n, err := r.read(chunk[:])
		if n > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readError describes err, an error of r.Read, for Hostname's caller.
func (r *peekRecorder) readError(err error) error {
	switch {
	case errors.Is(err, ErrTooLarge):
		return fmt.Errorf("%w (limit %d bytes)", ErrTooLarge, r.max)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("peek: client did not name a host in time (%d bytes read): %w", len(r.buf), err)
	case isTimeout(err):
		return fmt.Errorf("peek: client did not name a host in time (%d bytes read): %w: %w", len(r.buf), os.ErrDeadlineExceeded, err)
	case err == io.EOF && len(r.buf) > 0:
		return fmt.Errorf("peek: client closed before naming a host (%d bytes read): %w", len(r.buf), io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("peek: reading (%d bytes read): %w", len(r.buf), err)
}

// isTimeout also catches deadline errors that do not wrap
// os.ErrDeadlineExceeded, such as gVisor's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// peekTLS lets crypto/tls parse the ClientHello, however it is split into
// reads and records, and aborts the handshake once it has been parsed.
func peekTLS(r *peekRecorder) (string, []string, error) {
	var sni string
	var alpn []string
	var got bool
	cfg := &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			sni, alpn, got = hello.ServerName, hello.SupportedProtos, true
			return nil, errPeekGotHello
		},
	}
	r.pos = 0 // the handshake reads from the first byte
	err := tls.Server(&peekTLSConn{r: r}, cfg).Handshake()
	if got {
		return strings.TrimSuffix(lowerASCII(sni), "."), alpn, nil
	}
	// Ran out of bytes (or time) before the ClientHello was complete?
	if r.err != nil && (errors.Is(err, r.err) || errors.Is(err, io.ErrUnexpectedEOF)) {
		return "", nil, r.readError(r.err)
	}
	if err == nil { // cannot happen: the config has no certificate
		err = errors.New("handshake finished without a ClientHello")
	}
	return "", nil, fmt.Errorf("%w: TLS: %w", ErrMalformed, err)
}

// peekTLSConn is the read-only connection the TLS handshake runs on.
type peekTLSConn struct{ r *peekRecorder }

func (c *peekTLSConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *peekTLSConn) Write(p []byte) (int, error)      { return 0, errPeekReadOnly }
func (c *peekTLSConn) Close() error                     { return nil }
func (c *peekTLSConn) LocalAddr() net.Addr              { return c.r.c.LocalAddr() }
func (c *peekTLSConn) RemoteAddr() net.Addr             { return c.r.c.RemoteAddr() }
func (c *peekTLSConn) SetDeadline(time.Time) error      { return nil }
func (c *peekTLSConn) SetReadDeadline(time.Time) error  { return nil }
func (c *peekTLSConn) SetWriteDeadline(time.Time) error { return nil }

// looksLikeHTTP reports whether the connection starts with an HTTP method
// token followed by a space, reading no further than needed to decide.
// A client that closes before that is not HTTP.
func looksLikeHTTP(r *peekRecorder) (bool, error) {
	for i := 0; ; {
		for ; i < len(r.buf); i++ {
			b := r.buf[i]
			if b == ' ' {
				return i > 0, nil
			}
			if !isTokenByte(b) || i >= maxMethodLen {
				return false, nil
			}
		}
		if err := r.fill(); err != nil {
			if err == io.EOF {
				return false, nil
			}
			return false, r.readError(err)
		}
	}
}

// isTokenByte reports whether b is an RFC 9110 tchar.
func isTokenByte(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// peekHTTP reads the request head and returns its host. If the first
// line turns out not to be an HTTP/1.x request line, it is not HTTP.
func peekHTTP(r *peekRecorder) (host string, isHTTP bool, err error) {
	scan, lineScan := 0, 0
	lineChecked := false
	for {
		if !lineChecked {
			if i := bytes.IndexByte(r.buf[lineScan:], '\n'); i >= 0 {
				line := bytes.TrimSuffix(r.buf[:lineScan+i], []byte("\r"))
				if !isRequestLine(string(line)) {
					return "", false, nil
				}
				lineChecked = true
			} else {
				lineScan = len(r.buf)
			}
		}
		if lineChecked {
			end, next := headEnd(r.buf, scan)
			if end > 0 {
				host, err := parseHTTPHead(r.buf[:end])
				return host, true, err
			}
			scan = next
		}
		if err := r.fill(); err != nil {
			if err == io.EOF && !lineChecked {
				// Closed before a whole request line: not HTTP, just short.
				return "", false, nil
			}
			return "", true, r.readError(err)
		}
	}
}

// isRequestLine reports whether line looks like "METHOD target HTTP/1.1".
func isRequestLine(line string) bool {
	method, rest, ok := strings.Cut(line, " ")
	if !ok || method == "" {
		return false
	}
	i := strings.LastIndexByte(rest, ' ')
	if i <= 0 {
		return false
	}
	v := rest[i+1:]
	return len(v) == 8 && strings.HasPrefix(v, "HTTP/") &&
		v[5] >= '0' && v[5] <= '9' && v[6] == '.' && v[7] >= '0' && v[7] <= '9'
}

// headEnd finds the blank line ending an HTTP request head in b, looking
// from from. It returns the length of the head, or 0 and where to look
// once more bytes have arrived. Bare LF line ends are accepted.
func headEnd(b []byte, from int) (end, next int) {
	for i := from; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		switch {
		case i+1 >= len(b):
			return 0, i
		case b[i+1] == '\n':
			return i + 2, 0
		case b[i+1] != '\r':
			continue
		case i+2 >= len(b):
			return 0, i
		case b[i+2] == '\n':
			return i + 3, 0
		}
	}
	return 0, len(b)
}

// parseHTTPHead returns the host an HTTP/1.x request head names.
func parseHTTPHead(head []byte) (string, error) {
	lines := strings.Split(string(head), "\n")
	reqLine := strings.TrimSuffix(lines[0], "\r")
	method, rest, ok := strings.Cut(reqLine, " ")
	if !ok || method == "" {
		return "", fmt.Errorf("%w: HTTP: bad request line %.80q", ErrMalformed, reqLine)
	}
	target, _, _ := strings.Cut(rest, " ")

	var host string
	var hosts int
	prevHost := false
	for _, line := range lines[1:] {
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' { // obsolete line folding
			if prevHost {
				return "", fmt.Errorf("%w: HTTP: folded Host header", ErrMalformed)
			}
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		prevHost = ok && strings.EqualFold(name, "host")
		if prevHost {
			hosts++
			host = value
		}
	}
	if hosts > 1 {
		return "", fmt.Errorf("%w: HTTP: %d Host headers", ErrMalformed, hosts)
	}
	// RFC 9112, section 3.2.2: an absolute-form target overrides Host.
	if authority, ok := absoluteAuthority(target); ok {
		host = authority
	}
	h, err := normalizeHTTPHost(host)
	if err != nil {
		return "", fmt.Errorf("%w: HTTP: %w", ErrMalformed, err)
	}
	return h, nil
}

// absoluteAuthority returns the host[:port] of an absolute-form request
// target such as "http://user@example.com:8080/path".
func absoluteAuthority(target string) (string, bool) {
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok || !(strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")) {
		return "", false
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = rest[i+1:]
	}
	return rest, rest != ""
}

// normalizeHTTPHost turns a Host header value into a lowercase host name
// or IP address without port, brackets or trailing dot.
func normalizeHTTPHost(v string) (string, error) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return "", nil
	}
	var host, port string
	hasPort := false
	if v[0] == '[' {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return "", fmt.Errorf("host %.80q has no closing bracket", v)
		}
		host = v[1:end]
		if rest := v[end+1:]; rest != "" {
			if rest[0] != ':' {
				return "", fmt.Errorf("host %.80q has junk after the bracket", v)
			}
			port, hasPort = rest[1:], true
		}
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() {
			return "", fmt.Errorf("host %.80q is not an IPv6 literal", v)
		}
	} else {
		host = v
		if i := strings.LastIndexByte(v, ':'); i >= 0 {
			host, port, hasPort = v[:i], v[i+1:], true
		}
		if strings.IndexByte(host, ':') >= 0 {
			return "", fmt.Errorf("host %.80q is an IPv6 literal without brackets", v)
		}
		for i := 0; i < len(host); i++ {
			if b := host[i]; b <= ' ' || b == 0x7f || strings.IndexByte("/?#@[]\\\"<>{}|^`", b) >= 0 {
				return "", fmt.Errorf("host %.80q holds a forbidden byte", v)
			}
		}
	}
	if hasPort {
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return "", fmt.Errorf("host %.80q has a bad port", v)
			}
		}
	}
	return strings.TrimSuffix(lowerASCII(host), "."), nil
}

// lowerASCII lowercases ASCII letters only, leaving other bytes alone.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// replayConn reads the bytes consumed by a peek, then from the connection.
type replayConn struct {
	net.Conn
	mu      sync.Mutex
	pending []byte
	peeked  int      // how many bytes the peek read
	alpn    []string // the ClientHello's ALPN protocols, if it was TLS
}

// ALPN is the list of application protocols (ALPN) offered by the TLS
// ClientHello that Hostname peeked at on the connection it returned as
// replay; nil for any other connection.
func ALPN(replay net.Conn) []string {
	if c, ok := replay.(*replayConn); ok {
		return c.alpn
	}
	return nil
}

// Peeked is a copy of the bytes Hostname read from the connection it
// returned as replay, before any of them has been read back; nil for any
// other connection, or once reading has begun.
func Peeked(replay net.Conn) []byte {
	c, ok := replay.(*replayConn)
	if !ok {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) != c.peeked {
		return nil
	}
	return bytes.Clone(c.pending)
}

func (c *replayConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// Raw is the connection under the replayed bytes, so that a half-close
// (CloseWrite) reaches it through this wrapper, as through go-proxyproto's.
func (c *replayConn) Raw() net.Conn { return c.Conn }

// Rewrap moves the bytes not yet replayed to a new replay over inner, the
// same connection in another wrapper (a forwarder reading the socket with
// raw syscalls), and returns it; c is left with none, so the bytes are
// read once, from the new one.
func (c *replayConn) Rewrap(inner net.Conn) net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := &replayConn{Conn: inner, pending: c.pending, peeked: c.peeked, alpn: c.alpn}
	c.pending = nil
	return n
}
