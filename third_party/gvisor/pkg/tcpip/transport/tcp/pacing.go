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

// Not upstream gVisor: threshold's pacing of the sender, for BBR.
//
// Sends are spaced at the model's pacing rate on an absolute schedule:
// each send moves the earliest time of the next one on by its bytes at the
// rate. A send that finds the schedule in the future arms the sender's
// pacing timer (the endpoint's own timer machinery, a tcpip.Timer, so no
// goroutine) and stops; the timer resumes sendData. The timer is armed only
// while data waits for the schedule, never for an idle connection.
//
// Timers oversleep (by tens of microseconds to milliseconds on a busy
// machine); the schedule keeps a little credit (pacerCreditTime: 5 ms, or
// two quanta if more), so that oversleep does not lower the rate, while an
// idle period does not let a larger burst out. GSO segments are cut to the
// model's quantum (about 1 ms at the pacing rate, at most 64 KiB) by
// limiting the segment size sendData builds.

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pacerCredit is how many quanta of lateness the schedule forgives, and
// pacerCreditMin the least time: on a busy machine (WAN measurements here
// ran beside real-time emulator threads) timers fire milliseconds late.
const (
	pacerCredit    = 2
	pacerCreditMin = 5 * time.Millisecond
)

// pacerCreditTime is the lateness forgiven at rate with bursts of quantum.
func pacerCreditTime(rate float64, quantum int) time.Duration {
	return max(time.Duration(float64(pacerCredit*quantum)/rate*float64(time.Second)), pacerCreditMin)
}

// pacer is the schedule plus its timer.
type pacer struct {
	// next is the earliest time of the next send.
	next tcpip.MonotonicTime
	// timer resumes sending once next is reached; armed only while
	// blocked is set.
	timer   timer
	blocked bool
}

// sent charges bytes sent at now to the schedule, at rate (bytes per
// second) with bursts of quantum bytes.
func (p *pacer) sent(now tcpip.MonotonicTime, bytes int, rate float64, quantum int) {
	if rate <= 0 || bytes <= 0 {
		return
	}
	if floor := now.Add(-pacerCreditTime(rate, quantum)); p.next.Before(floor) {
		p.next = floor
	}
	p.next = p.next.Add(time.Duration(float64(bytes) / rate * float64(time.Second)))
}

// allow reports whether a send may go at now; if not, it says how long to
// wait.
func (p *pacer) allow(now tcpip.MonotonicTime) (bool, time.Duration) {
	if !now.Before(p.next) {
		return true, 0
	}
	return false, p.next.Sub(now)
}

func (p *pacer) waiting() bool { return p.blocked }

// paceAllows is the hook in sendData before each segment: whether it may
// be sent now, capping the segment size (limit) to the pacing quantum.
// When not, the pacing timer is armed and sendData stops.
//
// +checklocks:s.ep.mu
func (s *sender) paceAllows(limit *int) bool {
	b := s.bbr
	if b == nil {
		return true
	}
	now := s.ep.stack.Clock().NowMonotonic()
	ok, wait := b.p.allow(now)
	if !ok {
		b.p.blocked = true
		b.p.timer.enable(wait)
		return false
	}
	b.p.blocked = false
	if s.gso {
		// The quantum, but never more than sendData's GSO limit.
		q := b.m.quantum()
		if gsoMax := int(s.ep.gso.MaxSize - header.TCPTotalHeaderMaximumSize - 1); q > gsoMax {
			q = gsoMax
		}
		if q < *limit {
			*limit = max(q, s.MaxPayloadSize)
		}
	}
	return true
}

// pacingTimerExpired resumes sending once the schedule allows it.
//
// +checklocks:b.s.ep.mu
// +checklocksexclude:b.s.rtt.rttMutex
func (b *bbrState) pacingTimerExpired() tcpip.Error {
	if b.p.timer.isUninitialized() || !b.p.timer.checkExpiration() {
		return nil
	}
	if !b.p.blocked {
		return nil
	}
	b.p.blocked = false
	if b.s.writeNext != nil {
		b.s.sendData()
	}
	return nil
}

// bbrAfterSend is the hook at the end of sendData.
//
// +checklocks:s.ep.mu
func (s *sender) bbrAfterSend() {
	if s.bbr != nil {
		s.bbr.afterSend()
	}
}

// bbrEnterRecovery is the hook at the end of enterRecovery.
//
// +checklocks:s.ep.mu
func (s *sender) bbrEnterRecovery() {
	if s.bbr != nil {
		s.bbr.onEnterRecovery()
	}
}

// bbrCleanup is the hook in the endpoint's cleanup, beside the sender's
// other timers.
func (s *sender) bbrCleanup() {
	if s.bbr != nil {
		s.bbr.p.timer.cleanup()
	}
}
