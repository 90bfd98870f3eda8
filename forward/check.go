package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Reachability checks in the link protocol.
//
// A check is a Request with a tlvCheck TLV (a token and the tunnel's
// protocol) and, in its backend-PROXY TLV, checkMarker instead of 0, 1 or
// 2: a client that knows no checks refuses that as a bad request before
// it dials anything, so a check can never become a connection to a
// backend, whatever the client's version.
//
// A client that knows the service answers StatusCheck and the token at
// once, without touching the service: that round trip is the tunnel's.
// Then it tries the service once (a TCP connect, closed at once without a
// byte; for UDP, an empty datagram, and whether an ICMP error comes back)
// and answers a result code, how long the try took, and a short message.
// An unknown service is answered StatusUnknownService, as for any request.

// CheckTokenLen is the length of a check's token.
const CheckTokenLen = 16

// checkMarker stands in the backend-PROXY TLV of a check.
const checkMarker = 0xC0

// StatusCheck answers a check: the token and a result follow.
const StatusCheck Status = 0x20

// CheckRequest makes a Request a reachability check.
type CheckRequest struct {
	Token [CheckTokenLen]byte
	// UDP: the service is tried as a UDP service (an empty datagram, then
	// a short wait for an ICMP error) instead of with a TCP connect.
	UDP bool
	// Asked is the PROXY version (0 for none) the tunnel asks for its
	// users' connections, so that the client judges it by its own PROXY
	// choice as it would a user's: a check is not ok where every user
	// would be refused. AskedKnown is false for a check from a server
	// that does not say (it is then not judged).
	Asked      int
	AskedKnown bool
}

// tlvs marks the request's TLVs as a check's.
func (c *CheckRequest) tlvs(tlvs []proxyproto.TLV) []proxyproto.TLV {
	proto := byte('t')
	if c.UDP {
		proto = 'u'
	}
	for i := range tlvs {
		if tlvs[i].Type == tlvBackendProxy {
			tlvs[i].Value = []byte{checkMarker}
		}
	}
	v := append(c.Token[:], proto)
	if c.AskedKnown {
		v = append(v, byte(c.Asked))
	}
	return append(tlvs, proxyproto.TLV{Type: tlvCheck, Value: v})
}

// parseCheck reads a check TLV: the token, the protocol, and (from
// servers that send it) the PROXY version the tunnel asks for.
func parseCheck(v []byte) (*CheckRequest, error) {
	if (len(v) != CheckTokenLen+1 && len(v) != CheckTokenLen+2) || (v[CheckTokenLen] != 't' && v[CheckTokenLen] != 'u') {
		return nil, fmt.Errorf("malformed check TLV (%d bytes)", len(v))
	}
	c := &CheckRequest{UDP: v[CheckTokenLen] == 'u'}
	copy(c.Token[:], v)
	if len(v) == CheckTokenLen+2 {
		if c.Asked = int(v[CheckTokenLen+1]); c.Asked > 2 {
			return nil, fmt.Errorf("malformed check TLV: PROXY version %d", c.Asked)
		}
		c.AskedKnown = true
	}
	return c, nil
}

// checkMarked checks that a check carries the marker and a request that
// is no check does not, and clears the marker.
func (r *Request) checkMarked() error {
	switch {
	case r.Check != nil && r.BackendProxyProtocol != checkMarker:
		return errors.New("check request without the check marker")
	case r.Check == nil && r.BackendProxyProtocol == checkMarker:
		return errors.New("check marker without a check")
	case r.Check != nil:
		r.BackendProxyProtocol = 0
	}
	return nil
}

// BackendResult is how the client's try of a service went.
type BackendResult byte

const (
	BackendOK           BackendResult = iota // connected (TCP), or no ICMP error (UDP)
	BackendRefused                           // connection refused, or ICMP port unreachable
	BackendTimeout                           // no answer within the client's dial timeout
	BackendUnreachable                       // anything else: no route, a name that does not resolve
	BackendProxyRefused                      // not tried: the client's PROXY policy refuses the tunnel's connections
)

// checkUDPWait is how long a UDP try waits for an ICMP error.
const checkUDPWait = time.Second

// maxCheckMessage bounds the message of a check's result.
const maxCheckMessage = 200

// answerCheck answers a check for a known service: the token at once,
// then one try of the service.
func (c *Connector) answerCheck(conn net.Conn, req Request, addr string, log *slog.Logger) {
	_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.DialTimeout))
	if _, err := conn.Write(append([]byte{byte(StatusCheck)}, req.Check.Token[:]...)); err != nil {
		log.Info("check lost before it was answered", "err", err)
		return
	}
	start := time.Now()
	var res BackendResult
	var msg string
	err := c.checkProxyChoice(req)
	if err != nil {
		res, msg = BackendProxyRefused, err.Error()
	} else if res, err = c.tryService(addr, req.Check.UDP); err != nil {
		msg = tryMessage(res, err)
	}
	took := time.Since(start)
	if len(msg) > maxCheckMessage {
		msg = msg[:maxCheckMessage]
	}
	log.Info("reachability check answered", "backend", addr, "result", res.String(), "took", took.Round(time.Microsecond), "err", err)
	b := make([]byte, 0, 6+len(msg))
	b = append(b, byte(res))
	b = binary.BigEndian.AppendUint32(b, uint32(min(took.Microseconds(), 1<<32-1)))
	b = append(b, byte(len(msg)))
	b = append(b, msg...)
	_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.DialTimeout))
	_, _ = conn.Write(b)
}

// tryService connects to a service once and closes the connection at
// once, sending nothing; for UDP it sends one empty datagram.
func (c *Connector) tryService(addr string, udp bool) (BackendResult, error) {
	network := "tcp"
	if udp {
		network = "udp"
	}
	ctx, cancel := context.WithTimeout(c.life.ctx, c.cfg.DialTimeout)
	defer cancel()
	conn, err := c.cfg.Dial(ctx, network, addr)
	if err != nil {
		return classifyTry(err), err
	}
	defer conn.Close()
	if !udp {
		return BackendOK, nil
	}
	// An empty datagram: a service that listens ignores it; a port where
	// nothing listens makes the host answer ICMP port unreachable, which
	// a connected UDP socket reports on its next read.
	if _, err := conn.Write(nil); err != nil {
		return classifyTry(err), err
	}
	_ = conn.SetReadDeadline(time.Now().Add(checkUDPWait))
	if _, err := conn.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
		return classifyTry(err), err
	}
	return BackendOK, nil
}

// checkProxyChoice judges a check by the client's PROXY choice for its
// service, as a user's connection or UDP session of the tunnel would be.
// A check through the API has no user (its source is unspecified), so
// only the choice is judged; a probe from outside has a source, which is
// judged too.
func (c *Connector) checkProxyChoice(req Request) error {
	if !req.Check.AskedKnown {
		return nil
	}
	chosen, own := c.cfg.ServiceProxy[req.Service]
	if req.Check.UDP && own && chosen == 1 {
		return fmt.Errorf("%w: this service's backend gets PROXY v1 (ProxyProtocol 1), which has no datagram form; use 2", ErrRefused)
	}
	sources := c.cfg.Sources
	if a := req.Source.Addr(); !a.IsValid() || a.IsUnspecified() {
		sources = SourcePolicy{Allow: anySource}
	}
	_, err := backendProxy(chosen, own, req.Check.Asked, req.Source, sources)
	return err
}

// anySource allows every source: for checks that have none.
var anySource = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// tryMessage says how a try of a service failed without the service's
// address: the answer goes to the server, which is not to learn the
// client's local addresses (the client's own log has the whole error).
func tryMessage(res BackendResult, err error) string {
	var errno syscall.Errno
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns):
		if dns.IsNotFound {
			return "the service's host name does not resolve"
		}
		return "looking up the service's host name failed"
	case res == BackendTimeout:
		return "no answer in time"
	case errors.As(err, &errno):
		return errno.Error()
	}
	return "the service could not be reached"
}

func classifyTry(err error) BackendResult {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return BackendRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return BackendTimeout
	}
	return BackendUnreachable
}

func (r BackendResult) String() string {
	switch r {
	case BackendOK:
		return "ok"
	case BackendRefused:
		return "refused"
	case BackendTimeout:
		return "timeout"
	case BackendUnreachable:
		return "unreachable"
	case BackendProxyRefused:
		return "proxy_refused"
	}
	return fmt.Sprintf("BackendResult(%d)", byte(r))
}

// checkAnswer is what the server reads of a check's answer.
type checkAnswer struct {
	roundTrip time.Duration // request written to token read
	result    BackendResult
	took      time.Duration // the client's try of the service
	message   string
}

// readCheckAnswer reads a client's answer to a check with token, sent
// at sent, within deadline.
func readCheckAnswer(c net.Conn, token [CheckTokenLen]byte, sent time.Time, deadline time.Time) (checkAnswer, error) {
	var a checkAnswer
	_ = c.SetReadDeadline(deadline)
	var head [1 + CheckTokenLen]byte
	if _, err := io.ReadFull(c, head[:1]); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: closed before answering", ErrBadRequest)
		}
		return a, err
	}
	if s := Status(head[0]); s != StatusCheck {
		if err := s.Err(); err != nil {
			return a, err
		}
		return a, fmt.Errorf("%w: the client answered a check as a connection", ErrBadRequest)
	}
	if _, err := io.ReadFull(c, head[1:]); err != nil {
		return a, fmt.Errorf("%w: reading the token: %w", ErrBadRequest, err)
	}
	a.roundTrip = time.Since(sent)
	if [CheckTokenLen]byte(head[1:]) != token {
		return a, fmt.Errorf("%w: the client answered another token", ErrBadRequest)
	}
	var res [6]byte
	if _, err := io.ReadFull(c, res[:]); err != nil {
		return a, fmt.Errorf("%w: reading the result: %w", ErrBadRequest, err)
	}
	a.result = BackendResult(res[0])
	a.took = time.Duration(binary.BigEndian.Uint32(res[1:5])) * time.Microsecond
	msg := make([]byte, res[5])
	if _, err := io.ReadFull(c, msg); err != nil {
		return a, fmt.Errorf("%w: reading the result: %w", ErrBadRequest, err)
	}
	a.message = string(msg)
	return a, nil
}
