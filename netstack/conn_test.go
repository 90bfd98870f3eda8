package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
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
