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

// Not upstream gVisor: threshold's fast path in IPv6 for packets without
// extension headers (gvisor-changes/009-ipv6-transport-fast-path.patch
// calls it). Upstream walks an IPv6PayloadIterator over a clone of the
// packet's buffer (a reference taken and dropped on every view) to find a
// transport header that, for TCP or UDP with no extension headers, is right
// after the fixed header.

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ipv6TransportOnly does what IPv6 does for a packet whose fixed header
// (ipHdr, already pulled up) is followed by TCP or UDP, and returns the
// transport protocol; for any other packet it does nothing and returns
// false.
func ipv6TransportOnly(pkt *stack.PacketBuffer, ipHdr header.IPv6) (tcpip.TransportProtocolNumber, bool) {
	proto := tcpip.TransportProtocolNumber(ipHdr.NextHeader())
	if proto != header.TCPProtocolNumber && proto != header.UDPProtocolNumber {
		return 0, false
	}
	hdr, ok := pkt.NetworkHeader().Consume(header.IPv6MinimumSize)
	if !ok {
		return 0, false // not reached: the caller pulled the fixed header up
	}
	pkt.Data().CapLength(int(header.IPv6(hdr).PayloadLength()))
	pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
	return proto, true
}
