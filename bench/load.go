package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	dialTimeout   = 5 * time.Second
	ioTimeout     = 10 * time.Second // one read or write making no progress
	drainTimeout  = 60 * time.Second // an upload's last bytes reaching the backend
	clientBufSize = 128 << 10
)

// dialFunc opens a TCP connection to addr: dial on loopback, a namespace's
// dial (netHost.dial) in the WAN benchmark.
type dialFunc func(addr string) (*net.TCPConn, error)

// dial is the dialFunc of the bench's own network namespace.
func dial(addr string) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", addr, dialTimeout)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// transfer is the outcome of one bulk stream.
type transfer struct {
	bytes   int64
	start   time.Time
	elapsed time.Duration
}

// upload sends frames to the backend for dur (or maxBytes), then an empty
// frame, and waits for the backend's count: the figure is bytes that
// reached the backend over the time until it said so. Framing instead of
// a half-close, which not every tunnel carries (frp does not).
func upload(dial dialFunc, addr string, dur time.Duration, maxBytes int64) (transfer, error) {
	c, err := dial(addr)
	if err != nil {
		return transfer{}, err
	}
	defer c.Close()
	return uploadOn(c, dur, maxBytes)
}

// uploadOn is upload on a connection already open.
func uploadOn(c *net.TCPConn, dur time.Duration, maxBytes int64) (transfer, error) {
	buf := make([]byte, clientBufSize)
	binary.BigEndian.PutUint32(buf, uint32(len(buf)-4)) // each write is one frame
	start := time.Now()
	end := start.Add(dur)
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte{modeFramed}); err != nil {
		return transfer{}, err
	}
	for sent := int64(0); sent < maxBytes && time.Now().Before(end); {
		_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return transfer{}, fmt.Errorf("upload: %w", err)
		}
	}
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(make([]byte, 4)); err != nil {
		return transfer{}, fmt.Errorf("upload: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(drainTimeout))
	var count [8]byte
	if _, err := io.ReadFull(c, count[:]); err != nil {
		return transfer{}, fmt.Errorf("upload: waiting for the backend's count: %w", err)
	}
	return transfer{bytes: int64(binary.BigEndian.Uint64(count[:])), start: start, elapsed: time.Since(start)}, nil
}

// uploadCounted sends to a counting sink (modeCount, id) for dur; the
// figure is what the backend has received by then, read through count.
// Unlike upload it does not wait for the data still on its way, which over
// a slow path could take longer than the test: what arrives later is not
// counted, as in download.
func uploadCounted(c *net.TCPConn, id uint64, count func() int64, dur time.Duration) (transfer, error) {
	tr, _, err := uploadCountedSent(c, id, count, dur)
	return tr, err
}

// uploadCountedSent is uploadCounted that also says how many bytes of
// payload the connection took (a write cut by the deadline counts what it
// took), which is what the backend counts in the end.
func uploadCountedSent(c *net.TCPConn, id uint64, count func() int64, dur time.Duration) (transfer, int64, error) {
	var hdr [9]byte
	hdr[0] = modeCount
	binary.BigEndian.PutUint64(hdr[1:], id)
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(hdr[:]); err != nil {
		return transfer{}, 0, err
	}
	buf := make([]byte, clientBufSize)
	start := time.Now()
	end := start.Add(dur)
	_ = c.SetWriteDeadline(end)
	var sent int64
	for time.Now().Before(end) {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			return transfer{}, sent, fmt.Errorf("upload: %w", err)
		}
	}
	return transfer{bytes: count(), start: start, elapsed: time.Since(start)}, sent, nil
}

// download reads from the source for dur (or maxBytes), then hangs up.
func download(dial dialFunc, addr string, dur time.Duration, maxBytes int64) (transfer, error) {
	c, err := dial(addr)
	if err != nil {
		return transfer{}, err
	}
	defer c.Close()
	return downloadOn(c, dur, maxBytes)
}

// downloadOn is download on a connection already open.
func downloadOn(c *net.TCPConn, dur time.Duration, maxBytes int64) (transfer, error) {
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte{modeSource}); err != nil {
		return transfer{}, err
	}
	buf := make([]byte, clientBufSize)
	start := time.Now()
	end := start.Add(dur)
	var got int64
	for got < maxBytes {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		dl := now.Add(ioTimeout)
		if end.Before(dl) {
			dl = end
		}
		_ = c.SetReadDeadline(dl)
		n, err := c.Read(buf)
		got += int64(n)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(end) {
				break
			}
			return transfer{}, fmt.Errorf("download: %w", err)
		}
	}
	return transfer{bytes: got, start: start, elapsed: time.Since(start)}, nil
}

// parallel runs f(0)...f(n-1) at once and returns each one's outcome.
func parallel(n int, f func(i int) (transfer, error)) ([]transfer, error) {
	var wg sync.WaitGroup
	res := make([]transfer, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); res[i], errs[i] = f(i) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return res, nil
}

// streams runs n bulk streams at once; the figure is their aggregate.
func streams(n int, f func() (transfer, error)) (transfer, error) {
	res, err := parallel(n, func(int) (transfer, error) { return f() })
	if err != nil {
		return transfer{}, err
	}
	return aggregate(res), nil
}

// aggregate is the transfers' bytes over the time from the first one's
// start to the last one's end: streams that did not quite overlap are
// never counted as if they had run side by side.
func aggregate(ts []transfer) transfer {
	var out transfer
	var end time.Time
	for _, t := range ts {
		out.bytes += t.bytes
		if out.start.IsZero() || t.start.Before(out.start) {
			out.start = t.start
		}
		if e := t.start.Add(t.elapsed); e.After(end) {
			end = e
		}
	}
	out.elapsed = end.Sub(out.start)
	return out
}

// together opens n connections, then runs f on all of them at once, so
// that a slow handshake (over a lossy link a lost SYN is sent again only
// after a second) cannot stagger the transfers. It resets the connections
// at the end, so that nothing they still hold goes on crossing the path.
func together(n int, dial func() (*net.TCPConn, error), f func(i int, c *net.TCPConn) (transfer, error)) ([]transfer, error) {
	conns := make([]*net.TCPConn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.SetLinger(0)
			c.Close()
		}
	}()
	for range n {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
	}
	return parallel(n, func(i int) (transfer, error) { return f(i, conns[i]) })
}

func mbps(t transfer) float64 { return float64(t.bytes) / 1e6 / t.elapsed.Seconds() }

// shortConn opens a connection, sends 16 bytes to the echo, reads the 16
// back and closes.
func shortConn(dial dialFunc, addr string) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	req := []byte("Ethreshold-bench")
	if _, err := c.Write(req); err != nil {
		return err
	}
	var resp [16]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return err
	}
	if !bytes.Equal(resp[:], req) {
		return errors.New("echo answered something else")
	}
	return nil
}

type rateResult struct {
	perSec   float64
	ok, errs int64
	firstErr error
}

// connRate runs workers doing shortConn until dur has passed or maxCount
// have been started.
func connRate(dial dialFunc, addr string, workers int, dur time.Duration, maxCount int64) rateResult {
	var started, ok, bad atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && started.Add(1) <= maxCount {
				if err := shortConn(dial, addr); err != nil {
					bad.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					time.Sleep(time.Millisecond) // do not spin on a refusing port
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	return rateResult{perSec: float64(ok.Load()) / el.Seconds(), ok: ok.Load(), errs: bad.Load(), firstErr: firstErr}
}

type latencyResult struct {
	p50, p99 float64 // microseconds
	n        int
}

// pingPong measures count round trips of a 64-byte message on one
// connection, after warmup unrecorded ones, within maxDur.
func pingPong(dial dialFunc, addr string, warmup, count int, maxDur time.Duration) (latencyResult, error) {
	c, err := dial(addr)
	if err != nil {
		return latencyResult{}, err
	}
	defer c.Close()
	msg := make([]byte, 64)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	msg[0] = modeEcho
	resp := make([]byte, 64)
	samples := make([]time.Duration, 0, count)
	end := time.Now().Add(maxDur)
	for i := 0; i < warmup+count && time.Now().Before(end); i++ {
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return latencyResult{}, err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return latencyResult{}, err
		}
		d := time.Since(t0)
		if !bytes.Equal(resp, msg) {
			return latencyResult{}, errors.New("echo answered something else")
		}
		if i >= warmup {
			samples = append(samples, d)
		}
	}
	if len(samples) == 0 {
		return latencyResult{}, errors.New("no round trip within the time limit")
	}
	slices.Sort(samples)
	pct := func(p float64) float64 {
		i := int(p * float64(len(samples)-1))
		return float64(samples[i].Nanoseconds()) / 1e3
	}
	return latencyResult{p50: pct(0.50), p99: pct(0.99), n: len(samples)}, nil
}

// idleSet holds connections opened end to end and left idle.
type idleSet struct {
	mu       sync.Mutex
	conns    []net.Conn
	errs     int
	firstErr error
	opened   atomic.Int64 // dials so far, for the source addresses
}

// idlePerSource is how many idle connections come from one loopback
// source address. A threshold server admits 256 public connections per
// source by default (MaxPublicConnectionsPerSource), so 1,000 idle users
// must come from several addresses, as they would from the internet; all
// of 127.0.0.0/8 is loopback.
const idlePerSource = 200

// idleSource is the local address of the i-th idle connection to a
// loopback IPv4 addr: 127.0.0.2 for the first idlePerSource, then
// 127.0.0.3, and so on (nil, the default, for any other addr).
func idleSource(addr string, i int64) *net.TCPAddr {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return nil
	}
	n := 2 + i/idlePerSource
	return &net.TCPAddr{IP: net.IPv4(127, byte(n>>16), byte(n>>8), byte(n))}
}

// open adds connections until the set holds target of them (counting
// failures as attempts, so a refusing path ends too) or maxDur passes.
// Each connection does one echo first, so it is known to reach the backend.
func (s *idleSet) open(addr string, target, workers int, maxDur time.Duration) {
	end := time.Now().Add(maxDur)
	var attempts atomic.Int64
	attempts.Store(int64(len(s.conns) + s.errs))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && attempts.Add(1) <= int64(target) {
				c, err := s.openOne(addr)
				s.mu.Lock()
				if err != nil {
					s.errs++
					if s.firstErr == nil {
						s.firstErr = err
					}
				} else {
					s.conns = append(s.conns, c)
				}
				s.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func (s *idleSet) openOne(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	if src := idleSource(addr, s.opened.Add(1)-1); src != nil {
		d.LocalAddr = src
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	req := []byte("Eidle-connection")
	resp := make([]byte, len(req))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func (s *idleSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}
