package forward

import (
	"errors"
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
