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

// Not upstream gVisor: RTT samples for the RTO from the send times of the
// segments an ACK acknowledges, when the connection has no TCP timestamps
// (hooks in snd.go, 006-karn-rtt.patch).
//
// Upstream times one segment a round trip without timestamps: it notes
// SND.NXT and the time the segment starting there is sent, and takes a
// sample when an ACK passes it. When that segment is lost and resent in
// other bounds (RACK and the RTO resend ranges, cut anew), the send time
// stays the first one and the sample spans the whole recovery: over a 4 ms
// link with 2% loss each way and data both ways, SRTT climbed to 640 ms
// and the RTO, doubling on each timeout from there, to 5 s, so a transfer
// stalled for seconds at a time (netstack's TestDataBothWaysUnderLoss with
// timestamps off). Karn's rule (RFC 6298 section 3) forbids exactly this:
// no sample from a retransmitted segment. As Linux does
// (tcp_clean_rtx_queue), a sample here is the time since the earliest
// send of the never-retransmitted segments an ACK newly acknowledges
// cumulatively, and none if it also acknowledges retransmitted data;
// failing that, since the earliest send of those it newly SACKs.

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// karnSample gathers one ACK's RTT evidence.
type karnSample struct {
	firstAcked  tcpip.MonotonicTime // zero: none
	retransAck  bool
	firstSACKed tcpip.MonotonicTime // zero: none
}

// karnReset is the hook at the start of an ACK's processing.
//
// +checklocks:s.ep.mu
func (s *sender) karnReset() {
	s.karn = karnSample{}
}

// karnSACKed is the hook where an ACK newly SACKs seg.
//
// +checklocks:s.ep.mu
func (s *sender) karnSACKed(seg *segment) {
	if seg.xmitCount != 1 {
		return
	}
	if k := &s.karn; k.firstSACKed == (tcpip.MonotonicTime{}) || seg.xmitTime.Before(k.firstSACKed) {
		k.firstSACKed = seg.xmitTime
	}
}

// karnAcked is the hook where an ACK cumulatively acknowledges seg (before
// it is trimmed or removed); a segment SACKed before gives no sample here.
//
// +checklocks:s.ep.mu
func (s *sender) karnAcked(seg *segment) {
	k := &s.karn
	switch {
	case seg.xmitCount > 1:
		k.retransAck = true
	case seg.xmitCount == 1 && !seg.acked:
		if k.firstAcked == (tcpip.MonotonicTime{}) || seg.xmitTime.Before(k.firstAcked) {
			k.firstAcked = seg.xmitTime
		}
	}
}

// karnRTT is the ACK's sample, if it has one.
//
// +checklocks:s.ep.mu
func (s *sender) karnRTT(ackTime tcpip.MonotonicTime) (time.Duration, bool) {
	k := &s.karn
	sent := k.firstAcked
	if sent == (tcpip.MonotonicTime{}) || k.retransAck {
		sent = k.firstSACKed
	}
	if sent == (tcpip.MonotonicTime{}) {
		return 0, false
	}
	rtt := ackTime.Sub(sent)
	return rtt, rtt >= 0
}
