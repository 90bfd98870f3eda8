// Copyright 2026 The threshold Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package parse

// Not upstream gVisor: threshold's test of parse_ipv6.go.

import (
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// testIPv6 is an IPv6 packet: ext (extension headers, their first byte
// naming next) then a transport header and payload of transportLen
// bytes, then trailer bytes beyond the payload length.
func testIPv6(next tcpip.TransportProtocolNumber, ext []byte, transportLen, trailer int) *stack.PacketBuffer {
	ip := make([]byte, header.IPv6MinimumSize)
	header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(len(ext) + transportLen), TransportProtocol: next, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 1}), DstAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 2})})
	b := append(append(ip, ext...), make([]byte, transportLen+trailer)...)
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
}

// The fast path for TCP and UDP straight after the fixed header must leave
// the packet as the extension-header walk does: the fixed header as the
// network header, the data capped at the payload length.
func TestIPv6TransportOnly(t *testing.T) {
	destOpts := func(next tcpip.TransportProtocolNumber) []byte { return []byte{uint8(next), 0, 1, 4, 0, 0, 0, 0} }
	for _, tc := range []struct {
		name      string
		next      tcpip.TransportProtocolNumber
		ext       []byte
		wantProto tcpip.TransportProtocolNumber
	}{
		{"tcp", header.TCPProtocolNumber, nil, header.TCPProtocolNumber},
		{"udp", header.UDPProtocolNumber, nil, header.UDPProtocolNumber},
		{"icmp", header.ICMPv6ProtocolNumber, nil, header.ICMPv6ProtocolNumber},
		{"tcp behind destination options", tcpip.TransportProtocolNumber(header.IPv6DestinationOptionsExtHdrIdentifier), destOpts(header.TCPProtocolNumber), header.TCPProtocolNumber},
		{"udp behind destination options", tcpip.TransportProtocolNumber(header.IPv6DestinationOptionsExtHdrIdentifier), destOpts(header.UDPProtocolNumber), header.UDPProtocolNumber},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const transportLen, trailer = 60, 7
			pkt := testIPv6(tc.next, tc.ext, transportLen, trailer)
			defer pkt.DecRef()
			proto, fragID, fragOffset, fragMore, ok := IPv6(pkt)
			if !ok || proto != tc.wantProto || fragID != 0 || fragOffset != 0 || fragMore {
				t.Fatalf("IPv6 = %d, %d, %d, %v, %v; want %d, not a fragment, true", proto, fragID, fragOffset, fragMore, ok, tc.wantProto)
			}
			if got, want := len(pkt.NetworkHeader().Slice()), header.IPv6MinimumSize+len(tc.ext); got != want {
				t.Errorf("network header %d bytes, want %d", got, want)
			}
			// Upstream caps the data after the extension headers at the
			// payload length, which counts them: with extension headers
			// the trailer stays (an upstream quirk, kept).
			want := min(transportLen+trailer, len(tc.ext)+transportLen)
			if got := pkt.Data().Size(); got != want {
				t.Errorf("data %d bytes, want %d", got, want)
			}
			if pkt.NetworkProtocolNumber != header.IPv6ProtocolNumber {
				t.Errorf("network protocol %d, want IPv6", pkt.NetworkProtocolNumber)
			}
		})
	}
}
