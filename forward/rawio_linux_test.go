package forward

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/forward/sniff"
)

// tcpPair is a connected pair of kernel TCP sockets on loopback.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestRawTCP: a rawTCP reads and writes as the TCPConn would, with the
// errors Join relies on (end of stream, deadline, closed, reset), and
// allocates nothing per call.
func TestRawTCP(t *testing.T) {
	c, s := tcpPair(t)
	rc, rs := rawIO(c), rawIO(s)
	if _, ok := rc.(*rawTCP); !ok {
		t.Fatalf("rawIO gave %T for a *net.TCPConn", rc)
	}
	if w := rawIO(struct{ net.Conn }{c}); w == nil || w == rc {
		t.Fatal("rawIO unwrapped a wrapper, which may hold bytes of its own")
	}
	// More than the socket buffers hold, so that the write waits for the
	// reader (EAGAIN, then the poller) part way.
	msg := make([]byte, 8<<20)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	done := make(chan error, 1)
	go func() {
		n, err := rc.Write(msg)
		if err == nil && n != len(msg) {
			err = io.ErrShortWrite
		}
		done <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(rs, got); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != msg[i] {
			t.Fatalf("byte %d differs", i)
		}
	}

	buf := make([]byte, 64<<10)
	if n := testing.AllocsPerRun(100, func() {
		rc.Write(buf[:1000])
		io.ReadFull(rs, buf[:1000])
	}); n != 0 {
		t.Errorf("%.1f allocations per write and read, want 0", n)
	}

	rs.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rs.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || !isTimeout(err) {
		t.Errorf("read past the deadline: %v", err)
	}
	rs.SetReadDeadline(time.Time{})

	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := rs.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read after the peer's FIN: %d, %v; want 0, io.EOF", n, err)
	}

	// A reset: the peer closes with unread data.
	c2, s2 := tcpPair(t)
	r2 := rawIO(s2)
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c2.SetLinger(0)
	c2.Close()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if _, err = r2.Read(buf); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read after the peer's reset: %v, want ECONNRESET", err)
	}

	s.Close()
	if _, err := rs.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read of a closed socket: %v, want net.ErrClosed", err)
	}
	if _, err := rs.Write(buf[:1]); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write to a closed socket: %v, want net.ErrClosed", err)
	}
}

// TestRawIORewraps: the gateway's wrappers of a public connection (the
// probe guard, over the peek's replay or over the socket) are made again
// over a rawTCP, in their state: the peeked bytes come first, once, and
// the rest of the stream follows; a wrapper that cannot be made again is
// left alone.
func TestRawIORewraps(t *testing.T) {
	c, s := tcpPair(t)
	const req = "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	host, _, replay, err := sniff.Hostname(s, 5*time.Second, 4096)
	if err != nil || host != "app.example" {
		t.Fatalf("peek: %q, %v", host, err)
	}
	guard := &probeGuard{Conn: replay}
	r := rawIO(guard)
	rg, ok := r.(*probeGuard)
	if !ok || rg == guard {
		t.Fatalf("rawIO gave %T (the same guard: %v), want a new *probeGuard", r, rg == guard)
	}
	inner, ok := rg.Conn.(interface{ Raw() net.Conn })
	if !ok || rg.Conn == replay {
		t.Fatalf("the new guard wraps %T, want a new replay", rg.Conn)
	}
	if _, ok := inner.Raw().(*rawTCP); !ok {
		t.Fatalf("the new replay wraps %T, want *rawTCP", inner.Raw())
	}
	if p := sniff.Peeked(replay); p != nil {
		t.Errorf("the old replay still holds %q", p)
	}
	if _, err := c.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(req)+4)
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != req+"more" {
		t.Errorf("read %q, want the request then %q", got, "more")
	}
	// Writes and the half-close reach the socket through the new wrappers.
	if _, err := r.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if err := closeWrite(r); err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(c)
	if err != nil || string(back) != "reply" {
		t.Errorf("the peer read %q, %v; want %q then the end of stream", back, err, "reply")
	}

	// A guard straight over the socket.
	c2, s2 := tcpPair(t)
	g2 := rawIO(&probeGuard{Conn: s2, checked: true})
	if pg, ok := g2.(*probeGuard); !ok || !pg.checked {
		t.Fatalf("rawIO gave %T, want a checked *probeGuard", g2)
	} else if _, ok := pg.Conn.(*rawTCP); !ok {
		t.Fatalf("the guard wraps %T, want *rawTCP", pg.Conn)
	}
	c2.Write([]byte("x"))
	if _, err := io.ReadFull(g2, got[:1]); err != nil || got[0] != 'x' {
		t.Errorf("read %q, %v", got[:1], err)
	}

	// A guard over a wrapper that cannot be made again stays as it is.
	other := &probeGuard{Conn: struct{ net.Conn }{s2}}
	if rawIO(other) != net.Conn(other) {
		t.Error("rawIO remade a guard over a wrapper it cannot remake")
	}
}
