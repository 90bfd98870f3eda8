package netstack

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// rawIPv6 builds an IPv6 packet from src to dst carrying transport
// (checksummed here), behind a Destination Options header if destOpts.
func rawIPv6(src, dst tcpip.Address, proto tcpip.TransportProtocolNumber, transport []byte, destOpts bool) []byte {
	switch proto {
	case header.TCPProtocolNumber:
		tcp := header.TCP(transport)
		tcp.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(proto, src, dst, uint16(len(transport)))
		tcp.SetChecksum(^checksum.Checksum(transport, xsum))
	case header.UDPProtocolNumber:
		udp := header.UDP(transport)
		udp.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(proto, src, dst, uint16(len(transport)))
		udp.SetChecksum(^checksum.Checksum(transport, xsum))
	}
	var ext []byte
	next := uint8(proto)
	if destOpts {
		// Next header, length 0 (8 bytes), PadN of 4 bytes of padding.
		ext = []byte{uint8(proto), 0, 1, 4, 0, 0, 0, 0}
		next = uint8(header.IPv6DestinationOptionsExtHdrIdentifier)
	}
	ip := make([]byte, header.IPv6MinimumSize)
	header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(len(ext) + len(transport)), TransportProtocol: tcpip.TransportProtocolNumber(next), HopLimit: 64, SrcAddr: src, DstAddr: dst})
	return append(append(ip, ext...), transport...)
}

// readPacket waits for the next packet s sends.
func readPacket(t *testing.T, s *Stack) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		if n, err := s.Read(bufs, sizes, 0); err == nil && n == 1 {
			got <- bufs[0][:sizes[0]]
		}
		close(got)
	}()
	select {
	case p := <-got:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("the stack sent nothing")
		return nil
	}
}

// The stack takes TCP and UDP with and without extension headers alike
// (gVisor copy: the IPv6 paths that skip the extension-header walk, in
// GRO, parsing and delivery; gvisor-changes/009): a SYN gets its SYN-ACK,
// a datagram to a closed port its ICMPv6 port unreachable, and each counts
// as delivered.
func TestIPv6TransportWithAndWithoutExtensionHeaders(t *testing.T) {
	s, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::2")}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, ln := listenAt(t, s, "[fd00::2]:80")
	defer ln.Close()
	local := tcpip.AddrFrom16(netip.MustParseAddr("fd00::2").As16())
	peer := tcpip.AddrFrom16(netip.MustParseAddr("fd00::1").As16())
	delivered := s.stack.Stats().IP.PacketsDelivered

	for _, destOpts := range []bool{false, true} {
		syn := make([]byte, header.TCPMinimumSize)
		header.TCP(syn).Encode(&header.TCPFields{SrcPort: 4000, DstPort: 80, SeqNum: 1000, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
		before := delivered.Value()
		if _, err := s.Write([][]byte{rawIPv6(peer, local, header.TCPProtocolNumber, syn, destOpts)}, 0); err != nil {
			t.Fatal(err)
		}
		p := readPacket(t, s)
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) || ip.TransportProtocol() != header.TCPProtocolNumber {
			t.Fatalf("extension header %v: reply is not TCP over IPv6: % x", destOpts, p)
		}
		tcp := header.TCP(ip.Payload())
		if tcp.Flags() != header.TCPFlagSyn|header.TCPFlagAck || tcp.AckNumber() != 1001 || tcp.DestinationPort() != 4000 {
			t.Fatalf("extension header %v: reply flags %v ack %d port %d, want a SYN-ACK for 1001 to 4000", destOpts, tcp.Flags(), tcp.AckNumber(), tcp.DestinationPort())
		}
		if d := delivered.Value() - before; d != 1 {
			t.Fatalf("extension header %v: %d packets counted delivered, want 1", destOpts, d)
		}
		// Reset the half-open connection, so the next SYN is new.
		rst := make([]byte, header.TCPMinimumSize)
		header.TCP(rst).Encode(&header.TCPFields{SrcPort: 4000, DstPort: 80, SeqNum: 1001, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagRst, WindowSize: 0})
		if _, err := s.Write([][]byte{rawIPv6(peer, local, header.TCPProtocolNumber, rst, destOpts)}, 0); err != nil {
			t.Fatal(err)
		}
	}

	for _, destOpts := range []bool{false, true} {
		udp := make([]byte, header.UDPMinimumSize+4)
		header.UDP(udp).Encode(&header.UDPFields{SrcPort: 5000, DstPort: 9, Length: uint16(len(udp))})
		copy(udp[header.UDPMinimumSize:], "ping")
		before := delivered.Value()
		if _, err := s.Write([][]byte{rawIPv6(peer, local, header.UDPProtocolNumber, udp, destOpts)}, 0); err != nil {
			t.Fatal(err)
		}
		p := readPacket(t, s)
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
			t.Fatalf("extension header %v: reply is not ICMPv6: % x", destOpts, p)
		}
		icmp := header.ICMPv6(ip.Payload())
		if icmp.Type() != header.ICMPv6DstUnreachable || icmp.Code() != header.ICMPv6PortUnreachable {
			t.Fatalf("extension header %v: ICMPv6 type %d code %d, want port unreachable", destOpts, icmp.Type(), icmp.Code())
		}
		if d := delivered.Value() - before; d != 1 {
			t.Fatalf("extension header %v: %d packets counted delivered, want 1", destOpts, d)
		}
	}
}
