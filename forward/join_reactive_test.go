package forward

import (
	"errors"
	"net"
	"runtime"
	"sync"
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
// back (as netstack's connections do) and one kernel socket, only the
// goroutine that called Join is left, waiting for the kernel socket.
func TestJoinIdleHoldsOnlyTheJoiningGoroutine(t *testing.T) {
	ftCheckGoroutines(t)
	p := newFtPoller(t)
	aPeer, a := ftTCPPair(t)
	b, bPeer := ftTCPPair(t)
	before := runtime.NumGoroutine()
	done := make(chan Joined, 1)
	go func() { done <- Join(&ftNotifyConn{TCPConn: a, p: p}, b, Timeouts{}) }()
	ftExchange(t, aPeer, bPeer, "hello")
	ftExchange(t, bPeer, aPeer, "world")
	ftWaitFor(t, 5*quietAfter, "the copiers to end", func() bool { return runtime.NumGoroutine() <= before+1 })
	// And it still copies both ways, more than once.
	for range 2 {
		ftExchange(t, bPeer, aPeer, "again from b")
		ftExchange(t, aPeer, bPeer, "again from a")
		time.Sleep(quietAfter * 3 / 2)
	}
	aPeer.Close()
	bPeer.Close()
	ftWaitJoin(t, done, ftPrompt)
}

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
