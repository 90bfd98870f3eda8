package forward

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// ftPrompt bounds how long "promptly" may take in these tests: far longer
// than any of the events it waits for needs, far shorter than any default
// timeout in the package.
const ftPrompt = 3 * time.Second

func ftLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// ftCheckGoroutines fails the test if, once every cleanup registered after
// it has run, more goroutines exist than when it was called. Call it first.
func ftCheckGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// ftWithin runs f and fails the test if it has not returned after d, so
// that a hang shows up as a failure rather than as the test binary's timeout.
func ftWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// ftWaitFor polls cond until it holds, failing the test after timeout.
func ftWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ftTCPPair returns two ends of a loopback TCP connection, closed at cleanup.
func ftTCPPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	c1, err := net.DialTimeout("tcp", ln.Addr().String(), ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c1.Close() })
	var r result
	select {
	case r = <-ch:
	case <-time.After(ftPrompt):
		t.Fatal("accept timed out")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return c1.(*net.TCPConn), r.c.(*net.TCPConn)
}

// ftReadAll reads c until EOF or an error. A timeout (nothing closed
// the stream within d) fails the test; any other error is returned.
func ftReadAll(t *testing.T, c net.Conn, d time.Duration) ([]byte, error) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		return nil, err
	}
	defer c.SetReadDeadline(time.Time{})
	var out bytes.Buffer
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			if isTimeout(err) {
				t.Fatalf("stream not closed within %v (read %d bytes: %.40q)", d, out.Len(), out.Bytes())
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return out.Bytes(), err
		}
	}
}

// ftExpectClosed fails unless c's peer closes (or resets) it within d.
func ftExpectClosed(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	ftReadAll(t, c, d)
}

// ftReadExactly reads len(want) bytes from c within ftPrompt and compares.
func ftReadExactly(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(ftPrompt))
	defer c.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading %d bytes: %v (got %q)", len(want), err, got)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %.60q, want %.60q", got, want)
	}
}

func ftRandom(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// ftJoinPairs sets up aPeer <-> a  (Join)  b <-> bPeer over loopback TCP and
// starts Join(a, b) in the background.
func ftJoinPairs(t *testing.T, to Timeouts) (aPeer, a, b, bPeer *net.TCPConn, done <-chan Joined) {
	t.Helper()
	aPeer, a = ftTCPPair(t)
	b, bPeer = ftTCPPair(t)
	ch := make(chan Joined, 1)
	go func() { ch <- Join(a, b, to) }()
	return aPeer, a, b, bPeer, ch
}

func ftWaitJoin(t *testing.T, done <-chan Joined, d time.Duration) Joined {
	t.Helper()
	select {
	case j := <-done:
		return j
	case <-time.After(d):
		t.Fatalf("Join did not return within %v", d)
	}
	panic("unreachable")
}

func TestJoinCopiesBothWaysWithExactCounts(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{})
	up := ftRandom(t, 1<<20+12345)
	down := ftRandom(t, 700<<10+7)

	var wg sync.WaitGroup
	var gotAtB, gotAtA []byte
	var errB, errA error
	wg.Add(2)
	send := func(c *net.TCPConn, p []byte) {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(p); err != nil {
			t.Errorf("write: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Errorf("CloseWrite: %v", err)
		}
	}
	go func() { defer wg.Done(); send(aPeer, up) }()
	go func() { defer wg.Done(); send(bPeer, down) }()
	var rg sync.WaitGroup
	rg.Add(1)
	go func() {
		defer rg.Done()
		gotAtB, errB = ftReadAllOrTimeout(bPeer, 10*time.Second)
	}()
	gotAtA, errA = ftReadAllOrTimeout(aPeer, 10*time.Second)
	rg.Wait()
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("reading: at A %v, at B %v", errA, errB)
	}
	if !bytes.Equal(gotAtB, up) {
		t.Errorf("B received %d bytes, want the %d A sent", len(gotAtB), len(up))
	}
	if !bytes.Equal(gotAtA, down) {
		t.Errorf("A received %d bytes, want the %d B sent", len(gotAtA), len(down))
	}
	j := ftWaitJoin(t, done, ftPrompt)
	if j.Err != nil {
		t.Errorf("Joined.Err = %v, want nil after clean ends", j.Err)
	}
	if j.AToB != int64(len(up)) || j.BToA != int64(len(down)) {
		t.Errorf("Joined counts AToB=%d BToA=%d, want %d and %d", j.AToB, j.BToA, len(up), len(down))
	}
}

// ftReadAllOrTimeout is ftReadAll for goroutines (no t.Fatal).
func ftReadAllOrTimeout(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

func TestJoinHalfClose(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, a, b, bPeer, done := ftJoinPairs(t, Timeouts{Idle: 10 * time.Second, HalfClosed: 10 * time.Second})
	if _, err := aPeer.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := aPeer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// B sees the request and then the end of A's stream...
	got, err := ftReadAll(t, bPeer, ftPrompt)
	if err != nil || string(got) != "request" {
		t.Fatalf("B read %q, %v; want \"request\" then EOF", got, err)
	}
	// ...and can still answer, which A receives.
	select {
	case j := <-done:
		t.Fatalf("Join returned after only one direction ended: %+v", j)
	default:
	}
	if _, err := bPeer.Write([]byte("the reply")); err != nil {
		t.Fatalf("B cannot reply after A's half-close: %v", err)
	}
	if err := bPeer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err = ftReadAll(t, aPeer, ftPrompt)
	if err != nil || string(got) != "the reply" {
		t.Fatalf("A read %q, %v; want \"the reply\" then EOF", got, err)
	}
	j := ftWaitJoin(t, done, ftPrompt)
	if j.Err != nil || j.AToB != 7 || j.BToA != 9 {
		t.Fatalf("Joined = %+v, want AToB=7 BToA=9 Err=nil", j)
	}
	// Join closed both of its connections on the way out.
	for name, c := range map[string]net.Conn{"a": a, "b": b} {
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s not closed after Join: read err %v", name, err)
		}
	}
}

func TestJoinHalfCloseFromBSide(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{Idle: 10 * time.Second, HalfClosed: 10 * time.Second})
	bPeer.Write([]byte("banner"))
	bPeer.CloseWrite()
	got, err := ftReadAll(t, aPeer, ftPrompt)
	if err != nil || string(got) != "banner" {
		t.Fatalf("A read %q, %v", got, err)
	}
	if _, err := aPeer.Write([]byte("ack")); err != nil {
		t.Fatal(err)
	}
	aPeer.CloseWrite()
	got, err = ftReadAll(t, bPeer, ftPrompt)
	if err != nil || string(got) != "ack" {
		t.Fatalf("B read %q, %v", got, err)
	}
	j := ftWaitJoin(t, done, ftPrompt)
	if j.Err != nil || j.AToB != 3 || j.BToA != 6 {
		t.Fatalf("Joined = %+v, want AToB=3 BToA=6 Err=nil", j)
	}
}

func TestJoinClosedFromOutside(t *testing.T) {
	for _, side := range []string{"a", "b"} {
		t.Run("close "+side, func(t *testing.T) {
			ftCheckGoroutines(t)
			aPeer, a, b, bPeer, done := ftJoinPairs(t, Timeouts{})
			// Make sure the pair is up and copying first.
			aPeer.Write([]byte("x"))
			ftReadExactly(t, bPeer, []byte("x"))
			if side == "a" {
				a.Close()
			} else {
				b.Close()
			}
			ftWaitJoin(t, done, ftPrompt)
			// Join closed both: each peer sees its stream end.
			ftExpectClosed(t, aPeer, ftPrompt)
			ftExpectClosed(t, bPeer, ftPrompt)
		})
	}
}

// Once A has half-closed, Join only reads from b; closing b from outside
// must still end Join at once rather than after the HalfClosed timeout.
func TestJoinClosedFromOutsideWhileHalfClosed(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, _, b, bPeer, done := ftJoinPairs(t, Timeouts{})
	aPeer.CloseWrite()
	if got, err := ftReadAll(t, bPeer, ftPrompt); err != nil || len(got) != 0 {
		t.Fatalf("B read %q, %v; want EOF", got, err)
	}
	b.Close()
	ftWaitJoin(t, done, ftPrompt)
	ftExpectClosed(t, aPeer, ftPrompt)
}

func TestJoinIdleTimeout(t *testing.T) {
	ftCheckGoroutines(t)
	const idle = 200 * time.Millisecond
	start := time.Now()
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{Idle: idle, HalfClosed: time.Minute})
	j := ftWaitJoin(t, done, ftPrompt)
	if el := time.Since(start); el < idle {
		t.Errorf("idle pair closed after %v, before the %v idle timeout", el, idle)
	}
	if !errors.Is(j.Err, ErrIdle) {
		t.Errorf("Joined.Err = %v, want ErrIdle", j.Err)
	}
	if j.AToB != 0 || j.BToA != 0 {
		t.Errorf("counts %d/%d, want 0/0", j.AToB, j.BToA)
	}
	ftExpectClosed(t, aPeer, ftPrompt)
	ftExpectClosed(t, bPeer, ftPrompt)
}

// ftStallClock measures the longest pause between a test's steps.
type ftStallClock struct {
	last, maxGap time.Duration
	start        time.Time
}

func newFtStallClock() *ftStallClock { return &ftStallClock{start: time.Now()} }

func (c *ftStallClock) mark() {
	now := time.Since(c.start)
	c.maxGap = max(c.maxGap, now-c.last)
	c.last = now
}

// ftRetryOnStall runs attempt up to three times, retrying only when it
// failed across a pause of at least tolerable: the machine stalled the
// test (this runs on busy shared hosts), so the attempt proves nothing. A
// failure without such a pause fails the test at once.
func ftRetryOnStall(t *testing.T, tolerable time.Duration, attempt func(*ftStallClock) error) {
	t.Helper()
	for i := 1; ; i++ {
		clock := newFtStallClock()
		err := attempt(clock)
		if err == nil {
			return
		}
		clock.mark()
		if clock.maxGap < tolerable {
			t.Fatal(err)
		}
		if i == 3 {
			t.Fatalf("%v (every attempt saw a stall; the longest this time %v)", err, clock.maxGap)
		}
		t.Logf("attempt %d failed after a %v stall, retrying: %v", i, clock.maxGap, err)
	}
}

// ftSendOne writes p on from and reads it back on to within ftPrompt.
func ftSendOne(from, to net.Conn, p []byte) error {
	from.SetWriteDeadline(time.Now().Add(ftPrompt))
	if _, err := from.Write(p); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(p))
	to.SetReadDeadline(time.Now().Add(ftPrompt))
	defer to.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(to, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("read %q, want %q", got, p)
	}
	return nil
}

// Traffic in one direction keeps the whole pair alive: the idle direction's
// deadline fires but is renewed.
func TestJoinIdleRenewedByOneWayTraffic(t *testing.T) {
	ftCheckGoroutines(t)
	const idle = 400 * time.Millisecond
	ftRetryOnStall(t, idle/2, func(clock *ftStallClock) error {
		aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{Idle: idle, HalfClosed: time.Minute})
		const ticks = 20 // 20 x 50ms = 2.5 idle periods
		for i := range ticks {
			if err := ftSendOne(aPeer, bPeer, []byte{byte(i)}); err != nil {
				return fmt.Errorf("byte %d of a live one-way stream: %w", i, err)
			}
			clock.mark()
			select {
			case j := <-done:
				return fmt.Errorf("Join ended after %d bytes although traffic flows: %+v", i+1, j)
			default:
			}
			time.Sleep(50 * time.Millisecond) // pacing, well below idle
		}
		// The direction that carried nothing still works.
		if err := ftSendOne(bPeer, aPeer, []byte("ok")); err != nil {
			return fmt.Errorf("the quiet direction: %w", err)
		}
		clock.mark()
		// Now stay quiet: the pair goes idle.
		j := ftWaitJoin(t, done, ftPrompt)
		if !errors.Is(j.Err, ErrIdle) {
			t.Errorf("Joined.Err = %v, want ErrIdle", j.Err)
		}
		if j.AToB != ticks || j.BToA != 2 {
			t.Errorf("counts AToB=%d BToA=%d, want %d and 2", j.AToB, j.BToA, ticks)
		}
		return nil
	})
}

func TestJoinHalfClosedTimeout(t *testing.T) {
	ftCheckGoroutines(t)
	const half = 200 * time.Millisecond
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{Idle: time.Minute, HalfClosed: half})
	aPeer.Write([]byte("hi"))
	ftReadExactly(t, bPeer, []byte("hi"))
	start := time.Now()
	aPeer.CloseWrite()
	// B never answers.
	j := ftWaitJoin(t, done, ftPrompt)
	if el := time.Since(start); el < half*3/4 {
		t.Errorf("half-closed pair closed after %v, before the %v timeout", el, half)
	}
	if !errors.Is(j.Err, ErrIdle) {
		t.Errorf("Joined.Err = %v, want ErrIdle", j.Err)
	}
	if j.AToB != 2 || j.BToA != 0 {
		t.Errorf("counts %d/%d, want 2/0", j.AToB, j.BToA)
	}
	ftExpectClosed(t, aPeer, ftPrompt)
}

// A half-closed pair whose remaining direction keeps moving bytes outlives
// the HalfClosed timeout many times over.
func TestJoinHalfClosedKeepsFlowingDirection(t *testing.T) {
	ftCheckGoroutines(t)
	const half = 300 * time.Millisecond
	ftRetryOnStall(t, half/2, func(clock *ftStallClock) error {
		aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{Idle: time.Minute, HalfClosed: half})
		aPeer.CloseWrite()
		bPeer.SetReadDeadline(time.Now().Add(ftPrompt))
		if got, err := io.ReadAll(bPeer); err != nil || len(got) != 0 {
			return fmt.Errorf("B read %q, %v; want EOF", got, err)
		}
		clock.mark()
		const ticks = 16 // 16 x 50ms = 2.7 half-closed periods
		for i := range ticks {
			if err := ftSendOne(bPeer, aPeer, []byte{byte(i)}); err != nil {
				return fmt.Errorf("byte %d after A's half-close: %w", i, err)
			}
			clock.mark()
			time.Sleep(50 * time.Millisecond) // pacing, well below the timeout
		}
		select {
		case j := <-done:
			return fmt.Errorf("Join ended although the open direction carried traffic: %+v", j)
		default:
		}
		bPeer.CloseWrite()
		if got, err := ftReadAll(t, aPeer, ftPrompt); err != nil || len(got) != 0 {
			t.Fatalf("A read %q, %v; want EOF", got, err)
		}
		j := ftWaitJoin(t, done, ftPrompt)
		if j.Err != nil || j.AToB != 0 || j.BToA != ticks {
			t.Fatalf("Joined = %+v, want AToB=0 BToA=%d Err=nil", j, ticks)
		}
		return nil
	})
}

// A write failure ends Join with an error and closes the other side.
func TestJoinWriteErrorClosesBoth(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{})
	bPeer.Close()
	// Writes into b fail once the peer's RST comes back; keep sending
	// (bounded) until Join gives up.
	buf := bytes.Repeat([]byte("z"), 1024)
	deadline := time.Now().Add(ftPrompt)
	var j Joined
loop:
	for i := 0; i < 10000; i++ {
		select {
		case j = <-done:
			break loop
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("Join did not end after the write side failed")
		}
		aPeer.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := aPeer.Write(buf); err != nil {
			j = ftWaitJoin(t, done, ftPrompt)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if j.Err == nil {
		t.Errorf("Joined.Err = nil, want the write error")
	}
	ftExpectClosed(t, aPeer, ftPrompt)
}

// Without CloseWrite (net.Pipe), the end of one direction closes the other
// connection entirely; its peer still receives everything first.
func TestJoinWithoutCloseWriteFallsBackToClose(t *testing.T) {
	ftCheckGoroutines(t)
	aPeer, a := net.Pipe()
	b, bPeer := net.Pipe()
	defer aPeer.Close()
	defer bPeer.Close()
	done := make(chan Joined, 1)
	go func() { done <- Join(a, b, Timeouts{}) }()
	go func() {
		aPeer.Write([]byte("hello"))
		aPeer.Close()
	}()
	got, err := ftReadAll(t, bPeer, ftPrompt)
	if err != nil || string(got) != "hello" {
		t.Fatalf("B read %q, %v; want \"hello\" then EOF", got, err)
	}
	j := ftWaitJoin(t, done, ftPrompt)
	if j.AToB != 5 {
		t.Errorf("AToB = %d, want 5", j.AToB)
	}
}

func TestTimeoutsDefaults(t *testing.T) {
	d := Timeouts{}.withDefaults()
	if d.Idle != DefaultIdleTimeout || d.HalfClosed != DefaultHalfClosedTimeout {
		t.Errorf("zero Timeouts -> %+v", d)
	}
	d = Timeouts{Idle: -1, HalfClosed: -5}.withDefaults()
	if d.Idle != DefaultIdleTimeout || d.HalfClosed != DefaultHalfClosedTimeout {
		t.Errorf("negative Timeouts -> %+v", d)
	}
	d = Timeouts{Idle: 3 * time.Second, HalfClosed: time.Second}.withDefaults()
	if d.Idle != 3*time.Second || d.HalfClosed != time.Second {
		t.Errorf("set Timeouts changed: %+v", d)
	}
}

// ftRawWrapper hides its conn's methods, exposing it only through Raw.
type ftRawWrapper struct {
	net.Conn
	inner net.Conn
}

func (w ftRawWrapper) Raw() net.Conn { return w.inner }

func TestCloseWriteReachesThroughWrappers(t *testing.T) {
	cases := map[string]func(net.Conn) net.Conn{
		"tcp":        func(c net.Conn) net.Conn { return c },
		"proxyproto": func(c net.Conn) net.Conn { return proxyproto.NewConn(c) },
		"proxyproto in wrapper": func(c net.Conn) net.Conn {
			pc := proxyproto.NewConn(c)
			return ftRawWrapper{Conn: pc, inner: pc}
		},
		"statusConn": func(c net.Conn) net.Conn { return &statusConn{Conn: proxyproto.NewConn(c)} },
	}
	for name, wrap := range cases {
		t.Run(name, func(t *testing.T) {
			ftCheckGoroutines(t)
			peer, c := ftTCPPair(t)
			w := wrap(c)
			if err := closeWrite(w); err != nil {
				t.Fatalf("closeWrite: %v", err)
			}
			// The peer sees the end of the stream...
			if got, err := ftReadAll(t, peer, ftPrompt); err != nil || len(got) != 0 {
				t.Fatalf("peer read %q, %v; want EOF", got, err)
			}
			// ...but the read half is still open: only the write half shut.
			if _, err := peer.Write([]byte("still open")); err != nil {
				t.Fatal(err)
			}
			ftReadExactly(t, c, []byte("still open"))
		})
	}
}

func TestCloseWriteWithoutSupportCloses(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	if err := closeWrite(a); err != nil {
		t.Fatalf("closeWrite: %v", err)
	}
	b.SetReadDeadline(time.Now().Add(ftPrompt))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("peer read err %v, want EOF", err)
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("write after fallback close succeeded; conn should be closed")
	}
}

func TestIsTimeout(t *testing.T) {
	_, c := ftTCPPair(t)
	c.SetReadDeadline(time.Now().Add(-time.Second))
	_, err := c.Read(make([]byte, 1))
	if !isTimeout(err) {
		t.Errorf("isTimeout(%v) = false", err)
	}
	if isTimeout(io.EOF) || isTimeout(errors.New("x")) || isTimeout(nil) {
		t.Error("isTimeout true for a non-timeout")
	}
	if !strings.Contains(ErrIdle.Error(), "idle") {
		t.Errorf("ErrIdle text %q", ErrIdle)
	}
}

// ftLateConn delivers its first read only after a delay, as a Read that
// returns data some time after its deadline (a descheduled goroutine, a
// slow wrapper) would. It ignores read deadlines.
type ftLateConn struct {
	*net.TCPConn
	delay time.Duration
	once  sync.Once
}

func (c *ftLateConn) Read(b []byte) (int, error) {
	c.once.Do(func() { time.Sleep(c.delay) })
	return c.TCPConn.Read(b)
}

func (c *ftLateConn) SetReadDeadline(time.Time) error { return nil }

// A read that returns late must not leave the following write with a
// deadline already in the past. B has finished first, so nothing else
// watches for idleness while the slow read is pending.
func TestJoinLateReadDoesNotFailWrite(t *testing.T) {
	ftCheckGoroutines(t)
	const limit = 100 * time.Millisecond
	aPeer, a := ftTCPPair(t)
	b, bPeer := ftTCPPair(t)
	aPeer.Write([]byte("x"))
	aPeer.CloseWrite()
	bPeer.CloseWrite()
	late := &ftLateConn{TCPConn: a, delay: 3 * limit}
	done := make(chan Joined, 1)
	go func() { done <- Join(late, b, Timeouts{Idle: limit, HalfClosed: limit}) }()
	if got, err := ftReadAll(t, aPeer, ftPrompt); err != nil || len(got) != 0 {
		t.Fatalf("A read %q, %v; want EOF", got, err)
	}
	got, err := ftReadAll(t, bPeer, ftPrompt)
	if err != nil || string(got) != "x" {
		t.Fatalf("B read %q, %v; want \"x\" then EOF", got, err)
	}
	j := ftWaitJoin(t, done, ftPrompt)
	if j.Err != nil || j.AToB != 1 || j.BToA != 0 {
		t.Fatalf("Joined = %+v, want AToB=1 BToA=0 and no error", j)
	}
}

// ftHeldDeadlineConn holds its first SetReadDeadline call until released,
// to interleave Join's two directions at a chosen point.
type ftHeldDeadlineConn struct {
	*net.TCPConn
	entered, release chan struct{}
	calls            atomic.Int32
}

func (c *ftHeldDeadlineConn) SetReadDeadline(t time.Time) error {
	if c.calls.Add(1) == 1 {
		close(c.entered)
		<-c.release
	}
	return c.TCPConn.SetReadDeadline(t)
}

// B's direction is about to arm its idle deadline when A's stream ends and
// the shorter half-closed deadline is set on b: B's late write of the idle
// deadline must not win, or a vanished peer pins the pair for Idle.
func TestJoinHalfCloseRaceKeepsShortDeadline(t *testing.T) {
	ftCheckGoroutines(t)
	const half = 200 * time.Millisecond
	aPeer, a := ftTCPPair(t)
	b0, bPeer := ftTCPPair(t)
	b := &ftHeldDeadlineConn{TCPConn: b0, entered: make(chan struct{}), release: make(chan struct{})}
	done := make(chan Joined, 1)
	go func() { done <- Join(a, b, Timeouts{Idle: time.Minute, HalfClosed: half}) }()
	select {
	case <-b.entered: // B's direction computed its limit (Idle) and is arming it
	case <-time.After(ftPrompt):
		t.Fatal("Join never armed b's read deadline")
	}
	aPeer.CloseWrite()
	if got, err := ftReadAll(t, bPeer, ftPrompt); err != nil || len(got) != 0 {
		t.Fatalf("B read %q, %v; want EOF", got, err)
	}
	// A's direction has ended and set the half-closed deadline on b.
	ftWaitFor(t, ftPrompt, "the half-closed deadline to be set", func() bool { return b.calls.Load() >= 2 })
	close(b.release)
	j := ftWaitJoin(t, done, ftPrompt)
	if !errors.Is(j.Err, ErrIdle) {
		t.Errorf("Joined.Err = %v, want ErrIdle", j.Err)
	}
}

// After a half-close, a direction blocked writing to a peer that stopped
// reading is bounded by HalfClosed, not by Idle.
func TestJoinHalfClosedBoundsBlockedWrite(t *testing.T) {
	aPeer, _, _, bPeer, done := ftJoinPairs(t, Timeouts{Idle: 30 * time.Second, HalfClosed: 300 * time.Millisecond})
	// bPeer floods towards aPeer, which never reads: the b->a write blocks.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		chunk := make([]byte, 64<<10)
		bPeer.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := bPeer.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // let the buffers fill
	start := time.Now()
	aPeer.CloseWrite() // a->b ends: half-closed
	j := ftWaitJoin(t, done, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Join lasted %s after the half-close; want about the 300 ms HalfClosed limit", d)
	}
	if j.Err == nil {
		t.Error("Join ended without reporting the stalled write")
	}
}

// ftTCPWrapped hides *net.TCPConn from Join's reactive path (so the
// goroutine-per-direction copier runs) but keeps SetLinger.
type ftTCPWrapped struct{ *net.TCPConn }

// TestJoinPassesResetOn: when one side is reset, Join resets the other
// (linger 0) instead of closing it with a FIN after what it still buffers:
// the backend sees the abort, and a tunnel stops carrying the rest at once.
func TestJoinPassesResetOn(t *testing.T) {
	for _, wrapped := range []bool{false, true} {
		t.Run(fmt.Sprintf("wrapped=%v", wrapped), func(t *testing.T) {
			ftCheckGoroutines(t)
			user, a := ftTCPPair(t)
			b, backend := ftTCPPair(t)
			var ca, cb net.Conn = a, b
			if wrapped {
				ca, cb = ftTCPWrapped{a}, ftTCPWrapped{b}
			}
			done := make(chan Joined, 1)
			go func() { done <- Join(ca, cb, Timeouts{}) }()
			// Some traffic first, so that both directions run.
			if _, err := user.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			backend.SetReadDeadline(time.Now().Add(ftPrompt))
			if _, err := io.ReadFull(backend, buf); err != nil {
				t.Fatal(err)
			}
			user.SetLinger(0)
			user.Close()
			ftWithin(t, ftPrompt, "Join", func() { <-done })
			backend.SetReadDeadline(time.Now().Add(ftPrompt))
			_, err := backend.Read(buf)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("backend read after the user's reset: %v, want a reset", err)
			}
		})
	}
}

// TestJoinCleanEndStaysClean: an orderly close is passed on as a FIN, not
// a reset.
func TestJoinCleanEndStaysClean(t *testing.T) {
	ftCheckGoroutines(t)
	user, a := ftTCPPair(t)
	b, backend := ftTCPPair(t)
	done := make(chan Joined, 1)
	go func() { done <- Join(a, b, Timeouts{}) }()
	user.Write([]byte("bye"))
	user.CloseWrite()
	backend.SetReadDeadline(time.Now().Add(ftPrompt))
	got, err := io.ReadAll(backend)
	if err != nil || string(got) != "bye" {
		t.Errorf("backend read %q, %v; want \"bye\" and a clean end", got, err)
	}
	backend.Close()
	ftWithin(t, ftPrompt, "Join", func() { <-done })
}
