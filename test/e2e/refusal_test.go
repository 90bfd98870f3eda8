package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// refusedConn connects to addr, sends a line and waits for the server to
// close the connection without an answer.
func refusedConn(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("a refused connection got %d bytes, %v", n, err)
	}
}

// TestTunnelRefusals: a connection the client refuses (an unknown
// service, a service that is down) is logged on the server with what to
// check, at most a burst of lines per tunnel, and GET /tunnels and
// threshold status show the tunnel's last refusal; a PUT of what GET
// gave is accepted, the output-only fields ignored.
func TestTunnelRefusals(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck})
	down := tcpAddr(freePort(t, "tcp")) // nothing listens there
	be := startBackend(t, "plain", false)
	// "plain" sends no PROXY header, by the client's own choice.
	startClientWith(t, srv, "home", ck, nil, map[string]any{"ServiceToLocalAddrMap": map[string]any{
		"down": down, "plain": map[string]any{"Address": be.addr, "ProxyProtocol": 0}}})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	unknownPort, downPort, proxyPort := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{
		{ListenAddress: "127.0.0.1", ListenPort: unknownPort, BackEndService: "nosuch", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: downPort, BackEndService: "down", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: proxyPort, BackEndService: "plain", ClientId: "home", HaProxyProxyProtocol: true},
	})
	if ts := srv.tunnels(t); ts[0].LastRefusalReason != "" || ts[0].LastRefusalAt != nil {
		t.Fatalf("a tunnel nothing was refused on shows a refusal: %+v", ts[0])
	}

	before := time.Now()
	refusedConn(t, tcpAddr(unknownPort))
	line := waitLog(t, srv.proc, 5*time.Second, "level=INFO", `connection refused: client \"home\" has no service \"nosuch\": add it to ServiceToLocalAddrMap`, "reason=unknown_service")
	t.Logf("logged %s after the connection: %s", time.Since(before).Round(time.Millisecond), line)
	refusedConn(t, tcpAddr(downPort))
	waitLog(t, srv.proc, 5*time.Second, `client \"home\" could not connect to its service \"down\"`, "reason=backend_unreachable")
	refusedConn(t, tcpAddr(proxyPort))
	waitLog(t, srv.proc, 5*time.Second, `client \"home\" refused it by its PROXY policy`, "reason=client_refused")

	ts := srv.tunnels(t)
	for i, want := range []string{"unknown_service", "backend_unreachable", "client_refused"} {
		tn := ts[i]
		if tn.LastRefusalReason != want || tn.LastRefusalAt == nil || tn.LastRefusalAt.Before(before.Add(-time.Second)) || time.Since(*tn.LastRefusalAt) > time.Minute {
			t.Errorf("tunnel %d: LastRefusalReason %q at %v, want %q just now", i, tn.LastRefusalReason, tn.LastRefusalAt, want)
		}
		if !strings.Contains(tn.LastRefusal, "client \"home\"") {
			t.Errorf("tunnel %d: LastRefusal %q does not name the client", i, tn.LastRefusal)
		}
	}

	// A PUT of what GET gave is accepted; the output-only fields are not
	// the client's to set, and the record stays the server's.
	ts[1].LastRefusalReason, ts[1].LastRefusal = "forged", "forged"
	if code, body, err := srv.call("PUT", "/tunnels", ts); err != nil || code != http.StatusOK {
		t.Fatalf("PUT of GET /tunnels: %d %s %v", code, body, err)
	}
	if again := srv.tunnels(t); again[1].LastRefusalReason != "backend_unreachable" {
		t.Errorf("after the PUT: %+v", again[1])
	}

	out, errOut, code := runCLI(t, "", "status", "--config", filepath.Join(srv.dir, "server.json"))
	if code != 0 {
		t.Fatalf("threshold status: exit %d %s", code, errOut)
	}
	for _, want := range []string{fmt.Sprintf("127.0.0.1:%d *  nosuch", unknownPort), "unknown_service, ", "backend_unreachable, "} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	// A UDP session the client refuses is recorded too (its log line is
	// the UDP listener's own).
	udpPort := freePort(t, "udp")
	all := configOf(srv.tunnels(t))
	all = append(all, tunnel{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: udpPort, BackEndService: "nosuch", ClientId: "home"})
	srv.mustPutTunnels(t, all)
	uc, err := net.Dial("udp", tcpAddr(udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	waitUntil(t, 10*time.Second, "GET /tunnels to show the UDP tunnel's refusal", func() bool {
		uc.Write([]byte("ping"))
		ts := srv.tunnels(t)
		return len(ts) == 4 && ts[3].LastRefusalReason == "unknown_service" && ts[3].LastRefusalAt != nil
	})

	// Bounded per tunnel: 30 more refusals add at most the burst.
	for range 30 {
		refusedConn(t, tcpAddr(unknownPort))
	}
	if n := logCount(srv.logs.String(), `has no service \"nosuch\"`); n > 10 {
		t.Errorf("%d lines for 31 refusals on one tunnel, want at most 10", n)
	}
}
