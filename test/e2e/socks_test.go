package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/test/e2e/socksclient"
)

// sourceEcho answers every connection with the source address it sees,
// then echoes until EOF.
func sourceEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func socksCode(err error) byte {
	var re *socksclient.ReplyError
	if errors.As(err, &re) {
		return re.Code
	}
	return 0xff
}

// TestSocks5Loopback exercises SOCKS5 egress on loopback. Loopback is
// denied by default, so the server allows 127.0.0.1/32 explicitly; the
// netns test proves the real topology.
func TestSocks5Loopback(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	off := false
	srv := startServerWith(t, nil, map[string]any{
		"Socks5AllowCIDRs": []string{"127.0.0.1/32"},
		"Clients": []map[string]any{
			{"ClientId": "mail", "PublicKey": ka.PublicKey().String()},
			{"ClientId": "nosocks", "PublicKey": kb.PublicKey().String(), "Socks5Enabled": off},
		},
	})
	be := startBackend(t, "backend", false)
	socksA, socksB := tcpAddr(freePort(t, "tcp")), tcpAddr(freePort(t, "tcp"))
	ca := startClientWith(t, srv, "mail", ka, map[string]string{"web": be.addr}, map[string]any{"Socks5ListenAddress": socksA})
	cb := startClientWith(t, srv, "nosocks", kb, map[string]string{"web": be.addr}, map[string]any{"Socks5ListenAddress": socksB})
	srv.waitState(t, "mail", "ClientConnected", 30*time.Second)
	srv.waitState(t, "nosocks", "ClientConnected", 30*time.Second)
	dest := sourceEcho(t)

	c, err := socksclient.Dial(socksA, dest, 10*time.Second)
	if err != nil {
		t.Fatalf("SOCKS5 CONNECT %s: %v", dest, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := strings.Repeat("egress payload ", 1000)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	line, echo, _ := strings.Cut(string(got), "\n")
	if err != nil || echo != msg || !strings.HasPrefix(line, "127.0.0.1:") {
		t.Fatalf("through SOCKS5: %q... %v", got[:min(len(got), 60)], err)
	}
	// Egress bytes are counted per client, exactly.
	waitUntil(t, 10*time.Second, "egress counters", func() bool {
		st := srv.clients(t)["mail"]
		return st.Socks5BytesSent == uint64(len(msg)) && st.Socks5BytesReceived == uint64(len(got))
	})

	// Each refusal is logged on the client at INFO with its reason in
	// plain words (the server sends it in its failure reply).
	for _, tc := range []struct{ target, reason, words string }{
		{"127.0.0.2:80", "loopback", "the destination is a loopback address"}, // beyond the allowed /32
		{"169.254.169.254:80", "metadata", "the destination is the cloud metadata service"},
		{"10.1.2.3:25", "private", "the destination is a private address"},
		{"[::1]:80", "loopback", "the destination is a loopback address"},
		{tcpAddr(srv.mgmtPort), "management_port", "the destination is the server's own management port"},
		{fmt.Sprintf("localhost:%d", srv.mgmtPort), "", ""}, // the same, by name
	} {
		asked := time.Now()
		if _, err := socksclient.Dial(socksA, tc.target, 10*time.Second); socksCode(err) != 0x02 {
			t.Errorf("SOCKS5 to %s: %v, want reply 0x02", tc.target, err)
		}
		if tc.reason != "" {
			waitLog(t, ca.proc, 5*time.Second, "level=INFO", "SOCKS5 connection refused by the server: "+tc.words, "reason="+tc.reason, "destination="+tc.target)
			t.Logf("%s: logged %s after the request", tc.target, time.Since(asked).Round(time.Millisecond))
		}
	}
	if _, err := socksclient.Dial(socksB, dest, 10*time.Second); socksCode(err) != 0x02 {
		t.Errorf("client with Socks5Enabled=false: %v, want reply 0x02", err)
	}
	waitLog(t, cb.proc, 5*time.Second, "SOCKS5 egress is disabled for this client", "reason=socks5_disabled")
	if st := srv.clients(t)["nosocks"]; st.Socks5Enabled {
		t.Error("GET /clients shows SOCKS5 enabled for nosocks")
	}
}
