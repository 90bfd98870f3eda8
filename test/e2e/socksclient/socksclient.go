// Package socksclient is a minimal SOCKS5 CONNECT client for tests: it
// reports the server's reply code, which general-purpose clients hide.
package socksclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// ReplyError is a SOCKS5 reply other than success.
type ReplyError struct{ Code byte }

func (e *ReplyError) Error() string { return fmt.Sprintf("SOCKS5 reply %#02x", e.Code) }

// Dial connects to target ("host:port"; host may be a name, resolved by
// the proxy) through the SOCKS5 proxy at proxyAddr.
func Dial(proxyAddr, target string, timeout time.Duration) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("bad port in %q", target)
	}
	c, err := net.DialTimeout("tcp", proxyAddr, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	fail := func(err error) (net.Conn, error) { c.Close(); return nil, err }
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return fail(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		return fail(fmt.Errorf("method reply: %w", err))
	}
	if m != [2]byte{5, 0} {
		return fail(fmt.Errorf("method reply %v", m))
	}
	req := []byte{5, 1, 0}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() {
			req = append(req, 1)
			b := a.As4()
			req = append(req, b[:]...)
		} else {
			req = append(req, 4)
			b := a.As16()
			req = append(req, b[:]...)
		}
	} else {
		if len(host) > 255 {
			return fail(errors.New("host name too long"))
		}
		req = append(req, 3, byte(len(host)))
		req = append(req, host...)
	}
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	if _, err := c.Write(req); err != nil {
		return fail(err)
	}
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return fail(fmt.Errorf("reply: %w", err))
	}
	if h[0] != 5 {
		return fail(fmt.Errorf("reply version %d", h[0]))
	}
	if h[1] != 0 {
		return fail(&ReplyError{Code: h[1]})
	}
	skip := 0
	switch h[3] {
	case 1:
		skip = 4 + 2
	case 4:
		skip = 16 + 2
	case 3:
		var l [1]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return fail(err)
		}
		skip = int(l[0]) + 2
	default:
		return fail(fmt.Errorf("reply address type %d", h[3]))
	}
	if _, err := io.ReadFull(c, make([]byte, skip)); err != nil {
		return fail(err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
