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

package ipv6

// Not upstream gVisor: threshold's fast path for packets delivered locally
// without extension headers (gvisor-changes/009-ipv6-transport-fast-path.patch
// calls it from deliverPacketLocally).
//
// Upstream's processExtensionHeaders builds a buffer of the whole packet
// (a reference on every view), clones the packet, and walks an
// IPv6PayloadIterator whose headers escape to the heap, for every packet,
// to reach the transport header that, for a TCP or UDP packet with none,
// is right after the fixed header. What it then does for such a packet
// (processIPv6RawPayloadHeader with nothing to trim) is below, without
// the walk.

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// deliverTransportOnly delivers pkt to its transport protocol if its
// fixed header is followed directly by TCP or UDP, and reports whether it
// did; for any other packet it does nothing and returns false.
func (e *endpoint) deliverTransportOnly(h header.IPv6, pkt *stack.PacketBuffer) bool {
	proto := tcpip.TransportProtocolNumber(h.NextHeader())
	if proto != header.TCPProtocolNumber && proto != header.UDPProtocolNumber {
		return false
	}
	if len(pkt.NetworkHeader().Slice()) != header.IPv6MinimumSize {
		return false
	}
	if len(pkt.TransportHeader().Slice()) == 0 {
		e.protocol.parseTransport(pkt, proto)
	}
	stats := e.stats.ip
	stats.PacketsDelivered.Increment()
	switch res := e.dispatcher.DeliverTransportPacket(proto, pkt); res {
	case stack.TransportPacketHandled:
	case stack.TransportPacketDestinationPortUnreachable:
		// As processIPv6RawPayloadHeader (RFC 4443 section 3.1).
		_ = e.protocol.returnError(&icmpReasonPortUnreachable{}, pkt, true /* deliveredLocally */)
	case stack.TransportPacketProtocolUnreachable:
		// As processIPv6RawPayloadHeader (RFC 8200 section 4): the Next
		// Header field of the fixed header.
		_ = e.protocol.returnError(&icmpReasonParameterProblem{
			code:    header.ICMPv6UnknownHeader,
			pointer: header.IPv6NextHeaderOffset,
		}, pkt, true /* deliveredLocally */)
	default:
		panic(fmt.Sprintf("unrecognized result from DeliverTransportPacket = %d", res))
	}
	return true
}
