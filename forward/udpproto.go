package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The UDP link protocol between server and client, spoken only inside the
// tunnel, as datagrams on the tunnel stack's UDP: no stream, so a lost
// datagram delays nothing else.
//
// Each server UDP listener has its own socket in the tunnel. Every datagram
// a public user sends becomes one data frame to the client's
// UDPConnectorPort, and every frame is self-describing: a compact header
// names the session (an ID the server picks), the service, the user's
// address, the session's idle time and PROXY mode (and, with PROXY, the
// public address the user sent to). A client that has never seen the
// session, because the first datagram was lost, it restarted, or the
// session failed over to it, sets it up from whichever frame arrives
// first; there is no setup exchange to lose. The client answers with short
// frames naming only the session ID: the backend's replies, a refusal
// (unknown service, unreachable backend, too many sessions) or a notice
// that a reply was too large for the tunnel. The server tells the client
// when a session ends; if that notice is lost, the client's own idle timer
// ends it a little later.
//
// Data frame (server -> client):
//
//	0      version 1 << 4 | frameData
//	1      flags: bit 0 source is IPv6, bit 1 destination present, bit 2
//	       destination is IPv6, bits 4-5 PROXY mode (udpProxyMode)
//	2-5    session ID
//	6-7    idle seconds
//	8      service name length N (1-255)
//	9..    service name, source IP (4 or 16 bytes) and port, destination
//	       IP and port if present, then the user's payload
//
// With an IPv4 user and no PROXY the header is 15+N bytes (18 for a
// service named "dns"); with PROXY 21+N; with an IPv6 user up to 45+N.
//
// Reply, close, refused and too-big frames: 0: version << 4 | type, 1-4:
// session ID, then the payload (reply) or one reason byte (refused).
const (
	// UDPConnectorPort is where each client takes the UDP frames.
	UDPConnectorPort = 4002

	udpFrameVersion = 1

	frameData    = 1 // server -> client: a user's datagram
	frameReply   = 2 // client -> server: the backend's datagram for the user
	frameClose   = 3 // server -> client: the session ended
	frameRefused = 4 // client -> server: the session cannot be served; reason byte follows
	frameTooBig  = 5 // client -> server: a backend datagram too large for the tunnel was dropped

	flagSrc6    = 1 << 0
	flagDst     = 1 << 1
	flagDst6    = 1 << 2
	flagProxyLo = 4

	udpDataFixed = 9 // data header bytes before the service name
	udpShortLen  = 5 // reply/close/too-big header
	// udpMaxDataHeader bounds a data frame's header: the room kept in front
	// of each datagram read, so the header is written without a copy.
	udpMaxDataHeader = udpDataFixed + MaxServiceNameLen + 2*18

	// udpMaxFrame is the largest UDP payload inside the tunnel: the IPv6
	// payload length is 16 bits and covers the 8-byte UDP header. Larger
	// than the tunnel MTU, a frame is fragmented by the tunnel's stack and
	// reassembled by the other's.
	udpMaxFrame = 1<<16 - 1 - 8
	// udpMaxPayload4 and udpMaxPayload6 are the largest UDP payloads over
	// IPv4 and IPv6 on the public side.
	udpMaxPayload4 = 1<<16 - 1 - 20 - 8
	udpMaxPayload6 = 1<<16 - 1 - 8
)

// Refusal reasons in a frameRefused.
const (
	udpRefuseUnknownService     = 1
	udpRefuseBackendUnreachable = 2
	udpRefuseSessionCap         = 3
	udpRefuseRefused            = 4 // by the client's PROXY policy
)

// udpProxyMode is what PROXY header the client puts in front of a session's
// datagrams to the backend.
type udpProxyMode uint8

const (
	udpProxyNone  udpProxyMode = iota
	udpProxyEvery              // a PROXY v2 header on every datagram
	udpProxyFirst              // a PROXY v2 header on the session's first datagram only
)

// udpSession is what a data frame says about its session.
type udpSession struct {
	id      uint32
	idle    time.Duration
	service []byte // aliases the frame
	src     netip.AddrPort
	dst     netip.AddrPort // with PROXY only
	proxy   udpProxyMode
}

var errFrame = errors.New("malformed UDP frame")

// appendAddrPort appends an address (4 or 16 bytes) and port.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	if a.Is4() {
		v := a.As4()
		b = append(b, v[:]...)
	} else {
		v := a.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// dataHeader is the data frame header of a session; the server builds it
// once per session and writes it in front of each datagram.
func dataHeader(s udpSession) ([]byte, error) {
	if len(s.service) == 0 || len(s.service) > MaxServiceNameLen {
		return nil, fmt.Errorf("service name must be 1-%d bytes", MaxServiceNameLen)
	}
	if !s.src.IsValid() || (s.proxy != udpProxyNone && !s.dst.IsValid()) {
		return nil, errors.New("UDP session needs valid addresses")
	}
	secs := min(max(int(s.idle/time.Second), 1), 1<<16-1)
	flags := byte(s.proxy) << flagProxyLo
	if !s.src.Addr().Unmap().Is4() {
		flags |= flagSrc6
	}
	if s.proxy != udpProxyNone {
		flags |= flagDst
		if !s.dst.Addr().Unmap().Is4() {
			flags |= flagDst6
		}
	}
	b := make([]byte, 0, udpDataFixed+len(s.service)+36)
	b = append(b, udpFrameVersion<<4|frameData, flags)
	b = binary.BigEndian.AppendUint32(b, s.id)
	b = binary.BigEndian.AppendUint16(b, uint16(secs))
	b = append(b, byte(len(s.service)))
	b = append(b, s.service...)
	b = appendAddrPort(b, s.src)
	if s.proxy != udpProxyNone {
		b = appendAddrPort(b, s.dst)
	}
	return b, nil
}

// frameType reports a frame's type, or 0 for a frame of another version.
func frameType(b []byte) byte {
	if len(b) == 0 || b[0]>>4 != udpFrameVersion {
		return 0
	}
	return b[0] & 0x0f
}

func readAddrPort(b []byte, v6 bool) (netip.AddrPort, []byte, bool) {
	n := 4
	if v6 {
		n = 16
	}
	if len(b) < n+2 {
		return netip.AddrPort{}, nil, false
	}
	var a netip.Addr
	if v6 {
		a = netip.AddrFrom16([16]byte(b[:16]))
	} else {
		a = netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:])), b[n+2:], true
}

// parseData reads a data frame; the session's service and the payload
// alias b.
func parseData(b []byte) (udpSession, []byte, error) {
	if frameType(b) != frameData || len(b) < udpDataFixed {
		return udpSession{}, nil, errFrame
	}
	flags := b[1]
	s := udpSession{
		id:    binary.BigEndian.Uint32(b[2:]),
		idle:  time.Duration(binary.BigEndian.Uint16(b[6:])) * time.Second,
		proxy: udpProxyMode(flags >> flagProxyLo & 3),
	}
	n := int(b[8])
	rest := b[udpDataFixed:]
	if n == 0 || len(rest) < n || s.proxy > udpProxyFirst || s.idle == 0 {
		return udpSession{}, nil, errFrame
	}
	s.service, rest = rest[:n], rest[n:]
	var ok bool
	if s.src, rest, ok = readAddrPort(rest, flags&flagSrc6 != 0); !ok {
		return udpSession{}, nil, errFrame
	}
	if flags&flagDst != 0 {
		if s.dst, rest, ok = readAddrPort(rest, flags&flagDst6 != 0); !ok {
			return udpSession{}, nil, errFrame
		}
	}
	if s.proxy != udpProxyNone && !s.dst.IsValid() {
		return udpSession{}, nil, errFrame
	}
	return s, rest, nil
}

// putShort writes a reply, close or too-big header into b[:udpShortLen].
func putShort(b []byte, typ byte, id uint32) {
	b[0] = udpFrameVersion<<4 | typ
	binary.BigEndian.PutUint32(b[1:], id)
}

// parseShort reads a reply, close, refused or too-big frame: its type,
// session ID and what follows.
func parseShort(b []byte) (typ byte, id uint32, rest []byte, err error) {
	typ = frameType(b)
	if typ < frameReply || typ > frameTooBig || len(b) < udpShortLen {
		return 0, 0, nil, errFrame
	}
	return typ, binary.BigEndian.Uint32(b[1:]), b[udpShortLen:], nil
}

func refusedFrame(id uint32, reason byte) []byte {
	b := make([]byte, udpShortLen+1)
	putShort(b, frameRefused, id)
	b[udpShortLen] = reason
	return b
}

func shortFrame(typ byte, id uint32) []byte {
	b := make([]byte, udpShortLen)
	putShort(b, typ, id)
	return b
}
