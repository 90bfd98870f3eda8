package main

import (
	"math"
	"testing"
	"time"
)

const mbit100 = 100e6

// tx1514 is a full frame's time at 100 Mbit/s: 121.12 µs.
var tx1514 = txTime(1514, mbit100)

func TestLinkModelRateAndDelay(t *testing.T) {
	p := linkParams{Rate: mbit100, Delay: 15 * time.Millisecond, Queue: time.Second}
	m := newLinkModel(p, 1)
	// 100 full frames at once: they leave back to back at the rate, each
	// arriving a delay after its departure; the credit (two frames) lets
	// the first ones go together, never before their own transmission.
	var prev time.Duration
	for i := range 100 {
		at, f := m.admit(0, 1514)
		if f != delivered {
			t.Fatalf("frame %d: %v, want delivered", i, f)
		}
		if at < prev {
			t.Fatalf("frame %d delivered at %s, before frame %d (%s)", i, at, i-1, prev)
		}
		prev = at
		want := p.Delay + max(time.Duration(i+1)*tx1514-m.credit, tx1514)
		if d := at - want; d < -time.Microsecond || d > time.Microsecond {
			t.Fatalf("frame %d delivered at %s, want %s", i, at, want)
		}
	}
	// 100 frames in (100 x 121.12 µs - the 2-frame credit): 100 Mbit/s.
	got := float64(100*1514*8) / (prev - p.Delay).Seconds()
	if math.Abs(got/mbit100-1) > 0.03 {
		t.Errorf("rate %.1f Mbit/s, want 100", got/1e6)
	}
}

func TestLinkModelIdleLinkOnlyDelays(t *testing.T) {
	p := linkParams{Rate: mbit100, Delay: 15 * time.Millisecond, Queue: 30 * time.Millisecond}
	m := newLinkModel(p, 1)
	// Frames far apart never queue: each arrives one delay plus its own
	// transmission later, the credit never makes one early.
	for i := range 10 {
		now := time.Duration(i) * 10 * time.Millisecond
		at, f := m.admit(now, 100)
		if want := now + p.Delay + txTime(100, mbit100); f != delivered || at != want {
			t.Fatalf("frame at %s: %v at %s, want delivered at %s", now, f, at, want)
		}
	}
}

func TestLinkModelNoRateCap(t *testing.T) {
	m := newLinkModel(linkParams{Delay: 50 * time.Millisecond}, 1)
	for i := range 1000 {
		now := time.Duration(i) * time.Microsecond
		if at, f := m.admit(now, 1514); f != delivered || at != now+50*time.Millisecond {
			t.Fatalf("frame %d: %v at %s", i, f, at)
		}
	}
}

func TestLinkModelQueueBound(t *testing.T) {
	p := linkParams{Rate: mbit100, Delay: time.Millisecond, Queue: 3 * time.Millisecond}
	m := newLinkModel(p, 1)
	// A burst of 1000 frames at once: the bottleneck holds 3 ms worth
	// (24.8 frames of 1514 bytes) plus the credit and the one going out.
	ok, dropped := 0, 0
	for range 1000 {
		if _, f := m.admit(0, 1514); f == delivered {
			ok++
		} else if f == lostQueue {
			dropped++
		} else {
			t.Fatalf("fate %v without loss configured", f)
		}
	}
	want := int((p.Queue+m.credit)/tx1514) + 1
	if ok != want || dropped != 1000-want {
		t.Errorf("%d delivered, %d dropped; want %d delivered", ok, dropped, want)
	}
	// Once the queue has drained, frames pass again.
	if _, f := m.admit(10*time.Millisecond, 1514); f != delivered {
		t.Errorf("after the queue drained: %v", f)
	}
	// A sender at twice the rate keeps the queue full: about half its
	// frames are dropped, and what passes leaves at the link rate.
	m = newLinkModel(p, 1)
	ok = 0
	var last time.Duration
	const n = 20000
	for i := range n {
		now := time.Duration(i) * tx1514 / 2
		if at, f := m.admit(now, 1514); f == delivered {
			ok++
			last = at
		}
	}
	if frac := float64(ok) / n; frac < 0.49 || frac > 0.51 {
		t.Errorf("at twice the rate %.3f of the frames passed, want about 0.5", frac)
	}
	if got := float64(ok*1514*8) / (last - p.Delay).Seconds(); math.Abs(got/mbit100-1) > 0.01 {
		t.Errorf("overloaded link ran at %.2f Mbit/s, want 100", got/1e6)
	}
	if m.maxBacklog > p.Queue+tx1514 {
		t.Errorf("longest wait %s exceeds the queue %s", m.maxBacklog, p.Queue)
	}
}

func TestLinkModelLoss(t *testing.T) {
	for _, loss := range []float64{0, 0.001, 0.01, 0.2} {
		m := newLinkModel(linkParams{Rate: mbit100, Delay: time.Millisecond, Queue: time.Second, Loss: loss}, 7)
		const n = 200_000
		lost := 0
		for i := range n {
			// Slower than the rate: nothing is tail-dropped.
			_, f := m.admit(time.Duration(i)*200*time.Microsecond, 1514)
			switch f {
			case lostRandom:
				lost++
			case lostQueue:
				t.Fatalf("loss %g: a tail drop on an idle link", loss)
			}
		}
		// Binomial: 4 standard deviations, plus one frame.
		sd := math.Sqrt(n * loss * (1 - loss))
		if d := math.Abs(float64(lost) - n*loss); d > 4*sd+1 {
			t.Errorf("loss %g: %d of %d lost, want %.0f ± %.0f", loss, lost, n, n*loss, 4*sd)
		}
	}
	// The same seed gives the same losses; another seed others.
	pattern := func(seed uint64) []int {
		m := newLinkModel(linkParams{Delay: time.Millisecond, Loss: 0.05}, seed)
		var out []int
		for i := range 2000 {
			if _, f := m.admit(time.Duration(i), 100); f == lostRandom {
				out = append(out, i)
			}
		}
		return out
	}
	a, b, c := pattern(3), pattern(3), pattern(4)
	if len(a) == 0 || !equalInts(a, b) || equalInts(a, c) {
		t.Errorf("seeded loss patterns: seed 3 %v / %v, seed 4 %v", len(a), len(b), len(c))
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLinkModelFramesNeverOvertake(t *testing.T) {
	m := newLinkModel(linkParams{Rate: mbit100, Delay: 5 * time.Millisecond, Queue: 30 * time.Millisecond}, 1)
	// A full frame then small ones at the same instant: the small ones
	// are scheduled after it, as on a real wire.
	first, _ := m.admit(time.Millisecond, 1514)
	for range 5 {
		at, f := m.admit(time.Millisecond, 60)
		if f != delivered || at < first {
			t.Fatalf("a 60-byte frame delivered at %s, before the 1514-byte one ahead of it (%s)", at, first)
		}
		first = at
	}
}

func TestLinkParamsValidate(t *testing.T) {
	good := linkParams{Rate: mbit100, Delay: 15 * time.Millisecond, Queue: 30 * time.Millisecond, Loss: 0.01}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []linkParams{
		{Rate: -1, Queue: time.Millisecond},
		{Rate: mbit100, Delay: -time.Millisecond, Queue: time.Millisecond},
		{Rate: mbit100, Loss: 1, Queue: time.Millisecond},
		{Rate: mbit100, Loss: math.NaN(), Queue: time.Millisecond},
		{Rate: mbit100}, // a rate cap needs a queue
	} {
		if err := p.validate(); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
}

// TestPumpAbsoluteSchedule drives a pump as the emulator's loop does,
// but on a clock that oversleeps every wait by a fixed amount, as a busy
// machine does: the link must still run at its rate.
func TestPumpAbsoluteSchedule(t *testing.T) {
	p := linkParams{Rate: mbit100, Delay: 15 * time.Millisecond, Queue: time.Second}
	for _, over := range []time.Duration{0, 50 * time.Microsecond, 300 * time.Microsecond, 2 * time.Millisecond} {
		pm := newPump(p, 1, 1<<14)
		const n = 5000
		for range n {
			if !pm.arrive(0, frame{n: 1514}) {
				t.Fatal("frame refused")
			}
		}
		var now time.Duration
		var sent []time.Duration
		wakeups := 0
		for {
			pm.flush(now, func(f frame) {
				if now < f.at {
					t.Fatalf("frame due at %s sent early at %s", f.at, now)
				}
				sent = append(sent, now)
			})
			at, ok := pm.next()
			if !ok {
				break
			}
			now = max(now, at) + over // the wait, overslept
			wakeups++
		}
		if len(sent) != n {
			t.Fatalf("%d of %d frames sent", len(sent), n)
		}
		// However late each wake-up, the last frame goes out at most one
		// oversleep after its time: the rate is the link's.
		ideal := p.Delay + n*tx1514 - pm.model.credit
		if end := sent[n-1]; end > ideal+over+time.Microsecond {
			t.Errorf("oversleep %s: last frame at %s, want by %s (rate %.1f Mbit/s)", over, end, ideal+over,
				float64(n*1514*8)/(end-p.Delay).Seconds()/1e6)
		}
		if pm.late.max > over+time.Microsecond {
			t.Errorf("oversleep %s: a frame %s late", over, pm.late.max)
		}
		// With an oversleep above a frame time, due frames go in bursts.
		if over > tx1514 && wakeups > n/2 {
			t.Errorf("oversleep %s: %d wake-ups for %d frames; due frames should go together", over, wakeups, n)
		}
	}
}

func TestPumpDrops(t *testing.T) {
	// Random loss and tail drops are counted and refused; so is a frame
	// beyond the ring's capacity, and the ring keeps its order.
	pm := newPump(linkParams{Rate: mbit100, Delay: time.Millisecond, Queue: time.Second, Loss: 0.5}, 1, 8)
	accepted := 0
	for i := range 100 {
		if pm.arrive(0, frame{n: 100 + i}) {
			accepted++
		}
	}
	if accepted != 8 || pm.overflow == 0 || pm.lost == 0 || int64(accepted)+pm.overflow+pm.lost != 100 {
		t.Errorf("accepted %d, overflow %d, lost %d of 100 into a ring of 8", accepted, pm.overflow, pm.lost)
	}
	prev := -1
	pm.flush(time.Hour, func(f frame) {
		if f.n <= prev {
			t.Errorf("frame %d came out after %d", f.n, prev)
		}
		prev = f.n
	})
	if _, ok := pm.next(); ok {
		t.Error("ring not empty")
	}
	tail := newPump(linkParams{Rate: mbit100, Delay: time.Millisecond, Queue: time.Millisecond}, 1, 1024)
	for range 100 {
		tail.arrive(0, frame{n: 1514})
	}
	if tail.tail == 0 || tail.n+int(tail.tail) != 100 {
		t.Errorf("queue of 1 ms: %d queued, %d tail-dropped of 100", tail.n, tail.tail)
	}
}

func TestLatenessQuantiles(t *testing.T) {
	var l lateness
	if l.quantile(0.5) != 0 {
		t.Error("empty histogram")
	}
	for i := range 100 {
		l.add(time.Duration(i) * time.Microsecond) // 0..99 µs
	}
	l.add(time.Second) // beyond the last bucket
	if q := l.quantile(0.5); q != 60*time.Microsecond {
		t.Errorf("p50 %s, want the 50-60 µs bucket's top", q)
	}
	if q := l.quantile(0.99); q != 100*time.Microsecond {
		t.Errorf("p99 %s", q)
	}
	if q := l.quantile(1); q != time.Second || l.max != time.Second {
		t.Errorf("p100 %s, max %s", q, l.max)
	}
}
