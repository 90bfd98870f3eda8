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

// Not upstream gVisor: tests of threshold's BBR (bbr*.go, pacing.go) on
// synthetic ACK streams. A small simulator plays the network: a sender
// driven by the model, the rate sampler and the pacer; a bottleneck with a
// rate, a tail-drop queue and a propagation delay; random loss; one ACK per
// delivered packet (as SACK would tell), loss detected when a later packet
// is delivered (as RACK on a path without reordering).

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

const simMSS = 1400

type simPacket struct {
	sent       tcpip.MonotonicTime
	st         segRate
	delivered  bool
	lost       bool
	retransmit bool
}

type simAck struct {
	at tcpip.MonotonicTime
	id int
}

// simLink is the bottleneck's state: when it is next free to send.
type simLink struct {
	free tcpip.MonotonicTime
}

type simNet struct {
	t        *testing.T
	rate     float64       // bottleneck bytes per second
	delay    time.Duration // one way
	queue    time.Duration // bottleneck queue limit
	loss     float64
	tick     time.Duration
	appLimit float64 // if > 0, the application offers only this many bytes per second
	// rateJitter, if > 0, varies the bottleneck's rate by up to this
	// fraction either way, a new rate every 50 ms (a shared link, or a
	// busy host's timing): the max filter then finds the peaks.
	rateJitter float64
	rateEpoch  tcpip.MonotonicTime
	rateNow    float64
	// queueDelay, if non-nil, is called with the bottleneck queue's delay
	// for every packet that enters it; tailDrops counts those that do not.
	queueDelay func(time.Duration)
	tailDrops  int
	// ackJitter, if > 0, delays each ACK by a random time up to it, as a
	// userspace stack's scheduling does (ACKs keep their order, so a late
	// one holds back those behind it: they arrive bunched).
	ackJitter time.Duration

	rng     *rand.Rand
	m       bbrModel
	r       rateSampler
	p       pacer
	now     tcpip.MonotonicTime
	pkts    []simPacket
	retx    []int
	acks    []simAck
	bn      *simLink // the bottleneck, shared by flows that compete
	flight  int      // sent, not delivered, not marked lost
	offered float64

	recovery      bool
	recoveryPoint int
	lowestUnacked int

	deliveredBytes uint64
	sentBytes      uint64

	// onAck is called after every ACK, for the tests' observations.
	onAck func(n *simNet)
}

func newSimNet(t *testing.T, mbit float64, rtt time.Duration, loss float64) *simNet {
	n := &simNet{
		t:     t,
		rate:  mbit * 1e6 / 8,
		delay: rtt / 2,
		queue: rtt, // one BDP of buffer
		loss:  loss,
		tick:  20 * time.Microsecond,
		rng:   rand.New(rand.NewPCG(1, 2)),
		bn:    &simLink{},
	}
	n.now = tcpip.MonotonicTime{}.Add(time.Second)
	n.m.init(simMSS, InitialCwnd, bbrMaxCwnd, 0, 12345)
	return n
}

func (n *simNet) run(d time.Duration) {
	end := n.now.Add(d)
	for n.now.Before(end) {
		n.step()
	}
}

// step advances the flow by one tick.
func (n *simNet) step() {
	n.now = n.now.Add(n.tick)
	if n.appLimit > 0 {
		n.offered += n.appLimit * n.tick.Seconds()
	}
	n.processAcks()
	n.send()
}

func (n *simNet) processAcks() {
	for len(n.acks) > 0 && !n.now.Before(n.acks[0].at) {
		a := n.acks[0]
		n.acks = n.acks[1:]
		p := &n.pkts[a.id]
		if p.delivered {
			continue
		}
		p.delivered = true
		if !p.lost {
			n.flight--
		}
		n.deliveredBytes += simMSS
		n.r.onDelivered(&p.st, p.sent, n.now, p.retransmit)
		// RACK without reordering: anything sent before this packet and
		// not delivered is lost.
		newlyLost := false
		for i := n.lowestUnacked; i < len(n.pkts); i++ {
			q := &n.pkts[i]
			if q.delivered || q.lost {
				continue
			}
			if !q.sent.Before(p.sent) {
				break
			}
			q.lost = true
			n.m.onLost(simMSS)
			n.flight--
			n.retx = append(n.retx, i)
			newlyLost = true
		}
		for n.lowestUnacked < len(n.pkts) && n.pkts[n.lowestUnacked].delivered {
			n.lowestUnacked++
		}
		if n.recovery && n.lowestUnacked > n.recoveryPoint {
			n.recovery = false
			n.m.onExitRecovery()
		}
		if newlyLost && !n.recovery {
			n.recovery = true
			n.recoveryPoint = len(n.pkts) - 1
			n.m.onEnterRecovery(n.flight)
		}
		rs := n.r.finish(simMSS, n.now, n.m.minRTT)
		n.m.onAck(bbrAck{now: n.now, rs: rs, inflight: n.flight, acked: simMSS})
		if n.onAck != nil {
			n.onAck(n)
		}
	}
}

func (n *simNet) send() {
	for n.flight < n.m.cwnd {
		if ok, _ := n.p.allow(n.now); !ok {
			return
		}
		var id int
		if len(n.retx) > 0 {
			id = n.retx[0]
			n.retx = n.retx[1:]
			if n.pkts[id].delivered {
				continue
			}
			n.pkts[id].lost = false
			n.pkts[id].retransmit = true
		} else {
			if n.appLimit > 0 {
				if n.offered < simMSS {
					if n.flight < n.m.cwnd {
						n.r.markAppLimited(uint64(n.flight * simMSS))
					}
					return
				}
				n.offered -= simMSS
			}
			id = len(n.pkts)
			n.pkts = append(n.pkts, simPacket{})
		}
		p := &n.pkts[id]
		p.sent = n.now
		n.r.onSend(&p.st, n.now, n.flight == 0)
		n.p.sent(n.now, simMSS, n.m.pacingRate, n.m.quantum())
		n.flight++
		n.sentBytes += simMSS
		if n.rng.Float64() < n.loss {
			continue
		}
		if n.bn.free.Before(n.now) {
			n.bn.free = n.now
		}
		if n.bn.free.Sub(n.now) > n.queue {
			n.tailDrops++
			continue
		}
		if n.queueDelay != nil {
			n.queueDelay(n.bn.free.Sub(n.now))
		}
		rate := n.rate
		if n.rateJitter > 0 {
			if !n.now.Before(n.rateEpoch) {
				n.rateEpoch = n.now.Add(50 * time.Millisecond)
				n.rateNow = n.rate * (1 + n.rateJitter*(2*n.rng.Float64()-1))
			}
			rate = n.rateNow
		}
		n.bn.free = n.bn.free.Add(time.Duration(float64(simMSS+60) / rate * float64(time.Second)))
		at := n.bn.free.Add(2 * n.delay)
		if n.ackJitter > 0 {
			at = at.Add(time.Duration(n.rng.Int64N(int64(n.ackJitter))))
		}
		n.acks = append(n.acks, simAck{at: at, id: id})
	}
}

// goodput measures delivered bytes per second over d.
func (n *simNet) goodput(d time.Duration) float64 {
	before := n.deliveredBytes
	n.run(d)
	return float64(n.deliveredBytes-before) / d.Seconds()
}

// payloadRate is the bottleneck's rate in payload bytes.
func (n *simNet) payloadRate() float64 { return n.rate * simMSS / (simMSS + 60) }

func (n *simNet) bdpPackets() float64 {
	return n.payloadRate() * (2 * n.delay).Seconds() / simMSS
}

// TestBBRRandomLossNoCollapse: 1% random loss on a 100 Mbit/s, 30 ms path
// must not pull the model's bandwidth, the window or the delivery rate down
// (Reno would sit at MSS/RTT x 1.22/sqrt(p), about 4.5 Mbit/s). It fails if
// loss reaches the model (a cwnd cut per loss, a bandwidth filter that
// takes lossy samples as the max), or if recovery does not restore the
// window.
func TestBBRRandomLossNoCollapse(t *testing.T) {
	for _, loss := range []float64{0.001, 0.01, 0.02} {
		n := newSimNet(t, 100, 30*time.Millisecond, loss)
		n.run(5 * time.Second)
		minCwnd := math.MaxInt
		n.onAck = func(n *simNet) {
			if n.m.mode != bbrProbeRTT {
				minCwnd = min(minCwnd, n.m.cwnd)
			}
		}
		got := n.goodput(10 * time.Second)
		link := n.payloadRate()
		t.Logf("loss %.1f%%: goodput %.1f Mbit/s of %.1f, bw estimate %.1f, cwnd %d (min %d) of BDP %.0f, mode %s",
			loss*100, got*8/1e6, link*8/1e6, n.m.bw.get()*8/1e6, n.m.cwnd, minCwnd, n.bdpPackets(), n.m.mode)
		if got < 0.85*link*(1-loss) {
			t.Errorf("loss %.1f%%: goodput %.1f Mbit/s, under 85%% of the link's %.1f", loss*100, got*8/1e6, link*8/1e6)
		}
		if bw := n.m.bw.get(); bw < 0.85*link || bw > 1.3*link {
			t.Errorf("loss %.1f%%: bandwidth estimate %.1f Mbit/s, the link is %.1f", loss*100, bw*8/1e6, link*8/1e6)
		}
		if float64(minCwnd) < 0.5*n.bdpPackets() {
			t.Errorf("loss %.1f%%: cwnd fell to %d packets, BDP is %.0f", loss*100, minCwnd, n.bdpPackets())
		}
	}
}

// TestBBRStartupExitsOnPlateau: startup must find the bottleneck (its
// bandwidth estimate stops growing), leave for drain within a few rounds
// of that, drain the queue it built, and cruise in probe-bw at the link's
// rate with a short queue.
func TestBBRStartupExitsOnPlateau(t *testing.T) {
	n := newSimNet(t, 50, 40*time.Millisecond, 0)
	var startupRounds uint64
	var sawDrain bool
	n.onAck = func(n *simNet) {
		if n.m.mode == bbrStartup {
			startupRounds = n.m.roundCount
		}
		if n.m.mode == bbrDrain {
			sawDrain = true
		}
	}
	n.run(3 * time.Second)
	// From 10 packets to a BDP of ~170 takes ~4-5 doubling rounds; then
	// three rounds without 25% growth.
	if !n.m.filledPipe || n.m.mode != bbrProbeBW || !sawDrain {
		t.Fatalf("after 3 s: filled pipe %v, mode %s, drained %v; want a filled pipe, probe-bw after drain", n.m.filledPipe, n.m.mode, sawDrain)
	}
	if startupRounds > 14 {
		t.Errorf("startup lasted %d rounds; a plateau should end it after about 8", startupRounds)
	}
	// Cruising: the queue stays short (the bottleneck is busy, but not
	// overfilled: at most the 1.25 probe's quarter BDP plus bursts).
	maxQueue := time.Duration(0)
	n.onAck = func(n *simNet) {
		if q := n.bn.free.Sub(n.now); q > maxQueue {
			maxQueue = q
		}
	}
	got := n.goodput(3 * time.Second)
	t.Logf("startup %d rounds; then %.1f Mbit/s of %.1f, queue at most %s, bw %.1f", startupRounds, got*8/1e6, n.payloadRate()*8/1e6, maxQueue, n.m.bw.get()*8/1e6)
	if got < 0.9*n.payloadRate() {
		t.Errorf("probe-bw goodput %.1f Mbit/s, under 90%% of %.1f", got*8/1e6, n.payloadRate()*8/1e6)
	}
	if maxQueue > 20*time.Millisecond {
		t.Errorf("queue reached %s in probe-bw; pacing at the estimate should keep it under half the RTT", maxQueue)
	}
}

// TestBBRProbeRTT: when the path's delay grows (a route change), the old
// minimum RTT cannot be seen again; after its 10 s window the model must
// probe (cwnd down to 4 packets for 200 ms and a round), take the new
// minimum, and restore its window.
func TestBBRProbeRTT(t *testing.T) {
	n := newSimNet(t, 50, 30*time.Millisecond, 0)
	n.run(3 * time.Second)
	n.delay = 20 * time.Millisecond // 40 ms RTT from now on
	var entered, exited tcpip.MonotonicTime
	var priorCwnd, minCwnd, afterCwnd int
	minCwnd = math.MaxInt
	n.onAck = func(n *simNet) {
		switch {
		case n.m.mode == bbrProbeRTT && entered == (tcpip.MonotonicTime{}):
			entered = n.now
			priorCwnd = n.m.priorCwnd
		case n.m.mode == bbrProbeRTT:
			minCwnd = min(minCwnd, n.m.cwnd)
		case entered != (tcpip.MonotonicTime{}) && exited == (tcpip.MonotonicTime{}):
			exited = n.now
			afterCwnd = n.m.cwnd
		}
	}
	n.run(12 * time.Second)
	if entered == (tcpip.MonotonicTime{}) || exited == (tcpip.MonotonicTime{}) {
		t.Fatalf("no probe-rtt within 12 s of the delay change (min RTT %s)", n.m.minRTT)
	}
	held := exited.Sub(entered)
	t.Logf("probe-rtt after %s, held %s, cwnd %d -> %d -> %d, min RTT now %s",
		entered.Sub(tcpip.MonotonicTime{}.Add(4*time.Second)), held, priorCwnd, minCwnd, afterCwnd, n.m.minRTT)
	if minCwnd > bbrMinPipeCwnd {
		t.Errorf("probe-rtt window %d, want %d", minCwnd, bbrMinPipeCwnd)
	}
	if held < bbrProbeRTTTime {
		t.Errorf("probe-rtt held %s, want at least %s", held, bbrProbeRTTTime)
	}
	if held > time.Second {
		t.Errorf("probe-rtt held %s", held)
	}
	if afterCwnd < priorCwnd {
		t.Errorf("after probe-rtt cwnd %d, before %d: not restored", afterCwnd, priorCwnd)
	}
	if d := n.m.minRTT - 40*time.Millisecond; d < 0 || d > 3*time.Millisecond {
		t.Errorf("min RTT after probe-rtt %s, want about 40ms", n.m.minRTT)
	}
	if got := n.goodput(2 * time.Second); got < 0.9*n.payloadRate() {
		t.Errorf("goodput after probe-rtt %.1f Mbit/s of %.1f", got*8/1e6, n.payloadRate()*8/1e6)
	}
}

// TestBBRPacingFollowsModel: the pacing rate is the estimate times the
// phase's gain (less the margin), and what the sender actually sends over a
// probe-bw cycle follows that rate, not the window: the sent rate stays
// near the link's even though the window is two BDPs.
func TestBBRPacingFollowsModel(t *testing.T) {
	n := newSimNet(t, 80, 20*time.Millisecond, 0)
	n.run(3 * time.Second)
	bad := 0
	n.onAck = func(n *simNet) {
		want := n.m.pacingGain * n.m.bandwidth() * (1 - bbrPacingMargin)
		if math.Abs(n.m.pacingRate-want) > 1e-6*want {
			bad++
		}
	}
	sent := n.sentBytes
	n.run(4 * time.Second)
	rate := float64(n.sentBytes-sent) / 4
	t.Logf("sent %.1f Mbit/s, link %.1f, pacing %.1f, cwnd %d (BDP %.0f)", rate*8/1e6, n.payloadRate()*8/1e6, n.m.pacingRate*8/1e6, n.m.cwnd, n.bdpPackets())
	if bad > 0 {
		t.Errorf("%d ACKs left the pacing rate off gain x bandwidth", bad)
	}
	if rate > 1.1*n.payloadRate() || rate < 0.9*n.payloadRate() {
		t.Errorf("sent %.1f Mbit/s on a %.1f Mbit/s link: not paced at the estimate", rate*8/1e6, n.payloadRate()*8/1e6)
	}
}

// TestBBRAppLimitedKeepsEstimate: a sender the application holds to 10
// Mbit/s on a 100 Mbit/s link must not end startup on that plateau with a
// low estimate marked as the path's (app-limited samples do not lower the
// filter), and its pacing must not hold it below what it offers.
func TestBBRAppLimitedKeepsEstimate(t *testing.T) {
	n := newSimNet(t, 100, 30*time.Millisecond, 0)
	n.appLimit = 10e6 / 8
	got := n.goodput(4 * time.Second)
	if n.m.filledPipe {
		t.Errorf("app-limited at 10 Mbit/s, the model declared the 100 Mbit/s pipe full (bw %.1f Mbit/s)", n.m.bw.get()*8/1e6)
	}
	if got < 0.95*n.appLimit {
		t.Errorf("app-limited goodput %.1f Mbit/s of the 10 offered", got*8/1e6)
	}
}

// TestRateSampleSACKCountsAtOnce: bytes an ACK selectively acknowledges
// are delivered at once, and the sample measures them over the interval
// of the newest one.
func TestRateSampleSACKCountsAtOnce(t *testing.T) {
	var r rateSampler
	t0 := tcpip.MonotonicTime{}.Add(time.Second)
	var st [10]segRate
	var sent [10]tcpip.MonotonicTime
	for i := range st {
		sent[i] = t0.Add(time.Duration(i) * time.Millisecond)
		r.onSend(&st[i], sent[i], i == 0)
	}
	// Packet 0 is lost; one ACK SACKs 1-9 at 30 ms after packet 9 left.
	ack := sent[9].Add(30 * time.Millisecond)
	for i := 1; i < 10; i++ {
		r.onDelivered(&st[i], sent[i], ack, false)
	}
	rs := r.finish(9*simMSS, ack, 0)
	if !rs.valid || rs.newlyDelivered != 9*simMSS {
		t.Fatalf("sample %+v: want 9 packets delivered, valid", rs)
	}
	// Delivered 9 packets since the flight started; the interval is the
	// longer of send (9 ms) and ack (39 ms) elapsed.
	want := 9 * simMSS / (39 * time.Millisecond).Seconds()
	if math.Abs(rs.deliveryRate-want) > 0.01*want {
		t.Errorf("rate %.0f B/s, want %.0f", rs.deliveryRate, want)
	}
	if rs.rtt != 30*time.Millisecond {
		t.Errorf("rtt %s, want 30ms (the newest packet's)", rs.rtt)
	}
	// A retransmission's RTT is ambiguous: not a min-RTT sample.
	var st2 segRate
	r.onSend(&st2, ack, false)
	r.onDelivered(&st2, ack, ack.Add(5*time.Millisecond), true)
	if rs := r.finish(simMSS, ack.Add(5*time.Millisecond), 0); rs.rtt != 0 {
		t.Errorf("retransmitted segment gave an RTT sample %s", rs.rtt)
	}
}

// TestPacerKeepsRateDespiteOversleep: a pacer woken late by a busy timer
// (up to 1 ms) still sends at its rate on average, and never bursts more
// than its credit.
func TestPacerKeepsRateDespiteOversleep(t *testing.T) {
	const rate = 100e6 / 8
	const quantum = 12500
	rng := rand.New(rand.NewPCG(3, 4))
	var p pacer
	now := tcpip.MonotonicTime{}.Add(time.Second)
	start := now
	sent := 0
	maxBurst := 0
	for now.Sub(start) < time.Second {
		burst := 0
		for {
			ok, wait := p.allow(now)
			if !ok {
				now = now.Add(wait + time.Duration(rng.IntN(1000))*time.Microsecond)
				break
			}
			p.sent(now, quantum, rate, quantum)
			sent += quantum
			burst += quantum
		}
		maxBurst = max(maxBurst, burst)
	}
	got := float64(sent) / now.Sub(start).Seconds()
	if got < 0.97*rate || got > 1.03*rate {
		t.Errorf("paced %.1f Mbit/s, want %.1f", got*8/1e6, rate*8/1e6)
	}
	allowed := int(pacerCreditTime(rate, quantum).Seconds()*rate) + quantum
	if maxBurst > allowed {
		t.Errorf("burst of %d bytes, credit allows %d", maxBurst, allowed)
	}
	// After idle, no burst beyond the credit either.
	now = now.Add(time.Second)
	burst := 0
	for ok, _ := p.allow(now); ok; ok, _ = p.allow(now) {
		p.sent(now, quantum, rate, quantum)
		burst += quantum
	}
	if burst > allowed {
		t.Errorf("after idle, a burst of %d bytes, credit allows %d", burst, allowed)
	}
}

// TestBBRRTOKeepsModel: a retransmission timeout restarts the window at
// bbrMinPipeCwnd, not at 1 packet forever: the model (bandwidth, min RTT)
// is kept, ACKs that only re-acknowledge data (after the SACK scoreboard was
// cleared: no rate sample) grow the window without ageing the bandwidth
// filter, and the end of the timeout's recovery restores the old window.
func TestBBRRTOKeepsModel(t *testing.T) {
	n := newSimNet(t, 100, 30*time.Millisecond, 0)
	n.run(3 * time.Second)
	bw, rounds, before := n.m.bw.get(), n.m.roundCount, n.m.cwnd
	n.m.onRTO()
	if n.m.cwnd != bbrMinPipeCwnd {
		t.Fatalf("cwnd after RTO %d, want %d", n.m.cwnd, bbrMinPipeCwnd)
	}
	// 200 ACKs re-acknowledging 10 packets each, no samples.
	for range 200 {
		n.m.onAck(bbrAck{now: n.now, inflight: 0, acked: 10 * simMSS})
	}
	if n.m.roundCount != rounds || n.m.bw.get() != bw {
		t.Errorf("unsampled ACKs moved the model: rounds %d -> %d, bw %.1f -> %.1f Mbit/s", rounds, n.m.roundCount, bw*8/1e6, n.m.bw.get()*8/1e6)
	}
	if n.m.cwnd < before/2 {
		t.Errorf("cwnd %d after re-acknowledged data, was %d before the RTO: it did not grow back", n.m.cwnd, before)
	}
	n.m.onExitRecovery()
	if n.m.cwnd < before {
		t.Errorf("cwnd %d after the RTO's recovery, %d before it", n.m.cwnd, before)
	}
	if got := n.goodput(2 * time.Second); got < 0.9*n.payloadRate() {
		t.Errorf("goodput after the RTO %.1f Mbit/s of %.1f", got*8/1e6, n.payloadRate()*8/1e6)
	}
}

// TestBBRCongestedRoundBoundsBandwidth: a round losing far more than random
// loss would (here 15%) is congestion: it ends startup, and in probe-bw it
// bounds the bandwidth (bwLo) below the max filter; once the loss is gone
// the next probe drops the bound and the link is used fully again.
func TestBBRCongestedRoundBoundsBandwidth(t *testing.T) {
	n := newSimNet(t, 100, 30*time.Millisecond, 0.15)
	n.run(time.Second)
	if !n.m.filledPipe || n.m.mode == bbrStartup {
		t.Errorf("startup still on after 1 s at 15%% loss (mode %s)", n.m.mode)
	}
	n.loss = 0
	n.run(3 * time.Second)
	var bounded bool
	n.onAck = func(n *simNet) {
		if n.m.bwLo > 0 && n.m.bwLo < n.m.bw.get() {
			bounded = true
		}
	}
	n.loss = 0.15
	n.run(time.Second)
	if !bounded {
		t.Errorf("15%% loss in probe-bw never bounded the bandwidth (bw %.1f Mbit/s)", n.m.bw.get()*8/1e6)
	}
	n.onAck = nil
	n.loss = 0
	n.run(2 * time.Second)
	if got := n.goodput(2 * time.Second); got < 0.9*n.payloadRate() {
		t.Errorf("after the congestion ended: %.1f Mbit/s of %.1f (bwLo %.1f)", got*8/1e6, n.payloadRate()*8/1e6, n.m.bwLo*8/1e6)
	}
}

// TestBBRDrainsStandingQueue: with a bottleneck whose rate varies by 5%
// the bandwidth filter runs a few percent above its mean, so pacing at the
// estimate builds a queue in every cruise phase (as on the WAN bench, where
// the estimate ran 2-4% above the delivery rate). Probe-bw's draining
// phase must remove it (it lasts until the flight is down to the BDP): over
// 20 s on a path with one BDP of buffer, the queue's median delay stays
// under a quarter of the RTT and nothing is tail-dropped. With v1's
// one-round drain the queue grew to the window's bound (two BDPs of flight)
// and probes overflowed it.
func TestBBRDrainsStandingQueue(t *testing.T) {
	n := newSimNet(t, 100, 30*time.Millisecond, 0)
	n.rateJitter = 0.05
	n.run(5 * time.Second)
	n.tailDrops = 0
	var delays []time.Duration
	n.queueDelay = func(d time.Duration) { delays = append(delays, d) }
	got := n.goodput(20 * time.Second)
	slices.Sort(delays)
	median := delays[len(delays)/2]
	p99 := delays[len(delays)*99/100]
	t.Logf("goodput %.1f of %.1f Mbit/s, bw estimate %.1f, queue delay median %v p99 %v, tail drops %d",
		got*8/1e6, n.payloadRate()*8/1e6, n.m.bw.get()*8/1e6, median, p99, n.tailDrops)
	if median > 30*time.Millisecond/4 {
		t.Errorf("median queue delay %v: a standing queue (RTT 30ms)", median)
	}
	if n.tailDrops > 0 {
		t.Errorf("%d tail drops in steady state with one BDP of buffer", n.tailDrops)
	}
	if got < 0.95*n.payloadRate() {
		t.Errorf("goodput %.1f Mbit/s, under 95%% of the link's %.1f", got*8/1e6, n.payloadRate()*8/1e6)
	}
}

// TestBBRStartupFitsOneBDPQueue: startup doubles its rate each round and
// overshoots in the last one; its window (twice the measured BDP) must
// bound that overshoot to about what a one-BDP queue holds: fewer tail
// drops than a BDP. (With v1's 2.89 window gain: 643 drops against a BDP
// of 257 here; with 2.0, 185. On the WAN bench the larger burst took
// gVisor's recovery up to a second to repair.)
func TestBBRStartupFitsOneBDPQueue(t *testing.T) {
	n := newSimNet(t, 100, 30*time.Millisecond, 0)
	var peak int
	n.onAck = func(n *simNet) { peak = max(peak, n.flight) }
	n.run(2 * time.Second)
	bdp := n.bdpPackets()
	t.Logf("startup: peak flight %d packets (BDP %.0f), tail drops %d, mode %s", peak, bdp, n.tailDrops, n.m.mode)
	if n.m.mode != bbrProbeBW {
		t.Errorf("mode %s after 2s, want probe-bw", n.m.mode)
	}
	if float64(n.tailDrops) >= bdp {
		t.Errorf("%d tail drops in startup, a BDP (%.0f packets) or more", n.tailDrops, bdp)
	}
}

// TestBBRACKJitterKeepsNoStandingQueue: ACK times in our stacks are
// jittered by scheduling, and a sample whose interval starts at a late ACK
// runs high. With every sample in the max filter, the estimate (seeded
// simulation, so the figures are exact) sat 1.010x / 1.018x / 1.032x the
// path's rate with 0.5 / 1 / 2 ms of jitter, and the queue's median delay
// grew with it, 2.74 / 3.38 / 4.06 ms over 20 s. With each round's
// 4th-highest sample: 1.009x / 1.015x / 1.020x and 2.52 / 2.85 / 2.99 ms,
// the link as full. The test wants under 3.2 ms, an estimate within 2.5%,
// no tail drops and 97% of the link.
func TestBBRACKJitterKeepsNoStandingQueue(t *testing.T) {
	for _, jitter := range []time.Duration{500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond} {
		n := newSimNet(t, 100, 30*time.Millisecond, 0)
		n.ackJitter = jitter
		n.run(5 * time.Second)
		n.tailDrops = 0
		var delays []time.Duration
		n.queueDelay = func(d time.Duration) { delays = append(delays, d) }
		got := n.goodput(20 * time.Second)
		slices.Sort(delays)
		median := delays[len(delays)/2]
		t.Logf("ack jitter %v: goodput %.1f of %.1f Mbit/s, bw estimate %.3fx, queue delay median %v p99 %v, tail drops %d",
			jitter, got*8/1e6, n.payloadRate()*8/1e6, n.m.bw.get()/n.payloadRate(), median, delays[len(delays)*99/100], n.tailDrops)
		if median > 3200*time.Microsecond {
			t.Errorf("ack jitter %v: median queue delay %v, a standing queue", jitter, median)
		}
		if n.tailDrops > 0 {
			t.Errorf("ack jitter %v: %d tail drops in steady state", jitter, n.tailDrops)
		}
		if est := n.m.bw.get() / n.payloadRate(); est > 1.025 {
			t.Errorf("ack jitter %v: bandwidth estimate %.3fx the path's rate", jitter, est)
		}
		if got < 0.97*n.payloadRate() {
			t.Errorf("ack jitter %v: goodput %.1f Mbit/s, under 97%% of the link's %.1f", jitter, got*8/1e6, n.payloadRate()*8/1e6)
		}
	}
}

func TestRankFilter(t *testing.T) {
	var f rankFilter
	if _, ok := f.get(); ok {
		t.Fatal("a round without samples gave one")
	}
	for _, v := range []float64{5, 1, 9} {
		f.add(v)
	}
	if v, _ := f.get(); v != 9 {
		t.Errorf("3 samples: %v, want the highest (9)", v)
	}
	f = rankFilter{}
	for i := range 100 {
		f.add(float64((i * 37) % 100)) // 0-99, shuffled
	}
	if v, _ := f.get(); v != 96 {
		t.Errorf("100 samples: %v, want the 4th highest (96)", v)
	}
	f = rankFilter{}
	for i := range 25 {
		f.add(float64(i))
	}
	if v, _ := f.get(); v != 23 {
		t.Errorf("25 samples: %v, want the 2nd highest (23)", v)
	}
}
