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

// Not upstream gVisor: threshold's delivery-rate estimation for the BBR
// controller (bbr.go), after draft-cheng-iccrg-delivery-rate-estimation.
// Upstream's sender counts packets and RTT only; this adds, per connection,
// the bytes delivered so far and when, and per segment what those were when
// the segment was sent, so that every ACK yields a rate sample.

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// segRate is what a segment remembers of the connection's delivery state at
// its (last) transmission. It lives in the segment (a field added by our
// patch) so that a sample needs no lookup.
type segRate struct {
	// delivered is the connection's delivered count when the segment was
	// sent, deliveredTime when that count last grew, firstSentTime the
	// send time of the segment that opened the current send interval.
	delivered     uint64
	deliveredTime tcpip.MonotonicTime
	firstSentTime tcpip.MonotonicTime
	// appLimited is set when the segment was sent while the application,
	// not the network, limited the sending rate.
	appLimited bool
}

// rateSample is the outcome of one ACK.
type rateSample struct {
	// sampled says whether the ACK delivered a segment sent by us (its
	// stamps are in the sample); deliveryRate is bytes per second, valid
	// when the interval was long enough to measure one.
	sampled      bool
	deliveryRate float64
	valid        bool
	// appLimited: the sample's segment was sent while app-limited, so the
	// rate is a lower bound of what the path can do.
	appLimited bool
	// priorDelivered is the connection's delivered count when the sampled
	// segment was sent (it marks round trips); newlyDelivered the bytes
	// this ACK delivered, cumulatively or by SACK.
	priorDelivered uint64
	newlyDelivered uint64
	// rtt is the smallest round trip of a never-retransmitted segment
	// this ACK delivered; 0 when there is none.
	rtt time.Duration
	// interval is the sample's measurement interval.
	interval time.Duration
}

// rateSampler is the connection side of the estimator: pure state, no
// sender, so the tests drive it directly.
type rateSampler struct {
	delivered     uint64
	deliveredTime tcpip.MonotonicTime
	firstSentTime tcpip.MonotonicTime
	// appLimitedUntil is non-zero while app-limited: the delivered count
	// at which the last app-limited segment will have been delivered.
	appLimitedUntil uint64

	// The sample being built during one ACK.
	have           bool
	priorDelivered uint64
	priorTime      tcpip.MonotonicTime
	sentTime       tcpip.MonotonicTime
	sendElapsed    time.Duration
	sampleAppLim   bool
	minRTT         time.Duration
}

// onSend stamps a segment (new or retransmitted) as it leaves. nothingInFlight
// says whether the sender had no unacknowledged data before it: then the send
// interval starts afresh (after idle, ack compression of a previous flight
// must not count).
func (r *rateSampler) onSend(st *segRate, now tcpip.MonotonicTime, nothingInFlight bool) {
	if nothingInFlight {
		r.firstSentTime = now
		r.deliveredTime = now
	}
	st.delivered = r.delivered
	st.deliveredTime = r.deliveredTime
	st.firstSentTime = r.firstSentTime
	st.appLimited = r.appLimitedUntil != 0
}

// onDelivered is called for each segment an ACK newly delivers (SACKed or
// cumulatively acknowledged; more than once for a segment is harmless). The
// sample takes the most recently sent of them.
func (r *rateSampler) onDelivered(st *segRate, sentTime, ackTime tcpip.MonotonicTime, retransmitted bool) {
	if !retransmitted {
		if rtt := ackTime.Sub(sentTime); rtt >= 0 && (r.minRTT == 0 || rtt < r.minRTT) {
			r.minRTT = rtt
		}
	}
	if r.have && sentTime.Before(r.sentTime) {
		return
	}
	r.have = true
	r.priorDelivered = st.delivered
	r.priorTime = st.deliveredTime
	r.sentTime = sentTime
	r.sendElapsed = sentTime.Sub(st.firstSentTime)
	r.sampleAppLim = st.appLimited
	// The next send interval starts at this segment's send.
	r.firstSentTime = sentTime
}

// finish closes the ACK: newly bytes were delivered by it (measured from the
// sequence space, SACKs included). minRTT is the path's current minimum, or
// 0 when unknown; samples over a shorter interval are discarded, as ACK
// compression makes them too high.
func (r *rateSampler) finish(newly uint64, ackTime tcpip.MonotonicTime, minRTT time.Duration) rateSample {
	var rs rateSample
	rs.newlyDelivered = newly
	if newly > 0 {
		r.delivered += newly
		r.deliveredTime = ackTime
	}
	if r.appLimitedUntil != 0 && r.delivered > r.appLimitedUntil {
		r.appLimitedUntil = 0
	}
	rs.rtt = r.minRTT
	if r.have {
		rs.sampled = true
		rs.priorDelivered = r.priorDelivered
		rs.appLimited = r.sampleAppLim
		ackElapsed := r.deliveredTime.Sub(r.priorTime)
		interval := r.sendElapsed
		if ackElapsed > interval {
			interval = ackElapsed
		}
		rs.interval = interval
		delivered := r.delivered - r.priorDelivered
		if interval > 0 && delivered > 0 && (minRTT == 0 || interval >= minRTT) {
			rs.deliveryRate = float64(delivered) / interval.Seconds()
			rs.valid = true
		}
	}
	r.have = false
	r.minRTT = 0
	return rs
}

// markAppLimited records that the sender ran out of data with room left in
// its window: samples of what is in flight now understate the path.
func (r *rateSampler) markAppLimited(inflight uint64) {
	r.appLimitedUntil = r.delivered + inflight
	if r.appLimitedUntil == 0 {
		r.appLimitedUntil = 1
	}
}

// deliveryMark is the sender's count of bytes delivered so far, taken from
// its sequence space: everything below SND.UNA, plus what the SACK
// scoreboard holds above it. Its growth between ACKs is what they delivered.
//
// +checklocks:s.ep.mu
func (s *sender) deliveryMark() uint64 {
	m := uint64(s.bbr.base.Size(s.SndUna))
	if s.ep.SACKPermitted {
		m += uint64(s.ep.scoreboard.sacked)
	}
	return m
}

// rateOnSend is the hook in sendSegment.
//
// +checklocks:s.ep.mu
func (s *sender) rateOnSend(seg *segment) {
	if s.bbr == nil {
		return
	}
	s.bbr.onSend(seg)
}

// rateDelivered is the hook where an ACK newly SACKs or cumulatively
// acknowledges seg (its stamps are still those of its last transmission).
//
// +checklocks:s.ep.mu
func (s *sender) rateDelivered(seg *segment, ackTime tcpip.MonotonicTime) {
	if s.bbr == nil || seg.xmitCount == 0 {
		return
	}
	s.bbr.rs.onDelivered(&seg.rate, seg.xmitTime, ackTime, seg.xmitCount > 1)
}

// rateAckDone is the hook after an ACK has been applied to the write list
// and scoreboard.
//
// +checklocks:s.ep.mu
func (s *sender) rateAckDone(rcvdSeg *segment) {
	if s.bbr == nil {
		return
	}
	s.bbr.onAck(rcvdSeg.rcvdTime)
}
