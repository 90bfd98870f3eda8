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

package tcpip

import "time"

// TCPDelayedACK is how long a stack's connections may hold the ACK of
// data shorter than a full segment, so that the reply the application
// writes meanwhile carries it (RFC 1122 section 4.2.3.2; RFC 5681 section
// 4.2). Zero, upstream's behaviour and the default, acknowledges every
// batch of received segments at once.
//
// Only less than a full segment of unacknowledged data waits: a full
// segment, out-of-order data, a FIN or a window update is acknowledged at
// once as before, so bulk transfers and loss recovery see the same ACKs.
// Request and response traffic (a 64-byte round trip through a tunnel,
// say) then costs two segments a round trip instead of four. Keep it well
// under the peer's allowance for a delayed ACK in its tail loss probe
// (RACK-TLP's WCDelAckT) and its minimum RTO.
type TCPDelayedACK time.Duration

func (*TCPDelayedACK) isGettableTransportProtocolOption() {}

func (*TCPDelayedACK) isSettableTransportProtocolOption() {}
