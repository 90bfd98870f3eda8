package main

// The WAN emulator's logic, free of sockets and of the real clock so that
// it can be tested deterministically: what happens to each frame on one
// direction of the link (linkModel) and when it leaves (deliver). The
// sockets are in emulator.go.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// linkParams describe one direction of the emulated link.
type linkParams struct {
	// Rate is the bottleneck's rate in bit/s, counted over whole Ethernet
	// frames as the emulator sees them (14-byte header included, no
	// preamble or FCS); 0 is no cap.
	Rate float64
	// Delay is the one-way propagation delay, added after the bottleneck.
	Delay time.Duration
	// Loss is the probability that a frame is lost (independently of all
	// others), decided as it arrives, before the queue, as netem does.
	Loss float64
	// Queue bounds the bottleneck's backlog, as time at Rate: a frame that
	// would wait longer than Queue before it starts to go out is dropped
	// (tail drop). 30 ms at 100 Mbit/s is 375,000 bytes, 247 full frames.
	Queue time.Duration
}

func (p linkParams) validate() error {
	var errs []error
	if p.Rate < 0 || p.Rate > 100e9 {
		errs = append(errs, fmt.Errorf("rate %g bit/s out of range 0-100e9", p.Rate))
	}
	if p.Delay < 0 || p.Delay > 10*time.Second {
		errs = append(errs, fmt.Errorf("delay %s out of range 0-10s", p.Delay))
	}
	if !(p.Loss >= 0 && p.Loss < 1) {
		errs = append(errs, fmt.Errorf("loss %g out of range [0, 1)", p.Loss))
	}
	if p.Queue < 0 || p.Queue > 10*time.Second || (p.Rate > 0 && p.Queue == 0) {
		errs = append(errs, fmt.Errorf("queue %s out of range (0, 10s]", p.Queue))
	}
	return errors.Join(errs...)
}

// txTime is how long size bytes take at rate bit/s.
func txTime(size int, rate float64) time.Duration {
	return time.Duration(float64(size) * 8 / rate * 1e9)
}

// creditBytes is how far (in bytes at the link rate) the bottleneck's
// schedule may lag behind now after the queue ran empty: two full frames.
// It gives back link time that a reader woken a little late would
// otherwise lose, without letting a burst through at more than the rate
// for longer than that.
const creditBytes = 2 * 1514

// fate is what the link does with one frame.
type fate int

const (
	delivered  fate = iota
	lostRandom      // the random loss
	lostQueue       // tail drop at the bottleneck
)

// linkModel is one direction of the link. Its schedule is absolute: the
// bottleneck is busy until free, and every frame's departure follows from
// the previous one's, not from when anything actually woke up, so timer
// oversleep never lowers the rate.
type linkModel struct {
	p      linkParams
	rng    *rand.Rand
	credit time.Duration
	free   time.Duration // when the bottleneck has sent all it holds
	last   time.Duration // the latest departure: frames never overtake
	// maxBacklog is the longest wait before departure seen so far.
	maxBacklog time.Duration
}

func newLinkModel(p linkParams, seed uint64) *linkModel {
	// Idle since forever: the first frame is scheduled like any after a pause.
	const longAgo = -1 << 62
	m := &linkModel{p: p, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), free: longAgo, last: longAgo}
	if p.Rate > 0 {
		m.credit = txTime(creditBytes, p.Rate)
	}
	return m
}

// admit decides the fate of a frame of size bytes that arrives at now, and
// for a delivered one the time at which it leaves the far end of the link.
// Delivery times never decrease from one frame to the next.
func (m *linkModel) admit(now time.Duration, size int) (at time.Duration, f fate) {
	if m.p.Loss > 0 && m.rng.Float64() < m.p.Loss {
		return 0, lostRandom
	}
	depart := now
	if m.p.Rate > 0 {
		tx := txTime(size, m.p.Rate)
		start := max(m.free, now-m.credit)
		if start-now > m.p.Queue {
			return 0, lostQueue
		}
		m.free = start + tx
		// The credit lets the schedule catch up, but nothing leaves
		// before it has arrived and been sent.
		depart = max(m.free, now+tx)
	}
	depart = max(depart, m.last)
	m.last = depart
	m.maxBacklog = max(m.maxBacklog, depart-now)
	return depart + m.p.Delay, delivered
}

// frame is one Ethernet frame on its way through the emulator.
type frame struct {
	at  time.Duration // when it leaves the far end
	buf *[]byte       // the emulator's buffer; data is (*buf)[:n]
	n   int
}

// lateness is a histogram of how late frames went out, in 10 µs buckets.
type lateness struct {
	buckets [1000]int64 // [i*10µs, (i+1)*10µs); the last one takes the rest
	max     time.Duration
	n       int64
}

func (l *lateness) add(d time.Duration) {
	d = max(d, 0)
	l.buckets[min(int(d/(10*time.Microsecond)), len(l.buckets)-1)]++
	l.max = max(l.max, d)
	l.n++
}

// quantile is the upper edge of the bucket holding the q-quantile.
func (l *lateness) quantile(q float64) time.Duration {
	if l.n == 0 {
		return 0
	}
	want := int64(q*float64(l.n-1)) + 1
	var seen int64
	for i, c := range l.buckets {
		if seen += c; seen >= want {
			if i == len(l.buckets)-1 {
				return l.max
			}
			return min(time.Duration(i+1)*10*time.Microsecond, l.max)
		}
	}
	return l.max
}

// pump is one direction of the emulator without its sockets: the link
// model and the frames on their way (queued or on the wire, in the order
// they leave), in a bounded ring. One thread owns it; times are passed in.
type pump struct {
	model      *linkModel
	ring       []frame
	head, n    int
	late       lateness
	lost, tail int64 // frames lost at random, tail-dropped
	overflow   int64 // frames refused because the ring was full
}

func newPump(p linkParams, seed uint64, capacity int) *pump {
	return &pump{model: newLinkModel(p, seed), ring: make([]frame, capacity)}
}

// arrive takes a frame that came in at now; false means it was dropped
// (and its buffer is the caller's again).
func (p *pump) arrive(now time.Duration, f frame) bool {
	at, fate := p.model.admit(now, f.n)
	switch {
	case fate == lostRandom:
		p.lost++
		return false
	case fate == lostQueue:
		p.tail++
		return false
	case p.n == len(p.ring):
		p.overflow++
		return false
	}
	f.at = at
	p.ring[(p.head+p.n)%len(p.ring)] = f
	p.n++
	return true
}

// next is when the first frame on its way is due.
func (p *pump) next() (time.Duration, bool) {
	if p.n == 0 {
		return 0, false
	}
	return p.ring[p.head].at, true
}

// flush passes every frame due at now to send, in order. The schedule is
// the frames' own absolute times, so after a late wake-up every frame
// whose time has come goes at once: lateness delays frames but never
// accumulates into a lower rate.
func (p *pump) flush(now time.Duration, send func(frame)) {
	for {
		f, ok := p.due(now)
		if !ok {
			return
		}
		send(f)
	}
}

// due removes and returns the first frame if it is due at now.
func (p *pump) due(now time.Duration) (frame, bool) {
	if p.n == 0 || p.ring[p.head].at > now {
		return frame{}, false
	}
	f := p.ring[p.head]
	p.ring[p.head] = frame{}
	p.head = (p.head + 1) % len(p.ring)
	p.n--
	p.late.add(now - f.at)
	return f, true
}
