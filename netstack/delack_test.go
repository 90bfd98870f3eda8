package netstack

import (
	"bytes"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// rawPeer plays the far end of one TCP connection to s with raw packets.
type rawPeer struct {
	t           *testing.T
	s           *Stack
	local, peer tcpip.Address
	port        uint16
	seq, ack    uint32
}

const rawPeerMSS = 1360 // 1420 - IPv6 - TCP

func (p *rawPeer) send(flags header.TCPFlags, payload []byte, opts []byte) {
	p.t.Helper()
	tcp := make([]byte, header.TCPMinimumSize+len(opts)+len(payload))
	header.TCP(tcp).Encode(&header.TCPFields{SrcPort: 4000, DstPort: p.port, SeqNum: p.seq, AckNum: p.ack,
		DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 65535})
	copy(tcp[header.TCPMinimumSize:], opts)
	copy(tcp[header.TCPMinimumSize+len(opts):], payload)
	if _, err := p.s.Write([][]byte{rawIPv6(p.peer, p.local, header.TCPProtocolNumber, tcp, false)}, 0); err != nil {
		p.t.Fatal(err)
	}
	p.seq += uint32(len(payload))
	if flags.Contains(header.TCPFlagSyn) {
		p.seq++
	}
}

// next reads the stack's next TCP segment to the peer.
func (p *rawPeer) next() header.TCP {
	p.t.Helper()
	pkt := readPacket(p.t, p.s)
	ip := header.IPv6(pkt)
	if !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		p.t.Fatalf("not TCP over IPv6: % x", pkt)
	}
	return header.TCP(ip.Payload())
}

// dialRaw opens a connection from a raw peer to s's listener on port and
// returns the peer and what the listener accepted.
func dialRaw(t *testing.T, s *Stack, port uint16) (*rawPeer, *TCPConn) {
	t.Helper()
	_, ln := listenAt(t, s, "[fd00::2]:"+strconv.Itoa(int(port)))
	t.Cleanup(func() { ln.Close() })
	p := &rawPeer{t: t, s: s, port: port, seq: 1000,
		local: tcpip.AddrFrom16(netip.MustParseAddr("fd00::2").As16()),
		peer:  tcpip.AddrFrom16(netip.MustParseAddr("fd00::1").As16())}
	mss := []byte{2, 4, byte(rawPeerMSS >> 8), byte(rawPeerMSS & 0xff)}
	p.send(header.TCPFlagSyn, nil, mss)
	synAck := p.next()
	if synAck.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("flags %v, want a SYN-ACK", synAck.Flags())
	}
	p.ack = synAck.SequenceNumber() + 1
	p.send(header.TCPFlagAck, nil, nil)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c.(*TCPConn)
}

// Less than a full segment of data is acknowledged by the reply that
// follows it, or failing a reply after DelayedACK, never before; a full
// segment at once.
func TestDelayedACK(t *testing.T) {
	const hold = maxDelayedACK
	// A stack each: a connection's close would be the next one's first
	// packet.
	newStack := func(t *testing.T) *Stack {
		s, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::2")}, DelayedACK: hold})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}

	t.Run("reply carries the ACK", func(t *testing.T) {
		p, c := dialRaw(t, newStack(t), 81)
		go func() {
			buf := make([]byte, 64)
			if n, err := c.Read(buf); err == nil {
				c.Write(buf[:n])
			}
		}()
		sent := time.Now()
		p.send(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte{'x'}, 64), nil)
		seg := p.next()
		if seg.AckNumber() != p.seq {
			t.Fatalf("ack %d, want %d", seg.AckNumber(), p.seq)
		}
		// A pure ACK first is right only once the hold is over (the reply
		// was late); before it, the ACK was not held.
		if len(seg.Payload()) == 0 && time.Since(sent) < hold {
			t.Fatalf("a pure ACK %v after 64 bytes, before the reply and the %v hold", time.Since(sent), hold)
		}
	})

	t.Run("no reply: ACK after the hold", func(t *testing.T) {
		p, _ := dialRaw(t, newStack(t), 82)
		sent := time.Now()
		p.send(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte{'y'}, 100), nil)
		seg := p.next()
		waited := time.Since(sent)
		if len(seg.Payload()) != 0 || seg.AckNumber() != p.seq {
			t.Fatalf("got %d bytes acking %d, want a pure ACK of %d", len(seg.Payload()), seg.AckNumber(), p.seq)
		}
		if waited < hold {
			t.Fatalf("ACK after %v, before the %v hold", waited, hold)
		}
	})

	t.Run("full segment: ACK at once", func(t *testing.T) {
		p, _ := dialRaw(t, newStack(t), 83)
		sent := time.Now()
		p.send(header.TCPFlagAck|header.TCPFlagPsh, bytes.Repeat([]byte{'z'}, rawPeerMSS), nil)
		seg := p.next()
		waited := time.Since(sent)
		if len(seg.Payload()) != 0 || seg.AckNumber() != p.seq {
			t.Fatalf("got %d bytes acking %d, want a pure ACK of %d", len(seg.Payload()), seg.AckNumber(), p.seq)
		}
		if waited >= hold {
			t.Fatalf("a full segment's ACK came after %v: held like a short one (%v)", waited, hold)
		}
	})
}

// A stack with DelayedACK negative acknowledges short data at once, as
// gVisor does; DelayedACK over the bound is refused.
func TestDelayedACKOff(t *testing.T) {
	if _, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::2")}, DelayedACK: maxDelayedACK + 1}); err == nil {
		t.Fatal("DelayedACK over the bound accepted")
	}
	s, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::2")}, DelayedACK: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, _ := dialRaw(t, s, 84)
	p.send(header.TCPFlagAck|header.TCPFlagPsh, []byte("short"), nil)
	if seg := p.next(); len(seg.Payload()) != 0 || seg.AckNumber() != p.seq {
		t.Fatalf("got %d bytes acking %d, want a pure ACK of %d", len(seg.Payload()), seg.AckNumber(), p.seq)
	}
}
