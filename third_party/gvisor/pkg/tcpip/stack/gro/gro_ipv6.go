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

// Not upstream gVisor: threshold's fast path for IPv6 packets without
// extension headers (gvisor-changes/009-ipv6-transport-fast-path.patch
// calls it from dispatch6).
//
// Upstream walks the extension headers of every packet with an
// IPv6PayloadIterator over a clone of the packet's buffer: the iterator and
// the header it returns escape to the heap, and the clone takes and drops a
// reference on every view. A TCP segment straight after the fixed header,
// which is every segment gVisor's own TCP sends, needs none of it.

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ipv6TransportOffset returns the transport protocol of an IPv6 packet and
// the size of its IP header with extension headers, as upstream's loop in
// dispatch6 finds them; false for a packet whose extension headers do not
// parse. ipHdr is the packet's fixed header.
func ipv6TransportOffset(pkt *stack.PacketBuffer, ipHdr header.IPv6) (tcpip.TransportProtocolNumber, int, bool) {
	transProto := tcpip.TransportProtocolNumber(ipHdr.NextHeader())
	if transProto == header.TCPProtocolNumber {
		return transProto, header.IPv6MinimumSize, true
	}
	// Upstream's loop, unchanged.
	buf := pkt.Data().ToBuffer()
	buf.TrimFront(header.IPv6MinimumSize)
	it := header.MakeIPv6PayloadIterator(header.IPv6ExtensionHeaderIdentifier(transProto), buf)
	ipHdrSize := int(header.IPv6MinimumSize)
	for {
		transProto = tcpip.TransportProtocolNumber(it.NextHeaderIdentifier())
		extHdr, done, err := it.Next()
		if err != nil {
			return 0, 0, false
		}
		if done {
			break
		}
		switch extHdr.(type) {
		// We can GRO these, so just skip over them.
		case header.IPv6HopByHopOptionsExtHdr:
		case header.IPv6RoutingExtHdr:
		case header.IPv6DestinationOptionsExtHdr:
		case header.IPv6ExperimentExtHdr:
		default:
			// This is either a TCP header or something we can't handle.
			ipHdrSize = int(it.HeaderOffset())
			done = true
		}
		extHdr.Release()
		if done {
			break
		}
	}
	return transProto, ipHdrSize, true
}
