package netstack

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// wanLink joins two stacks as an emulated WAN would: each way, random loss,
// a rate cap on an absolute schedule with a bounded (tail-drop) queue, and
// a fixed delay. All in process, bounded by the stacks' lifetimes.
type wanLink struct {
	delay time.Duration // one way
	loss  float64
	rate  float64       // bytes per second
	queue time.Duration // the most a packet may wait behind the cap
	seed  uint64
	// inspect, if set, sees every packet either stack sends, before loss;
	// it is called from the two reading goroutines at once.
	inspect func([]byte)
	wg      sync.WaitGroup
}

type wanPacket struct {
	due  time.Time
	data []byte
}

func (l *wanLink) start(t *testing.T, a, b *Stack) {
	t.Helper()
	l.wg.Add(4)
	ab := make(chan wanPacket, 1<<14)
	ba := make(chan wanPacket, 1<<14)
	go l.read(a, ab, l.seed)
	go l.read(b, ba, l.seed+1)
	go l.deliver(ab, b)
	go l.deliver(ba, a)
	t.Cleanup(func() { a.Close(); b.Close(); l.wg.Wait() })
}

// read takes packets from one stack, drops or schedules them.
func (l *wanLink) read(from *Stack, out chan<- wanPacket, seed uint64) {
	defer l.wg.Done()
	defer close(out)
	rng := rand.New(rand.NewPCG(seed, 42))
	bufs := make([][]byte, BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, BatchSize)
	var free time.Time // when the bottleneck is free again
	for {
		n, err := from.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		now := time.Now()
		for i := range n {
			if l.inspect != nil {
				l.inspect(bufs[i][:sizes[i]])
			}
			if rng.Float64() < l.loss {
				continue
			}
			if free.Before(now) {
				free = now
			}
			if free.Sub(now) > l.queue {
				continue // tail drop
			}
			free = free.Add(time.Duration(float64(sizes[i]) / l.rate * float64(time.Second)))
			select {
			case out <- wanPacket{due: free.Add(l.delay), data: append([]byte(nil), bufs[i][:sizes[i]]...)}:
			default: // the emulator's own queue is full: a drop
			}
		}
	}
}

// deliver writes packets into the other stack when they are due, in
// batches of what is due together.
func (l *wanLink) deliver(in <-chan wanPacket, to *Stack) {
	defer l.wg.Done()
	var batch [][]byte
	for p := range in {
		if d := time.Until(p.due); d > 0 {
			time.Sleep(d)
		}
		batch = append(batch[:0], p.data)
	more:
		for len(batch) < BatchSize {
			select {
			case q, ok := <-in:
				if !ok {
					break more
				}
				if time.Until(q.due) > 0 {
					to.Write(batch, 0)
					time.Sleep(time.Until(q.due))
					batch = batch[:0]
				}
				batch = append(batch, q.data)
			default:
				break more
			}
		}
		if _, err := to.Write(batch, 0); err != nil {
			for range in {
			}
			return
		}
	}
}

// wanPair joins two stacks, 192.0.2.1 and .2, running congestion control
// cc ("" for the default) through link, and listens on port 80 of the
// second.
func wanPair(t *testing.T, cc string, link *wanLink) (*Stack, net.Listener) {
	t.Helper()
	a, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, CongestionControl: cc})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.2")}, CongestionControl: cc})
	if err != nil {
		t.Fatal(err)
	}
	link.start(t, a, b)
	ln, err := b.ListenTCP(netip.MustParseAddrPort("0.0.0.0:80"))
	if err != nil {
		t.Fatal(err)
	}
	return a, ln
}

// wanThroughput moves data one way for d over a wanLink between two stacks
// running congestion control cc, and returns the receiver's goodput in
// bytes per second.
func wanThroughput(t *testing.T, cc string, link *wanLink, d time.Duration) float64 {
	t.Helper()
	a, ln := wanPair(t, cc, link)
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(d + 5*time.Second))
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("192.0.2.2:80"))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	start := time.Now()
	c.SetWriteDeadline(start.Add(d))
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	// What arrived by the deadline counts: abort rather than drain.
	elapsed := time.Since(start)
	c.ep.Abort()
	c.Close()
	n := <-got
	return float64(n) / elapsed.Seconds()
}

// TestBBRKeepsThroughputUnderLoss is the end-to-end check of the default
// congestion control: over a 20 ms, 40 Mbit/s link with 1% random loss each
// way, Reno is held near its loss limit (MSS/RTT x 1.22/sqrt(p), about 7
// Mbit/s), while BBR keeps most of the link. Only a generous ratio is
// asserted, not a rate: the machine may be slow (the figures go to the log).
// A trial runs Reno and BBR in turn; up to three trials (each with its own
// loss pattern) are run until one shows the ratio, because on a busy
// machine a trial sometimes starves both (reno 2.1 and bbr 1.6 Mbit/s in
// one trial, seen before this test retried), while a BBR that behaved like
// Reno would miss in all three.
func TestBBRKeepsThroughputUnderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("moves data for seconds")
	}
	const d = 4 * time.Second
	var reno, bbr float64
	for trial := range uint64(3) {
		link := func() *wanLink {
			return &wanLink{delay: 10 * time.Millisecond, loss: 0.01, rate: 40e6 / 8, queue: 20 * time.Millisecond, seed: 7 + 100*trial}
		}
		reno = wanThroughput(t, "reno", link(), d)
		bbr = wanThroughput(t, "bbr", link(), d)
		t.Logf("trial %d, 20 ms, 40 Mbit/s, 1%% loss: reno %.1f Mbit/s, bbr %.1f Mbit/s", trial+1, reno*8/1e6, bbr*8/1e6)
		if bbr >= 2*reno {
			return
		}
	}
	t.Errorf("bbr %.1f Mbit/s is not at least twice reno's %.1f under 1%% loss, in three trials", bbr*8/1e6, reno*8/1e6)
}
