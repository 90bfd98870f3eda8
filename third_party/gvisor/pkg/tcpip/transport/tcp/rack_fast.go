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

package tcp

import "time"

// Not upstream gVisor: a shortcut in RACK's loss detection (the hook is at
// the top of detectLoss's loop in rack.go), and the tail loss probe's
// allowance for a delayed ACK (in schedulePTO).
//
// detectLoss runs on every ACK and walks the whole write list from SND.UNA
// with a SACK scoreboard lookup per segment: with a few thousand segments
// in flight and holes from random loss it took a fifth of the sending
// process's CPU on the WAN bench (30 ms, 1% loss), after SetPipe's walk was
// gone (bbr_pipe.go). Much of the walk is needless: segments that were sent
// once are in sequence order and in send order at once, and RACK can only
// judge segments sent before the most recently delivered one
// (RACK.xmit_ts). The first once-sent segment sent after it ends the walk:
// every segment above it was sent later still (a retransmission later than
// its own first send), so none of them can be lost by RACK's rule, nor
// already marked lost and waiting for retransmission.
//
// (Skipping segments that walkSACK marked acked, without the lookup, is
// not safe: walkSACK marks a segment acked when a SACK block covers its
// start, and a GSO segment can be SACKed in part; the WAN bench lost half
// its rate at 1% loss to the losses RACK then missed.)

// peerDelayedACKTimeout is what the probe timeout adds when one segment
// is in flight, for the peer's delayed ACK. RACK-TLP's WCDelAckT is 200 ms
// (upstream's wcDelayedACKTimeout), for peers that hold an ACK that long.
// This copy's TCP talks only to itself (threshold's server and client
// stacks), and gVisor's receiver does not delay: it acknowledges at the
// end of every batch of segments it processes. With 200 ms a lost lone
// segment (a request, an echo) cost 2 x SRTT + 200 ms: on the WAN bench at
// 30 ms and 1% loss the 64-byte round trip's p99 under load was 306 ms.
// 10 ms leaves room for a busy peer's processing; a peer that did delay
// would cost one needless probe.
const peerDelayedACKTimeout = 10 * time.Millisecond

// detectLossDone says whether detectLoss may stop at seg.
//
// +checklocks:rc.snd.ep.mu
func (rc *rackControl) detectLossDone(seg *segment) bool {
	return seg.xmitCount == 1 && seg.xmitTime.After(rc.XmitTime)
}
