package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// The link protocol between server and client, spoken only inside the
// tunnel.
//
// Each public connection: the server opens a TCP connection to the client's
// ConnectorPort and writes a PROXY v2 header carrying the public
// connection's addresses, plus two custom TLVs (types 0xE0-0xEF are reserved
// for applications): the service the client should connect to, and which
// PROXY version, if any, the client's backend wants. The client answers with
// one status byte, then the stream is raw bytes both ways. The server does
// not wait for the status before sending: it only gates the reply path.
//
// Liveness: each client sends a heartbeat Ping to the server's
// HeartbeatPort every second; the server echoes it with its instance (a
// random number it picks at start) in the last four bytes, so a client
// learns that the server restarted, and with it every tunneled connection
// it holds for the server is dead, however short the restart was. (An
// older server echoes the ping unchanged: instance 0, nothing learned.)
//
// SOCKS5 egress: the client relays its local SOCKS5 port to the server's
// SocksPort.
const (
	ConnectorPort = 4000 // on each client: tunneled public connections
	HeartbeatPort = 4001 // on the server: UDP echo the clients ping
	SocksPort     = 1080 // on the server: SOCKS5 egress

	tlvService      proxyproto.PP2Type = 0xE0
	tlvBackendProxy proxyproto.PP2Type = 0xE1
	tlvCheck        proxyproto.PP2Type = 0xE2 // a reachability check: check.go

	// MaxServiceNameLen bounds a service name, so a header stays small.
	MaxServiceNameLen = 255
)

// A heartbeat Ping is PingLen bytes: a magic, a sequence number, padding.
const PingLen = 16

var pingMagic = [4]byte{'t', 'h', 'b', '1'}

// Ping returns heartbeat number seq.
func Ping(seq uint64) []byte {
	b := make([]byte, PingLen)
	copy(b, pingMagic[:])
	binary.BigEndian.PutUint64(b[4:], seq)
	return b
}

// IsPing reports whether b is a heartbeat.
func IsPing(b []byte) bool { return len(b) == PingLen && [4]byte(b[:4]) == pingMagic }

// SetPingInstance writes the server's instance into a heartbeat echo.
func SetPingInstance(b []byte, instance uint32) { binary.BigEndian.PutUint32(b[12:], instance) }

// PingInstance is the server instance a heartbeat echo carries; 0 for
// none.
func PingInstance(b []byte) uint32 { return binary.BigEndian.Uint32(b[12:]) }

// Request is what the server tells the client about one connection.
type Request struct {
	Service string
	// Source is the public user's address, Destination the public address
	// they connected to.
	Source, Destination netip.AddrPort
	// BackendProxyProtocol is 0 for none, 1 or 2 for a PROXY header of that
	// version in front of the stream to the backend.
	BackendProxyProtocol int
	// Check, if set, makes the request a reachability check, which the
	// client answers itself (check.go).
	Check *CheckRequest
}

// Status is the client's one-byte answer to a Request.
type Status byte

const (
	StatusOK Status = iota
	StatusUnknownService
	StatusBackendUnreachable
	StatusBadRequest
	StatusRefused // by the client's PROXY policy
)

var (
	// ErrUnknownService: the client has no service of that name.
	ErrUnknownService = errors.New("client has no such service")
	// ErrBackendUnreachable: the client could not connect to its service.
	ErrBackendUnreachable = errors.New("client could not reach its service")
	// ErrBadRequest: the client could not read the request.
	ErrBadRequest = errors.New("client rejected the request")
)

// Err maps a status to the error it stands for; nil for StatusOK.
func (s Status) Err() error {
	switch s {
	case StatusOK:
		return nil
	case StatusUnknownService:
		return ErrUnknownService
	case StatusBackendUnreachable:
		return ErrBackendUnreachable
	case StatusBadRequest:
		return ErrBadRequest
	case StatusRefused:
		return ErrRefused
	}
	return fmt.Errorf("%w: unknown status %d", ErrBadRequest, s)
}

func statusFor(err error) Status {
	switch {
	case errors.Is(err, ErrUnknownService):
		return StatusUnknownService
	case errors.Is(err, ErrBackendUnreachable):
		return StatusBackendUnreachable
	case errors.Is(err, ErrRefused):
		return StatusRefused
	}
	return StatusBadRequest
}

// addrPair puts both ends in one family, as a PROXY header requires:
// IPv4-mapped IPv6 addresses (from a dual-stack listener) are unmapped, and
// an IPv4 destination with an IPv6 source is mapped.
func addrPair(src, dst netip.AddrPort) (net.Addr, net.Addr) {
	s := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	d := netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if s.Addr().Is4() != d.Addr().Is4() {
		s = netip.AddrPortFrom(netip.AddrFrom16(s.Addr().As16()), s.Port())
		d = netip.AddrPortFrom(netip.AddrFrom16(d.Addr().As16()), d.Port())
	}
	return net.TCPAddrFromAddrPort(s), net.TCPAddrFromAddrPort(d)
}

// WriteRequest writes the request header.
func WriteRequest(w io.Writer, r Request) error {
	if r.Service == "" || len(r.Service) > MaxServiceNameLen {
		return fmt.Errorf("service name must be 1-%d bytes", MaxServiceNameLen)
	}
	if r.BackendProxyProtocol < 0 || r.BackendProxyProtocol > 2 {
		return fmt.Errorf("backend PROXY version %d is not 0, 1 or 2", r.BackendProxyProtocol)
	}
	if !r.Source.IsValid() || !r.Destination.IsValid() {
		return errors.New("request needs valid source and destination addresses")
	}
	src, dst := addrPair(r.Source, r.Destination)
	h := proxyproto.HeaderProxyFromAddrs(2, src, dst)
	tlvs := []proxyproto.TLV{
		{Type: tlvService, Value: []byte(r.Service)},
		{Type: tlvBackendProxy, Value: []byte{byte(r.BackendProxyProtocol)}},
	}
	if r.Check != nil {
		tlvs = r.Check.tlvs(tlvs)
	}
	if err := h.SetTLVs(tlvs); err != nil {
		return fmt.Errorf("encoding request: %w", err)
	}
	if _, err := h.WriteTo(w); err != nil {
		return fmt.Errorf("writing request: %w", err)
	}
	return nil
}

// ReadRequest wraps c, reads the request header within timeout, and returns
// the wrapper to read the stream through (it may hold bytes read ahead).
func ReadRequest(c net.Conn, timeout time.Duration) (*proxyproto.Conn, Request, error) {
	pc := proxyproto.NewConn(c,
		proxyproto.WithPolicy(proxyproto.REQUIRE),
		proxyproto.SetReadHeaderTimeout(timeout))
	h := pc.ProxyHeader()
	if h == nil {
		// Read surfaces the reason the header was refused.
		_, err := pc.Read(nil)
		if err == nil {
			err = errors.New("no PROXY header")
		}
		return pc, Request{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	r, err := parseRequest(h)
	if err != nil {
		return pc, Request{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return pc, r, nil
}

func parseRequest(h *proxyproto.Header) (Request, error) {
	if h.Version != 2 {
		return Request{}, fmt.Errorf("PROXY version %d, want 2", h.Version)
	}
	// A LOCAL header carries no connection; addresses it may hold anyway
	// mean nothing. Only PROXY over TCP is a request.
	if h.Command != proxyproto.PROXY {
		return Request{}, fmt.Errorf("PROXY command %#x, want PROXY", byte(h.Command))
	}
	if h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6 {
		return Request{}, fmt.Errorf("PROXY transport %#x, want TCP", byte(h.TransportProtocol))
	}
	src, dst, ok := h.TCPAddrs()
	if !ok {
		return Request{}, errors.New("PROXY header is not TCP")
	}
	tlvs, err := h.TLVs()
	if err != nil {
		return Request{}, fmt.Errorf("PROXY TLVs: %w", err)
	}
	r := Request{Source: src.AddrPort(), Destination: dst.AddrPort(), BackendProxyProtocol: -1}
	for _, t := range tlvs {
		switch t.Type {
		case tlvService:
			r.Service = string(t.Value)
		case tlvBackendProxy:
			if len(t.Value) == 1 {
				r.BackendProxyProtocol = int(t.Value[0])
			}
		case tlvCheck:
			if r.Check, err = parseCheck(t.Value); err != nil {
				return Request{}, err
			}
		}
	}
	if r.Service == "" {
		return Request{}, errors.New("request names no service")
	}
	if err := r.checkMarked(); err != nil {
		return Request{}, err
	}
	if r.BackendProxyProtocol < 0 || r.BackendProxyProtocol > 2 {
		return Request{}, errors.New("request has no valid backend PROXY version")
	}
	return r, nil
}

// writeBackendHeader writes the PROXY header the backend asked for.
func writeBackendHeader(w io.Writer, r Request) error {
	if r.BackendProxyProtocol == 0 {
		return nil
	}
	src, dst := addrPair(r.Source, r.Destination)
	h := proxyproto.HeaderProxyFromAddrs(byte(r.BackendProxyProtocol), src, dst)
	if _, err := h.WriteTo(w); err != nil {
		return fmt.Errorf("writing PROXY v%d header to backend: %w", r.BackendProxyProtocol, err)
	}
	return nil
}

// statusConn is the server's end of a tunneled connection: its first Read
// consumes the client's status byte and fails if the client refused.
type statusConn struct {
	net.Conn
	checked bool
}

func (c *statusConn) Read(b []byte) (int, error) {
	if !c.checked {
		var s [1]byte
		if _, err := io.ReadFull(c.Conn, s[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: closed before answering", ErrBadRequest)
			}
			return 0, err
		}
		if err := Status(s[0]).Err(); err != nil {
			return 0, err
		}
		c.checked = true
	}
	return c.Conn.Read(b)
}

func (c *statusConn) CloseWrite() error { return closeWrite(c.Conn) }

// NetConn is the wrapped connection, for Join's readiness waits (reads
// still go through the wrapper).
func (c *statusConn) NetConn() net.Conn { return c.Conn }
