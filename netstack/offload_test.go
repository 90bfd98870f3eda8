package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoPacket builds a TCP packet of payloadLen bytes as gVisor hands a GSO
// packet to the link endpoint.
// With views > 1 the bytes are spread over up to that many views of
// uneven sizes, the first cutting through the TCP header, as in a packet
// built from several chunks.
func gsoPacket(t *testing.T, v6 bool, payloadLen, mss int, flags header.TCPFlags, views ...int) *stack.PacketBuffer {
	t.Helper()
	payload := make([]byte, payloadLen)
	for i := range payload {
		payload[i] = byte(i % 251)
	}
	tcp := make(header.TCP, header.TCPMinimumSize)
	tcp.Encode(&header.TCPFields{SrcPort: 1, DstPort: 2, SeqNum: 1000, AckNum: 7, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 100})
	var ip []byte
	gso := stack.GSO{MSS: uint16(mss), NeedsCsum: true}
	if v6 {
		ip = make([]byte, header.IPv6MinimumSize)
		header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(len(tcp) + payloadLen), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 1}), DstAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 2})})
		gso.Type, gso.L3HdrLen = stack.GSOTCPv6, header.IPv6MinimumSize
	} else {
		ip = make([]byte, header.IPv4MinimumSize)
		header.IPv4(ip).Encode(&header.IPv4Fields{TotalLength: uint16(header.IPv4MinimumSize + len(tcp) + payloadLen), ID: 40, TTL: 64,
			Protocol: uint8(header.TCPProtocolNumber), SrcAddr: tcpip.AddrFrom4([4]byte{192, 0, 2, 1}), DstAddr: tcpip.AddrFrom4([4]byte{192, 0, 2, 2})})
		gso.Type, gso.L3HdrLen = stack.GSOTCPv4, header.IPv4MinimumSize
	}
	all := append(append(ip, tcp...), payload...)
	var buf buffer.Buffer
	if len(views) == 0 || views[0] <= 1 {
		buf = buffer.MakeWithData(all)
	} else {
		cut := len(ip) + 7 // inside the TCP header
		for i := 0; len(all) > 0; i++ {
			n := min(cut, len(all))
			if i == views[0]-1 {
				n = len(all)
			}
			buf.Append(buffer.NewViewWithData(all[:n]))
			all = all[n:]
			cut = 333 + 517*i
		}
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	pkt.GSOOptions = gso
	return pkt
}

func TestSegmenter(t *testing.T) {
	for _, tc := range []struct {
		v6    bool
		views int
	}{{false, 1}, {true, 1}, {false, 6}, {true, 6}} {
		v6 := tc.v6
		const mss, payloadLen = 1000, 3500
		pkt := gsoPacket(t, v6, payloadLen, mss, header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin|header.TCPFlagCwr, tc.views)
		if got := len(pkt.AsSlices()); (got > 1) != (tc.views > 1) {
			t.Fatalf("test packet has %d views, want %d", got, tc.views)
		}
		var g segmenter
		if !g.load(pkt) {
			t.Fatal("load refused a valid GSO packet")
		}
		pkt.DecRef()
		var got []byte
		for i := 0; g.active; i++ {
			buf := make([]byte, 2000)
			n := g.emit(buf)
			seg := buf[:n]
			var ipLen int
			if v6 {
				ipLen = header.IPv6MinimumSize
				if int(header.IPv6(seg).PayloadLength()) != n-ipLen {
					t.Errorf("v6 segment %d: payload length %d, packet %d", i, header.IPv6(seg).PayloadLength(), n)
				}
			} else {
				ipLen = header.IPv4MinimumSize
				h := header.IPv4(seg)
				if int(h.TotalLength()) != n || !h.IsChecksumValid() || h.ID() != uint16(40+i) {
					t.Errorf("v4 segment %d: total length %d of %d, checksum ok %v, ID %d", i, h.TotalLength(), n, h.IsChecksumValid(), h.ID())
				}
			}
			tcp := header.TCP(seg[ipLen:])
			data := seg[ipLen+header.TCPMinimumSize:]
			if want := uint32(1000 + len(got)); tcp.SequenceNumber() != want {
				t.Errorf("segment %d: seq %d, want %d", i, tcp.SequenceNumber(), want)
			}
			last := len(got)+len(data) == payloadLen
			f := tcp.Flags()
			if (f&header.TCPFlagFin != 0) != last || (f&header.TCPFlagPsh != 0) != last || (f&header.TCPFlagCwr != 0) != (i == 0) || f&header.TCPFlagAck == 0 {
				t.Errorf("segment %d (last %v): flags %v", i, last, f)
			}
			if len(data) > mss {
				t.Errorf("segment %d carries %d bytes, MSS %d", i, len(data), mss)
			}
			got = append(got, data...)
			if i > 10 {
				t.Fatal("too many segments")
			}
		}
		want := make([]byte, payloadLen)
		for i := range want {
			want[i] = byte(i % 251)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("v6=%v, %d views: payload not reassembled intact (%d bytes)", v6, tc.views, len(got))
		}
	}
}

func TestSegmenterRefusesMalformed(t *testing.T) {
	for name, mod := range map[string]func(*stack.PacketBuffer){
		"zero MSS":         func(p *stack.PacketBuffer) { p.GSOOptions.MSS = 0 },
		"no GSO type":      func(p *stack.PacketBuffer) { p.GSOOptions.Type = stack.GSOGvisor },
		"header too large": func(p *stack.PacketBuffer) { p.GSOOptions.L3HdrLen = 5000 },
	} {
		pkt := gsoPacket(t, true, 3000, 1000, header.TCPFlagAck)
		mod(pkt)
		var g segmenter
		if g.load(pkt) || g.active {
			t.Errorf("%s: load accepted it", name)
		}
		pkt.DecRef()
	}
}
