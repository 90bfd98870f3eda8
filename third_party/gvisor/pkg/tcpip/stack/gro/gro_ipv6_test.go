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

package gro

// Not upstream gVisor: threshold's test of gro_ipv6.go.

import (
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestIPv6TransportOffset(t *testing.T) {
	dstOpts := tcpip.TransportProtocolNumber(header.IPv6DestinationOptionsExtHdrIdentifier)
	for _, tc := range []struct {
		name      string
		next      tcpip.TransportProtocolNumber
		ext       []byte
		ok        bool
		wantProto tcpip.TransportProtocolNumber
		wantSize  int
	}{
		{"tcp", header.TCPProtocolNumber, nil, true, header.TCPProtocolNumber, 40},
		{"udp", header.UDPProtocolNumber, nil, true, header.UDPProtocolNumber, 40},
		{"tcp behind destination options", dstOpts, []byte{uint8(header.TCPProtocolNumber), 0, 1, 4, 0, 0, 0, 0}, true, header.TCPProtocolNumber, 48},
		{"destination options cut short", dstOpts, []byte{uint8(header.TCPProtocolNumber), 3}, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip := make([]byte, header.IPv6MinimumSize)
			header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(len(tc.ext) + 20), TransportProtocol: tc.next, HopLimit: 64,
				SrcAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 1}), DstAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 2})})
			b := append(append(ip, tc.ext...), make([]byte, 20)...)
			if !tc.ok {
				b = append(ip, tc.ext...) // the header claims more than is there
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			defer pkt.DecRef()
			proto, size, ok := ipv6TransportOffset(pkt, header.IPv6(ip))
			if ok != tc.ok || (ok && (proto != tc.wantProto || size != tc.wantSize)) {
				t.Fatalf("ipv6TransportOffset = %d, %d, %v; want %d, %d, %v", proto, size, ok, tc.wantProto, tc.wantSize, tc.ok)
			}
			if got := pkt.Size(); got != len(b) {
				t.Errorf("packet is %d bytes after, want %d untouched", got, len(b))
			}
		})
	}
}
