package forward

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// ftPoller stands in for netstack's NotifyReadable: one goroutine (started
// by the test) polls the registered sockets, so that a join's own
// goroutines can be counted.
type ftPoller struct {
	mu      sync.Mutex
	waiting map[*ftNotifyConn]func()
	stop    chan struct{}
	done    chan struct{}
}

func newFtPoller(t *testing.T) *ftPoller {
	p := &ftPoller{waiting: map[*ftNotifyConn]func(){}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			p.mu.Lock()
			for c, f := range p.waiting {
				if c.readable() {
					delete(p.waiting, c)
					go f()
				}
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(p.stop); <-p.done })
	return p
}

type ftNotifyConn struct {
	*net.TCPConn
	p *ftPoller
}

func (c *ftNotifyConn) NotifyReadable(f func()) func() {
	c.p.mu.Lock()
	c.p.waiting[c] = f
	c.p.mu.Unlock()
	return func() {
		c.p.mu.Lock()
		delete(c.p.waiting, c)
		c.p.mu.Unlock()
	}
}

func (c *ftNotifyConn) readable() bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	ready := true
	var b [1]byte
	rc.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ready = err != syscall.EAGAIN
	})
	return ready
}

func ftExchange(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if err := ftSendOne(from, to, []byte(msg)); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
}

// An idle join holds no copying goroutine: with one source that calls
// back (as netstack's connections do) and one kernel socket, JoinThen
// leaves one goroutine, waiting for the kernel socket, and none of the
// caller's.
func TestJoinIdleHoldsOnlyTheKernelWaiter(t *testing.T) {
	ftCheckGoroutines(t)
	p := newFtPoller(t)
	aPeer, a := ftTCPPair(t)
	b, bPeer := ftTCPPair(t)
	before := runtime.NumGoroutine()
	done := make(chan Joined, 1)
	JoinThen(&ftNotifyConn{TCPConn: a, p: p}, b, Timeouts{}, Meter{}, func(r Joined) { done <- r })
	ftExchange(t, aPeer, bPeer, "hello")
	ftExchange(t, bPeer, aPeer, "world")
	ftWaitFor(t, 50*quietAfter, "the copiers to end", func() bool { return runtime.NumGoroutine() <= before+1 })
	// And it still copies both ways, more than once.
	for range 2 {
		ftExchange(t, bPeer, aPeer, "again from b")
		ftExchange(t, aPeer, bPeer, "again from a")
		time.Sleep(quietAfter * 3 / 2)
		ftWaitFor(t, 50*quietAfter, "the copiers to end", func() bool { return runtime.NumGoroutine() <= before+1 })
	}
	aPeer.Close()
	bPeer.Close()
	ftWaitJoin(t, done, ftPrompt)
}

// JoinThen calls back once, after both connections are closed, also when
// neither side can report readiness (then it copies with goroutines).
func TestJoinThenCallsBackAfterClosing(t *testing.T) {
	ftCheckGoroutines(t)
	for _, name := range []string{"reactive", "goroutines"} {
		t.Run(name, func(t *testing.T) {
			aPeer, a := ftTCPPair(t)
			b, bPeer := ftTCPPair(t)
			var ca, cb net.Conn = a, b
			if name == "goroutines" {
				ca, cb = ftPlainConn{a}, ftPlainConn{b}
			}
			var calls atomic.Int32
			done := make(chan Joined, 2)
			JoinThen(ca, cb, Timeouts{}, Meter{}, func(r Joined) {
				calls.Add(1)
				// Both are closed by now: their peers see the end.
				if _, err := a.Write([]byte("x")); err == nil {
					t.Error("a still open when then ran")
				}
				if _, err := b.Write([]byte("x")); err == nil {
					t.Error("b still open when then ran")
				}
				done <- r
			})
			ftExchange(t, aPeer, bPeer, "one")
			ftExchange(t, bPeer, aPeer, "two")
			aPeer.Close()
			bPeer.Close()
			res := ftWaitJoin(t, done, ftPrompt)
			if res.AToB != 3 || res.BToA != 3 {
				t.Errorf("copied %d and %d bytes, want 3 and 3", res.AToB, res.BToA)
			}
			time.Sleep(10 * time.Millisecond)
			if n := calls.Load(); n != 1 {
				t.Errorf("then called %d times", n)
			}
		})
	}
}

// ftPlainConn hides the TCP socket, so that Join cannot wait for it.
type ftPlainConn struct{ net.Conn }

// With two kernel sockets, both directions must wake from readiness in
// either order (the joining goroutine can wait for only one of them).
func TestJoinWakesBothKernelDirections(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{})
	time.Sleep(quietAfter * 3 / 2)
	ftExchange(t, bPeer, aPeer, "b first")
	time.Sleep(quietAfter * 3 / 2)
	ftExchange(t, aPeer, bPeer, "then a")
	ftExchange(t, bPeer, aPeer, "b again")
	time.Sleep(quietAfter * 3 / 2)
	ftExchange(t, aPeer, bPeer, "a first")
	aPeer.Close()
	bPeer.Close()
	ftWaitJoin(t, done, ftPrompt)
}

// A quiet join still ends on its idle limit.
func TestJoinIdleTimeoutWhileParked(t *testing.T) {
	ftCheckGoroutines(t)
	p := newFtPoller(t)
	aPeer, a := ftTCPPair(t)
	b, bPeer := ftTCPPair(t)
	done := make(chan Joined, 1)
	go func() { done <- Join(&ftNotifyConn{TCPConn: a, p: p}, b, Timeouts{Idle: 2 * quietAfter}) }()
	ftExchange(t, aPeer, bPeer, "x")
	res := ftWaitJoin(t, done, 4*quietAfter+ftPrompt)
	if !errors.Is(res.Err, ErrIdle) {
		t.Fatalf("Join ended with %v, want ErrIdle", res.Err)
	}
	ftExpectClosed(t, aPeer, ftPrompt)
	ftExpectClosed(t, bPeer, ftPrompt)
}

// ftPolledJoin joins a calling-back connection (a) and a kernel socket (b)
// with a readiness poller, as the gateway and connector do; the poller
// (new if nil) is closed at cleanup.
func ftPolledJoin(t *testing.T, tm Timeouts, poll *readyPoller) (aPeer, bPeer net.Conn, closer io.Closer, done chan Joined) {
	t.Helper()
	if !canPollReady {
		t.Skip("no readiness poller on this platform")
	}
	p := newFtPoller(t)
	if poll == nil {
		poll = newReadyPoller()
		t.Cleanup(poll.close)
	}
	aPeer, a := ftTCPPair(t)
	b, bPeer := ftTCPPair(t)
	done = make(chan Joined, 1)
	closer = joinThen(&ftNotifyConn{TCPConn: a, p: p}, b, tm, Meter{}, poll, func(r Joined) { done <- r })
	return aPeer, bPeer, closer, done
}

// With the poller, quiet joins hold no goroutine at all: the poller's one
// goroutine serves them all. And they still copy both ways.
func TestJoinPolledIdleHoldsNoGoroutine(t *testing.T) {
	ftCheckGoroutines(t)
	poll := newReadyPoller()
	defer poll.close()
	before := runtime.NumGoroutine()
	aPeer1, bPeer1, _, done1 := ftPolledJoin(t, Timeouts{}, poll)
	aPeer2, bPeer2, _, done2 := ftPolledJoin(t, Timeouts{}, poll)
	before += 2 // the test's own stand-ins for netstack (ftPoller)
	for range 3 {
		ftExchange(t, aPeer1, bPeer1, "from a")
		ftExchange(t, bPeer1, aPeer1, "from b")
		ftExchange(t, aPeer2, bPeer2, "from a")
		ftExchange(t, bPeer2, aPeer2, "from b")
		ftWaitFor(t, 50*quietAfter, "the copiers to end", func() bool { return runtime.NumGoroutine() <= before+1 })
		time.Sleep(quietAfter * 3 / 2)
	}
	for _, c := range []net.Conn{aPeer1, bPeer1, aPeer2, bPeer2} {
		c.Close()
	}
	ftWaitJoin(t, done1, ftPrompt)
	ftWaitJoin(t, done2, ftPrompt)
}

// A kernel socket closed while it waits in the poller raises no event:
// closing through the join's closer must end the join anyway.
func TestJoinPolledCloseWhileParked(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, bPeer, closer, done := ftPolledJoin(t, Timeouts{}, nil)
	ftExchange(t, aPeer, bPeer, "x")
	ftExchange(t, bPeer, aPeer, "y")
	time.Sleep(quietAfter * 3) // both directions parked
	closer.Close()
	ftWaitJoin(t, done, ftPrompt)
	ftExpectClosed(t, aPeer, ftPrompt)
	ftExpectClosed(t, bPeer, ftPrompt)
}

// The idle limit still ends a join whose kernel side waits in the poller.
func TestJoinPolledIdleTimeout(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, bPeer, _, done := ftPolledJoin(t, Timeouts{Idle: 4 * quietAfter}, nil)
	ftExchange(t, bPeer, aPeer, "x")
	res := ftWaitJoin(t, done, 8*quietAfter+ftPrompt)
	if !errors.Is(res.Err, ErrIdle) {
		t.Fatalf("Join ended with %v, want ErrIdle", res.Err)
	}
	ftExpectClosed(t, aPeer, ftPrompt)
	ftExpectClosed(t, bPeer, ftPrompt)
}

// Half-close through a polled join: the kernel side ends its stream while
// its peer direction waits, and the other direction goes on.
func TestJoinPolledHalfClose(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, bPeer, _, done := ftPolledJoin(t, Timeouts{}, nil)
	time.Sleep(quietAfter * 3)
	if err := bPeer.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := ftReadAll(t, aPeer, ftPrompt); err != nil || len(got) != 0 {
		t.Fatalf("read %q, %v; want the end of stream at once", got, err)
	}
	ftExchange(t, aPeer, bPeer, "still flowing")
	aPeer.Close()
	ftWaitJoin(t, done, ftPrompt)
}
