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

// Not upstream gVisor: threshold's BBR congestion control ("bbr"), the
// sender side of it. The model is in bbr_model.go, the delivery-rate
// samples in bbr_rate.go, pacing in pacing.go; the hooks that call into
// here from upstream's sender are in gvisor-changes/001-bbr-hooks.patch.
//
// Upstream's congestionControl interface sees packet counts and RTT only,
// and the sender itself resets cwnd on recovery, RTO and idle. With BBR the
// sender keeps a *bbrState (sender.bbr): every ACK gives a delivery-rate
// sample to the model, which sets SndCwnd and the pacing rate; the
// sender's own resets are overridden by the hooks (enterRecovery) or
// skipped (idle restart), and the congestionControl methods below restore
// the model's window where the sender changed it.

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// ccBBR names the controller in tcpip.CongestionControlOption.
const ccBBR = "bbr"

// bbrMaxCwnd bounds the window (packets); the send buffer bounds it well
// before that.
const bbrMaxCwnd = 1 << 20

// bbrState connects the model to one sender.
//
// +stateify savable
type bbrState struct {
	s *sender

	m  bbrModel
	rs rateSampler
	p  pacer

	// base is the first sequence number: delivered bytes are counted from
	// it (see deliveryMark).
	base seqnum.Value
	// mark is the delivery mark after the previous ACK; debt is what a
	// retransmission timeout took from it (the SACK scoreboard is cleared,
	// so those bytes will be delivered, and counted, once more).
	mark uint64
	debt uint64
}

// newBBR makes the sender use BBR.
//
// +checklocks:s.ep.mu
func newBBR(s *sender) *bbrState {
	b := &bbrState{s: s, base: s.SndUna}
	s.rtt.Lock()
	srtt := s.rtt.TCPRTTState.SRTT
	s.rtt.Unlock()
	b.m.init(s.MaxPayloadSize, InitialCwnd, bbrMaxCwnd, srtt, uint32(s.SndUna))
	b.p.timer.init(s.ep.stack.Clock(), timerHandler(s.ep, b.pacingTimerExpired))
	s.bbr = b
	s.SndCwnd = b.m.cwnd
	return b
}

// inflight is the packets the sender has in flight: in recovery the RFC
// 6675 pipe the sender keeps in Outstanding; otherwise what is sent and
// neither acknowledged nor SACKed, from the sequence space (outside
// recovery Outstanding and SackedOut do not add up after SACKs).
//
// +checklocks:b.s.ep.mu
func (b *bbrState) inflight() int {
	s := b.s
	if s.FastRecovery.Active {
		return max(s.Outstanding, 0)
	}
	bytes := int(s.SndUna.Size(s.SndNxt))
	if s.ep.SACKPermitted {
		bytes -= int(s.ep.scoreboard.Sacked())
	}
	return max((bytes+s.MaxPayloadSize-1)/s.MaxPayloadSize, 0)
}

// onSend stamps seg for the rate sampler and charges it to the pacer.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) onSend(seg *segment) {
	s := b.s
	now := seg.xmitTime
	idle := s.SndUna == s.SndNxt
	if idle && b.rs.appLimitedUntil != 0 {
		b.m.onIdleRestart()
	}
	b.rs.onSend(&seg.rate, now, idle)
	if seg.xmitCount > 1 {
		b.m.onLost(seg.payloadSize())
	}
	b.p.sent(now, seg.payloadSize(), b.m.pacingRate, b.m.quantum())
}

// onAck closes one ACK: the sample, then the model, then the window.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) onAck(ackTime tcpip.MonotonicTime) {
	s := b.s
	b.m.mss = s.MaxPayloadSize
	mark := s.deliveryMark()
	var newly uint64
	if mark >= b.mark {
		newly = mark - b.mark
	} else {
		b.debt += b.mark - mark
	}
	b.mark = mark
	acked := newly
	pay := min(newly, b.debt)
	newly -= pay
	b.debt -= pay

	if b.m.recovery && !s.FastRecovery.Active && s.state != tcpip.RTORecovery {
		b.m.onExitRecovery()
	}
	rs := b.rs.finish(newly, ackTime, b.m.minRTT)
	if pay > 0 {
		// Re-acknowledged bytes after an RTO: no sample (its rate and
		// its round trip would be wrong), the model holds.
		rs.sampled, rs.valid = false, false
	}
	b.m.onAck(bbrAck{now: ackTime, rs: rs, inflight: b.inflight(), acked: acked})
	b.apply()
}

// apply hands the model's window to the sender.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) apply() {
	b.s.SndCwnd = b.m.cwnd
	// Upstream's recovery code reads Ssthresh (enterRecovery sets
	// SndCwnd from it before our hook); keep it finite and meaningless.
	b.s.Ssthresh = b.m.cwnd
}

// onEnterRecovery is the hook at the end of the sender's enterRecovery,
// which has just set SndCwnd from Ssthresh.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) onEnterRecovery() {
	b.m.onEnterRecovery(b.inflightAtRecovery())
	b.apply()
}

// inflightAtRecovery is what is in flight as recovery starts: sent, not
// acknowledged, not SACKed and not marked lost. Outstanding cannot say:
// the pipe is computed only once recovery is active, and before that
// Outstanding does not drop for SACKed segments, so it can be far from
// what is in flight either way. Packet conservation holds the window at
// this figure for a round, and at 1% loss recovery starts every round or
// two: on the WAN bench windows of 6 and 53 packets were seen in recovery
// with a BDP of 250.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) inflightAtRecovery() int {
	s := b.s
	bytes := int(s.SndUna.Size(s.SndNxt))
	if s.ep.SACKPermitted {
		bytes -= int(s.ep.scoreboard.Sacked())
	}
	for seg := s.writeList.Front(); seg != nil && seg != s.writeNext; seg = seg.Next() {
		if seg.lost {
			bytes -= seg.payloadSize()
		}
	}
	return max((bytes+s.MaxPayloadSize-1)/s.MaxPayloadSize, 0)
}

// afterSend is the hook at the end of sendData: running out of data with
// room in the window makes the next samples app-limited.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) afterSend() {
	s := b.s
	// As Linux: not while holes wait for repair (a send buffer full of
	// data behind a loss is not the application's limit).
	if s.writeNext == nil && !b.p.waiting() && !s.FastRecovery.Active &&
		(!s.ep.SACKPermitted || s.ep.scoreboard.Sacked() == 0) && b.inflight() < s.SndCwnd {
		b.rs.markAppLimited(uint64(s.SndUna.Size(s.SndNxt)))
	}
}

// HandleLossDetected implements congestionControl. The loss itself does
// not change the model (random loss is not congestion); entering recovery
// does (onEnterRecovery).
func (b *bbrState) HandleLossDetected() {}

// HandleRTOExpired implements congestionControl.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) HandleRTOExpired() {
	b.m.onRTO()
	b.apply()
}

// Update implements congestionControl: the model runs on every ACK
// (onAck), in recovery too, so there is nothing to do here.
func (b *bbrState) Update(int, time.Duration, tcpip.MonotonicTime) {}

// PostRecovery implements congestionControl: leaving recovery, the sender
// has just set SndCwnd to Ssthresh; the model's window (restored to what
// it was before recovery) replaces it.
//
// +checklocks:b.s.ep.mu
func (b *bbrState) PostRecovery() {
	b.m.onExitRecovery()
	b.apply()
}

// String is for debugging and the tests.
func (b *bbrState) String() string {
	return b.m.mode.String()
}
