package forward

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func TestRelay(t *testing.T) {
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	go func() {
		for {
			c, err := upstream.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	var d net.Dialer
	r, err := NewRelay(RelayConfig{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", upstream.Addr().String())
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- r.Serve(ln) }()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "through the relay")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "through the relay" {
		t.Fatalf("echo %q %v", got, err)
	}
	c.Close()

	// A live connection is closed by Close, which also ends Serve.
	live, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	io.WriteString(live, "x")
	live.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(live, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r.Close()
	if _, err := live.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("live connection after Close: %v", err)
	}
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}

func TestRelayUpstreamDown(t *testing.T) {
	r, err := NewRelay(RelayConfig{
		Dial:   func(ctx context.Context) (net.Conn, error) { return nil, context.DeadlineExceeded },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go r.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("want the connection closed when upstream is down, got %v", err)
	}
	if _, err := NewRelay(RelayConfig{}); err == nil {
		t.Error("empty config accepted")
	}
}
