package forward

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Timeouts bound how long a joined connection may sit without traffic.
type Timeouts struct {
	// Idle closes a connection on which no byte has moved either way for
	// this long. Zero means DefaultIdleTimeout.
	Idle time.Duration
	// HalfClosed applies instead of Idle once one direction has finished,
	// so that a peer that half-closed and vanished does not pin the
	// connection for the whole Idle period. Zero means DefaultHalfClosedTimeout.
	HalfClosed time.Duration
}

const (
	DefaultIdleTimeout       = time.Hour
	DefaultHalfClosedTimeout = 2 * time.Minute
	copyBufferSize           = 64 << 10
	smallBufferSize          = 2 << 10
)

func (t Timeouts) withDefaults() Timeouts {
	if t.Idle <= 0 {
		t.Idle = DefaultIdleTimeout
	}
	if t.HalfClosed <= 0 {
		t.HalfClosed = DefaultHalfClosedTimeout
	}
	return t
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// ErrIdle is reported when a connection is closed for inactivity.
var ErrIdle = errors.New("connection idle for too long")

// Joined is the outcome of Join.
type Joined struct {
	AToB, BToA int64 // bytes copied each way
	Err        error // first error other than a clean end of stream
}

// Join copies bytes both ways between a and b until both directions have
// ended, then closes both. When one side ends its stream, the other side's
// write half is shut (half-close) and the opposite direction continues. Any
// error, or inactivity beyond the timeouts, closes both at once. Closing
// either connection from outside makes Join return promptly, except that
// once one side's stream has ended Join no longer reads from it, so closing
// only that side goes unnoticed until the other direction moves or the
// HalfClosed timeout fires; close both to be sure.
func Join(a, b net.Conn, t Timeouts) Joined {
	return JoinMetered(a, b, t, Meter{})
}

// Meter is told about bytes as they are copied, so that counters of
// long-lived connections stay current. Nil fields are skipped.
type Meter struct {
	AToB, BToA func(n int64)
}

// JoinMetered is Join, reporting bytes to m as they are written.
func JoinMetered(a, b net.Conn, t Timeouts, m Meter) Joined {
	if wa, wb := waiterOf(a), waiterOf(b); wa != nil && wb != nil {
		res := make(chan Joined, 1)
		newJoin(t).reactive(a, b, wa, wb, m, func(r Joined) { res <- r })
		return <-res
	}
	return newJoin(t).goroutines(a, b, m)
}

// JoinThen is JoinMetered without waiting: it returns at once and calls
// then, once, on a goroutine of its own, after both connections have
// ended and been closed. Where both sides can be waited for without a
// blocked read (see reactive), a quiet connection then holds no goroutine
// of its caller's: what it costs while nothing moves is its state, and a
// small goroutine per kernel socket waiting for readiness.
func JoinThen(a, b net.Conn, t Timeouts, m Meter, then func(Joined)) {
	joinThen(a, b, t, m, nil, then)
}

// joinThen is JoinThen; with a poller, a quiet kernel socket joined to a
// connection that calls back (netstack's) is waited for by the poller
// instead of a goroutine of its own. The poller forgets a socket closed
// without telling it, so the caller must then close the connection through
// the returned io.Closer (a session does), never one side alone.
func joinThen(a, b net.Conn, t Timeouts, m Meter, poll *readyPoller, then func(Joined)) io.Closer {
	j := newJoin(t)
	if wa, wb := waiterOf(a), waiterOf(b); wa != nil && wb != nil {
		if poll != nil && canPollReady && (wa.notify != nil) != (wb.notify != nil) {
			j.poll = poll
		}
		j.reactive(a, b, wa, wb, m, then)
		return j
	}
	j.a, j.b = a, b
	go func() { then(j.goroutines(a, b, m)) }()
	return j
}

// Close closes both connections; the join then ends as on any failure.
func (j *join) Close() error {
	j.closeBoth()
	return nil
}

func newJoin(t Timeouts) *join {
	j := &join{t: t.withDefaults()}
	j.touch()
	return j
}

// goroutines is the join for connections that cannot report readiness:
// one goroutine per direction, each blocked in Read, for as long as the
// connection lives.
func (j *join) goroutines(a, b net.Conn, m Meter) Joined {
	var wg sync.WaitGroup
	var ba int64
	var errBA error
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba, errBA = j.pipe(a, b, m.BToA)
	}()
	ab, errAB := j.pipe(b, a, m.AToB)
	wg.Wait()
	a.Close()
	b.Close()
	return Joined{AToB: ab, BToA: ba, Err: errors.Join(errAB, errBA)}
}

type join struct {
	t            Timeouts
	lastActivity atomic.Int64 // unix nanos
	halfClosed   atomic.Bool
	failOnce     sync.Once

	a, b net.Conn
	// Reactive joins only (see reactive).
	ab, ba   *direction
	poll     *readyPoller // or nil: kernel sockets wait with a goroutine each
	closing  atomic.Bool  // closeBoth ran: nothing may wait in poll any more
	watchdog *time.Timer
	idleErr  atomic.Bool // the watchdog closed the connection
	ended    atomic.Int32
	then     func(Joined)
}

func (j *join) touch() { j.lastActivity.Store(time.Now().UnixNano()) }

func (j *join) limit() time.Duration {
	if j.halfClosed.Load() {
		return j.t.HalfClosed
	}
	return j.t.Idle
}

// pipe copies src to dst. Deadlines are refreshed lazily (only once a good
// part of the limit has passed) to keep timer churn off the hot path; a
// deadline that fires while the other direction is busy is simply renewed.
func (j *join) pipe(dst, src net.Conn, count func(int64)) (int64, error) {
	// An idle connection blocks in Read holding its buffer, so it reads
	// into a small one; a read that fills it switches to a large pooled
	// buffer, given back once reads turn small again.
	small := make([]byte, smallBufferSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			copyBuffers.Put(big)
		}
	}()
	var total int64
	var readDeadline, writeDeadline time.Time
	fail := func(err error) (int64, error) {
		// Unblock the other direction: this connection is done for.
		j.failOnce.Do(func() { passReset(err, dst); src.Close(); dst.Close() })
		return total, err
	}
	var lastLimit time.Duration
	for {
		now := time.Now()
		limit := j.limit()
		if limit != lastLimit {
			// Half-closed now: deadlines set for the idle limit are too far.
			readDeadline, writeDeadline, lastLimit = time.Time{}, time.Time{}, limit
		}
		if readDeadline.Sub(now) < limit*3/4 {
			readDeadline = now.Add(limit)
			if err := src.SetReadDeadline(readDeadline); err != nil {
				return fail(err)
			}
			if j.limit() != limit {
				// The other direction ended meanwhile and set the shorter
				// half-closed deadline on src; ours must not override it.
				readDeadline = time.Time{}
				continue
			}
		}
		n, err := src.Read(buf)
		if n > 0 {
			j.touch()
			// Read may have blocked for most of the limit: measure the
			// write deadline from now, not from before the read.
			now = time.Now()
			if writeDeadline.Sub(now) < limit*3/4 {
				writeDeadline = now.Add(limit)
				if err := dst.SetWriteDeadline(writeDeadline); err != nil {
					return fail(err)
				}
			}
			w, werr := dst.Write(buf[:n])
			switch {
			case big == nil && n == len(small):
				big = copyBuffers.Get().(*[]byte)
				buf = *big
			case big != nil && n < smallBufferSize:
				copyBuffers.Put(big)
				big, buf = nil, small
			}
			total += int64(w)
			if count != nil && w > 0 {
				count(int64(w))
			}
			if werr != nil {
				return fail(werr)
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			j.halfClosed.Store(true)
			if cerr := closeWrite(dst); cerr != nil {
				return fail(cerr)
			}
			// The other direction now runs on the shorter half-closed limit,
			// also if it is blocked in a read or a write right now.
			_ = dst.SetReadDeadline(time.Now().Add(j.t.HalfClosed))
			_ = src.SetWriteDeadline(time.Now().Add(j.t.HalfClosed))
			return total, nil
		case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
			since := time.Since(time.Unix(0, j.lastActivity.Load()))
			if since < j.limit() {
				readDeadline = time.Time{} // renew on the next turn
				continue
			}
			return fail(ErrIdle)
		default:
			return fail(err)
		}
	}
}

// lingerer is a connection that can end with a reset instead of a FIN:
// *net.TCPConn, and netstack's TCPConn.
type lingerer interface {
	SetLinger(sec int) error
}

// passReset makes dst end with a reset when err says src was reset: a
// Close would first send all dst still buffers (megabytes, for a tunneled
// connection) and then a clean end of stream, so a peer that aborted
// would look as if it had finished, and the tunnel would carry the rest.
func passReset(err error, dst net.Conn) {
	if !errors.Is(err, syscall.ECONNRESET) {
		return
	}
	for range 8 {
		switch v := dst.(type) {
		case lingerer:
			_ = v.SetLinger(0)
			return
		case interface{ Raw() net.Conn }:
			dst = v.Raw()
		case interface{ NetConn() net.Conn }:
			dst = v.NetConn()
		default:
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// closeWrite shuts the write half of c, reaching through wrappers (such as
// go-proxyproto's Conn) that hide CloseWrite; without one it closes c.
func closeWrite(c net.Conn) error {
	for {
		switch v := c.(type) {
		case interface{ CloseWrite() error }:
			return v.CloseWrite()
		case interface{ Raw() net.Conn }:
			c = v.Raw()
		default:
			return c.Close()
		}
	}
}

// --- reactive joins ---
//
// A joined connection used to hold two goroutines (one per direction, each
// blocked in Read with its buffer) for as long as it lived, idle or not:
// most of the memory of an idle connection. A reactive join copies with a
// goroutine only while bytes flow. When a direction has been quiet for
// quietAfter its copier ends, giving its buffer back, and the direction
// waits for its source to become readable:
//   - a source that can call back (netstack's TCPConn: NotifyReadable)
//     costs no goroutine at all while it waits;
//   - a kernel TCP socket joined to such a connection, in the gateway and
//     the connector, is waited for by their readyPoller (one epoll set and
//     one goroutine for all of a forwarder's joins, poll_linux.go): an idle
//     connection then holds no goroutine at all;
//   - any other kernel TCP socket is waited for by a goroutine of its own,
//     started for the wait (so its stack is the smallest Go has, not that
//     of the goroutine that dialled), blocked in the runtime's poller
//     without a buffer.
// The copier always reads through the wrapper Join was given (PROXY
// header, peeked bytes, status byte), and goes quiet only after a read
// timed out with nothing read, so nothing the wrapper buffers is missed.
// The idle and half-closed limits are kept by one timer per connection.

// quietAfter is how long a direction goes without data before its copier
// ends and it waits for readiness instead. It is short because a copier
// blocked in Read holds its goroutine's stack and buffer: a burst of new
// connections, each sending a request and then sitting quiet, would
// otherwise hold four copiers per connection for the whole period (with
// one second, 1,000 connections opened within it held ~30 MB more at the
// peak, which the processes keep). Waking a parked direction costs a
// goroutine start and a readiness registration, a few microseconds.
const quietAfter = 20 * time.Millisecond

// readNotifier is a connection that can report readability without a
// goroutine blocked in Read: netstack's TCPConn.
type readNotifier interface {
	// NotifyReadable calls f once when a Read would not block; stop
	// cancels that and is idempotent (never called from f).
	NotifyReadable(f func()) (stop func())
}

// waiter is how one direction waits for its source.
type waiter struct {
	notify readNotifier // or
	tcp    *net.TCPConn // waited for by a goroutine (waitReadable)
}

// waiterOf finds how to wait for c, reaching through wrappers (Raw, as
// go-proxyproto has, or NetConn, as crypto/tls and ours have); nil if
// there is no way, and then Join copies with goroutines all along.
func waiterOf(c net.Conn) *waiter {
	for range 8 {
		switch v := c.(type) {
		case readNotifier:
			return &waiter{notify: v}
		case *net.TCPConn:
			if !canWaitReadable {
				return nil
			}
			return &waiter{tcp: v}
		case interface{ Raw() net.Conn }:
			c = v.Raw()
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// direction is one way of a reactive join: src to dst.
type direction struct {
	j        *join
	src, dst net.Conn
	w        *waiter
	count    func(int64)
	total    int64
	err      error

	readDeadline, writeDeadline time.Time

	mu         sync.Mutex
	stop       func()      // of a pending NotifyReadable
	pollCancel func() bool // of a pending wait in the join's poller
}

// reactive starts the join and returns; then gets the result once both
// directions have ended, on the goroutine that ended the second.
func (j *join) reactive(a, b net.Conn, wa, wb *waiter, m Meter, then func(Joined)) {
	j.a, j.b, j.then = a, b, then
	ra, rb := rawIO(a), rawIO(b)
	j.ab = &direction{j: j, src: ra, dst: rb, w: wa, count: m.AToB}
	j.ba = &direction{j: j, src: rb, dst: ra, w: wb, count: m.BToA}
	j.watchdog = time.AfterFunc(j.t.Idle, j.checkIdle)
	// Both start copying: a wrapper may hold bytes already.
	go j.ab.copy()
	go j.ba.copy()
}

// finish closes both connections and reports the result.
func (j *join) finish() {
	j.watchdog.Stop()
	j.a.Close()
	j.b.Close()
	err := errors.Join(j.ab.err, j.ba.err)
	if j.idleErr.Load() {
		err = errors.Join(ErrIdle, err)
	}
	j.then(Joined{AToB: j.ab.total, BToA: j.ba.total, Err: err})
}

// checkIdle is the watchdog: it closes the connection once nothing has
// moved for the current limit, or looks again when that will be.
func (j *join) checkIdle() {
	limit := j.limit()
	since := time.Since(time.Unix(0, j.lastActivity.Load()))
	if since < limit {
		j.watchdog.Reset(limit - since)
		return
	}
	j.idleErr.Store(true)
	j.closeBoth()
}

// closeBoth closes both connections once, and resumes a direction waiting
// in the poller, which closing its socket would not wake.
func (j *join) closeBoth() {
	j.failOnce.Do(func() {
		j.closing.Store(true)
		j.a.Close()
		j.b.Close()
		for _, d := range []*direction{j.ab, j.ba} {
			if d == nil {
				continue
			}
			d.mu.Lock()
			cancel := d.pollCancel
			d.pollCancel = nil
			d.mu.Unlock()
			if cancel != nil && cancel() {
				go d.copy() // its read fails now, which ends it
			}
		}
	})
}

// end marks a direction finished; the second one ends the join.
func (d *direction) end(err error) {
	d.err = err
	if d.j.ended.Add(1) == 2 {
		d.j.finish()
	}
}

func (d *direction) fail(err error) {
	d.j.failOnce.Do(func() { passReset(err, d.dst); d.j.a.Close(); d.j.b.Close() })
	d.end(err)
}

// copy moves bytes until the source has been quiet for quietAfter (then
// the direction waits for readiness), ends its stream or fails.
func (d *direction) copy() {
	j := d.j
	bp := smallBuffers.Get().(*[]byte)
	buf := *bp
	var big *[]byte
	defer func() {
		if big != nil {
			copyBuffers.Put(big)
		}
		smallBuffers.Put(bp)
	}()
	for {
		now := time.Now()
		if d.readDeadline.Sub(now) < quietAfter/2 {
			d.readDeadline = now.Add(quietAfter)
			if err := d.src.SetReadDeadline(d.readDeadline); err != nil {
				d.fail(err)
				return
			}
		}
		n, err := d.src.Read(buf)
		if n > 0 {
			j.touch()
			limit := j.limit()
			now = time.Now()
			if d.writeDeadline.Sub(now) < limit*3/4 {
				d.writeDeadline = now.Add(limit)
				if err := d.dst.SetWriteDeadline(d.writeDeadline); err != nil {
					d.fail(err)
					return
				}
			}
			w, werr := d.dst.Write(buf[:n])
			switch {
			case big == nil && n == len(buf):
				big = copyBuffers.Get().(*[]byte)
				buf = *big
			case big != nil && n < smallBufferSize:
				copyBuffers.Put(big)
				big, buf = nil, *bp
			}
			d.total += int64(w)
			if d.count != nil && w > 0 {
				d.count(int64(w))
			}
			if werr != nil {
				d.fail(werr)
				return
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			if j.halfClosed.CompareAndSwap(false, true) {
				j.touch()
				j.watchdog.Reset(j.t.HalfClosed)
			}
			if cerr := closeWrite(d.dst); cerr != nil {
				d.fail(cerr)
				return
			}
			d.end(nil)
			return
		case n == 0 && (errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err)):
			// Quiet: wait for readiness without this goroutine.
			d.readDeadline = time.Time{}
			d.park()
			return
		case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
		default:
			d.fail(err)
			return
		}
	}
}

// park waits for the source to become readable, then copies again.
func (d *direction) park() {
	if d.w.notify == nil {
		if d.j.poll == nil || !d.parkPolled() {
			go d.waitKernel()
		}
		return
	}
	d.mu.Lock()
	d.stop = d.w.notify.NotifyReadable(func() { go d.resume() })
	d.mu.Unlock()
}

// parkPolled waits for the kernel socket in the join's poller; false if
// it cannot (the join is closing, or the poller refused).
func (d *direction) parkPolled() bool {
	rc, err := d.w.tcp.SyscallConn()
	if err != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.j.closing.Load() {
		return false
	}
	cancel, err := d.j.poll.wait(rc, func() {
		d.mu.Lock()
		d.pollCancel = nil
		d.mu.Unlock()
		d.copy()
	})
	if err != nil {
		return false
	}
	d.pollCancel = cancel
	return true
}

func (d *direction) resume() {
	d.mu.Lock()
	stop := d.stop
	d.stop = nil
	d.mu.Unlock()
	stop()
	d.copy()
}

// waitKernel blocks until the kernel socket is readable (or closed), then
// copies on the same goroutine.
func (d *direction) waitKernel() {
	// The copier's deadline has passed; waiting must not see it. The
	// watchdog bounds the wait instead, by closing the connection.
	if err := d.src.SetReadDeadline(time.Time{}); err != nil {
		d.fail(err)
		return
	}
	waitReadable(d.w.tcp)
	d.copy()
}

var smallBuffers = sync.Pool{New: func() any { b := make([]byte, smallBufferSize); return &b }}
