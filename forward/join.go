package forward

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
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
	t = t.withDefaults()
	j := &join{t: t}
	j.touch()
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
		j.failOnce.Do(func() { src.Close(); dst.Close() })
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
