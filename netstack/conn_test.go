package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestNotifyReadable(t *testing.T) {
	a, b, _ := pair(t)
	ln, err := b.ListenTCP(netip.MustParseAddrPort("[::]:90"))
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("[fd00::2]:90"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var srv *TCPConn
	select {
	case s, ok := <-accepted:
		if !ok {
			t.Fatal("accept failed")
		}
		srv = s.(*TCPConn)
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	defer srv.Close()
	fired := make(chan struct{}, 4)
	notify := func() { fired <- struct{}{} }
	expect := func(what string, want bool) {
		t.Helper()
		select {
		case <-fired:
			if !want {
				t.Fatalf("%s: notified", what)
			}
		case <-time.After(200 * time.Millisecond):
			if want {
				t.Fatalf("%s: not notified", what)
			}
		}
	}
	stop := srv.NotifyReadable(notify)
	expect("nothing sent", false)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	expect("data sent", true)
	stop()
	stop() // idempotent
	// Data already waiting: at once, and only once.
	stop = srv.NotifyReadable(notify)
	expect("data waiting", true)
	expect("second event", false)
	stop()
	buf := make([]byte, 1)
	if n, err := srv.Read(buf); n != 1 || err != nil {
		t.Fatalf("read %d %v", n, err)
	}
	// A stopped notification stays quiet.
	stop = srv.NotifyReadable(notify)
	stop()
	c.Write([]byte("y"))
	expect("after stop", false)
	srv.Read(buf)
	// The peer's end of stream counts as readable.
	stop = srv.NotifyReadable(notify)
	defer stop()
	c.CloseWrite()
	expect("end of stream", true)
	// Closing the listener ends Accept with net.ErrClosed.
	ln.Close()
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

// A full link queue makes senders wait instead of dropping, and Close
// releases them.
func TestLinkBackPressure(t *testing.T) {
	l := newLink(2, 1420, true)
	mk := func() *stack.PacketBuffer {
		return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, 100))})
	}
	var list stack.PacketBufferList
	for range 3 {
		list.PushBack(mk())
	}
	done := make(chan int, 1)
	go func() {
		n, _ := l.WritePackets(list)
		done <- n
	}()
	select {
	case n := <-done:
		t.Fatalf("WritePackets returned %d with the queue full", n)
	case <-time.After(100 * time.Millisecond):
	}
	if p := l.pop(); p == nil {
		t.Fatal("nothing queued")
	} else {
		p.DecRef()
	}
	select {
	case n := <-done:
		if n != 3 {
			t.Fatalf("wrote %d of 3", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sender not released by room in the queue")
	}
	list.DecRef()
	// The queue is full again (2); a further write waits until Close.
	var more stack.PacketBufferList
	more.PushBack(mk())
	go func() {
		n, _ := l.WritePackets(more)
		done <- n
	}()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case n := <-done:
		if n != 0 {
			t.Fatalf("wrote %d after Close", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sender not released by Close")
	}
	more.DecRef()
	if l.pop() != nil {
		t.Fatal("Close kept packets")
	}
	l.Close()
}

// The NIC's queueing discipline, which every packet the stack sends goes
// through, queues on the link with the same back-pressure, and fails with
// ErrClosedForSend once the link is closed.
func TestLinkQDiscBackPressure(t *testing.T) {
	l := newLink(1, 1420, true)
	q := linkQDisc{l}
	mk := func() *stack.PacketBuffer {
		return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, 100))})
	}
	first, second := mk(), mk()
	defer first.DecRef()
	defer second.DecRef()
	if err := q.WritePacket(first); err != nil {
		t.Fatal(err)
	}
	done := make(chan tcpip.Error, 1)
	go func() { done <- q.WritePacket(second) }()
	select {
	case err := <-done:
		t.Fatalf("WritePacket returned %v with the queue full", err)
	case <-time.After(100 * time.Millisecond):
	}
	if p := l.pop(); p != first {
		t.Fatal("the first packet is not first in the queue")
	} else {
		p.DecRef()
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sender not released by room in the queue")
	}
	l.Close()
	third := mk()
	defer third.DecRef()
	if err := q.WritePacket(third); err == nil {
		t.Fatal("WritePacket succeeded on a closed link")
	} else if _, ok := err.(*tcpip.ErrClosedForSend); !ok {
		t.Fatalf("WritePacket on a closed link: %v, want ErrClosedForSend", err)
	}
	if l.pop() != nil {
		t.Fatal("Close kept packets, or a write after it queued one")
	}
}

// connected dials n connections from a to b's port and returns each
// dialled end with the end b accepted.
func connected(t *testing.T, a, b *Stack, port uint16, n int) (dialled []*TCPConn, accepted []net.Conn) {
	t.Helper()
	ln, err := b.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range n {
		c, err := a.DialTCP(ctx, netip.AddrPortFrom(netip.MustParseAddr("fd00::2"), port))
		if err != nil {
			t.Fatal(err)
		}
		peer, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); peer.Close() })
		dialled, accepted = append(dialled, c), append(accepted, peer)
	}
	return dialled, accepted
}

// TestSetLingerZeroResets: SetLinger(0) makes Close abort the connection
// (the peer's read fails at once) instead of ending it cleanly.
func TestSetLingerZeroResets(t *testing.T) {
	a, b, _ := pair(t)
	cs, peers := connected(t, a, b, 81, 1)
	c, peer := cs[0], peers[0]
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := peer.Read(make([]byte, 1))
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("peer read after SetLinger(0) and Close: %v, want a reset", err)
	}
}

// TestResetReadsAsECONNRESET: a connection the peer reset fails its Read
// with an error that errors.Is(err, syscall.ECONNRESET) (gonet's errors
// only had upstream's text), so forward.Join passes the reset on to the
// kernel side instead of closing it cleanly; a clean end of stream is
// still io.EOF.
func TestResetReadsAsECONNRESET(t *testing.T) {
	a, b, _ := pair(t)
	cs, peers := connected(t, a, b, 82, 2)
	if err := cs[0].SetLinger(0); err != nil {
		t.Fatal(err)
	}
	cs[0].Close()
	peers[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peers[0].Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer read after a reset: %v, want ECONNRESET", err)
	}
	cs[1].Close()
	peers[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peers[1].Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("peer read after a clean close: %v, want io.EOF", err)
	}
}
