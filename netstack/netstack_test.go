package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// pumpLink shuttles packets between two stacks, as two WireGuard devices would.
type pumpLink struct {
	wg        sync.WaitGroup
	mu        sync.Mutex
	batches   []int // packets per Read, for the batching test
	maxPacket int
}

func (l *pumpLink) pump(from, to *Stack) {
	defer l.wg.Done()
	bufs := make([][]byte, BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, BatchSize)
	for {
		n, err := from.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		l.mu.Lock()
		l.batches = append(l.batches, n)
		for i := range n {
			l.maxPacket = max(l.maxPacket, sizes[i])
		}
		l.mu.Unlock()
		out := make([][]byte, n)
		for i := range n {
			out[i] = bufs[i][:sizes[i]]
		}
		if _, err := to.Write(out, 0); err != nil {
			return
		}
	}
}

func pair(t *testing.T) (*Stack, *Stack, *pumpLink) {
	t.Helper()
	a, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::2"), netip.MustParseAddr("192.0.2.2")}})
	if err != nil {
		t.Fatal(err)
	}
	l := &pumpLink{}
	l.wg.Add(2)
	go l.pump(a, b)
	go l.pump(b, a)
	t.Cleanup(func() { a.Close(); b.Close(); l.wg.Wait() })
	return a, b, l
}

// listenAt listens on s at addr's port, on the unspecified address of
// addr's family, and returns addr parsed.
func listenAt(t *testing.T, s *Stack, addr string) (netip.AddrPort, net.Listener) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	any := netip.IPv6Unspecified()
	if ap.Addr().Is4() {
		any = netip.IPv4Unspecified()
	}
	ln, err := s.ListenTCP(netip.AddrPortFrom(any, ap.Port()))
	if err != nil {
		t.Fatal(err)
	}
	return ap, ln
}

func TestTCPBothFamiliesAndBatching(t *testing.T) {
	a, b, l := pair(t)
	for _, addr := range []string{"[fd00::2]:80", "192.0.2.2:81"} {
		ap, ln := listenAt(t, b, addr)
		const size = 4 << 20
		done := make(chan []byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- nil
				return
			}
			defer c.Close()
			got, _ := io.ReadAll(c)
			c.Write([]byte("bye"))
			done <- got
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := a.DialTCP(ctx, ap)
		cancel()
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		payload := []byte(strings.Repeat("0123456789abcdef", size/16))
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		reply, err := io.ReadAll(c)
		if err != nil || string(reply) != "bye" {
			t.Fatalf("reply after half-close: %q %v", reply, err)
		}
		c.Close()
		select {
		case got := <-done:
			if len(got) != size || string(got) != string(payload) {
				t.Fatalf("%s: received %d bytes, want %d intact", addr, len(got), size)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("server side never finished")
		}
		ln.Close()
	}
	// The pumps still run (a last ACK, a FIN), so read under their lock.
	l.mu.Lock()
	maxBatch := 0
	for _, n := range l.batches {
		maxBatch = max(maxBatch, n)
	}
	maxPacket := l.maxPacket
	l.mu.Unlock()
	if maxBatch < 2 {
		t.Errorf("largest Read batch was %d packets; bulk transfer should queue several", maxBatch)
	}
	// Segmentation offload: TCP built large segments, Read cut them to the MTU.
	if maxPacket > defaultMTU {
		t.Errorf("Read returned a %d-byte packet, over the %d MTU", maxPacket, defaultMTU)
	}
}

func TestUDP(t *testing.T) {
	a, b, _ := pair(t)
	srv, err := b.ListenUDP(netip.MustParseAddrPort("[fd00::2]:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	c, err := a.DialUDP(netip.MustParseAddrPort("[fd00::2]:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 10)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("echo: %q %v", buf[:n], err)
	}
}

func TestDialUnansweredHonoursContext(t *testing.T) {
	a, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("fd00::1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Nobody reads the stack's packets: the dial must still end with ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := a.DialTCP(ctx, netip.MustParseAddrPort("[fd00::9]:1")); err == nil {
		t.Fatal("dial to nowhere succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("dial took %s", d)
	}
}

func TestCloseIsIdempotentAndUnblocksRead(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 2000)}
		_, err := s.Read(bufs, []int{0}, 0)
		readErr <- err
	}()
	s.Close()
	s.Close()
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("Read after Close returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	if _, ok := <-s.Events(); ok {
		// The EventUp sent at creation may still be queued; then it closes.
		if _, ok := <-s.Events(); ok {
			t.Fatal("events channel not closed")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("goroutines: %d before, %d after Close", before, n)
	}
}

func TestOptionsValidated(t *testing.T) {
	_, err := New(Options{MTU: 100, CongestionControl: "vegas", TCPSendBufferMax: 10})
	if err == nil {
		t.Fatal("bad options accepted")
	}
	for _, want := range []string{"address", "MTU", "congestion", "buffer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := New(Options{Addresses: []netip.Addr{{}}}); err == nil {
		t.Error("invalid address accepted")
	}
}

func TestWriteRejectsUnknownFamily(t *testing.T) {
	s, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([][]byte{{0x50, 0, 0, 0}}, 0); err == nil || errors.Is(err, nil) {
		t.Fatal("a packet that is neither IPv4 nor IPv6 was accepted")
	}
}
