package e2e

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// logLine returns the first line of logs that holds every part, and
// whether there is one.
func logLine(logs string, parts ...string) (string, bool) {
	for _, line := range strings.Split(logs, "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok {
			return line, true
		}
	}
	return "", false
}

// logCount counts the lines of logs that hold part.
func logCount(logs, part string) int { return strings.Count(logs, part) }

// logTime is the time= of a text log line.
func logTime(t testing.TB, line string) time.Time {
	t.Helper()
	_, rest, ok := strings.Cut(line, "time=")
	if !ok {
		t.Fatalf("no time in log line %q", line)
	}
	stamp, _, _ := strings.Cut(rest, " ")
	ts, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	return ts
}

// waitLog waits until the process logged a line holding every part, and
// returns it.
func waitLog(t testing.TB, p *proc, timeout time.Duration, parts ...string) string {
	t.Helper()
	var line string
	waitUntil(t, timeout, fmt.Sprintf("%s to log %q", p.name, parts), func() bool {
		var ok bool
		line, ok = logLine(p.logs.String(), parts...)
		return ok
	})
	return line
}

const noHandshake = "no WireGuard handshake with the server for"

// checkExplained checks the client's warning about a server it has no
// handshake with: it comes about 10 s after start, names the causes in
// order, and the client's own public key.
func checkExplained(t *testing.T, c *client, since string) {
	t.Helper()
	warn := waitLog(t, c.proc, 20*time.Second, noHandshake)
	start := logTime(t, waitLog(t, c.proc, time.Second, since))
	if d := logTime(t, warn).Sub(start); d < 9*time.Second || d > 12*time.Second {
		t.Errorf("the warning came %s after %q, want about 10 s", d, since)
	} else {
		t.Logf("warned %s after %q", d.Round(10*time.Millisecond), since)
	}
	causes := []string{"(1) this client's key is not registered on that server", "(2) ServerPublicKey is not that server's key", "(3) UDP port"}
	last := -1
	for _, cause := range causes {
		i := strings.Index(warn, cause)
		if i < 0 || i < last {
			t.Errorf("warning lacks %q after the previous cause: %s", cause, warn)
		}
		last = i
	}
	if !strings.Contains(warn, fmt.Sprintf("client_public_key=%q", c.key.PublicKey().String())) {
		t.Errorf("warning does not name the client's own public key: %s", warn)
	}
}

// TestClientExplainsItself: each usual first mistake, and a lost server,
// gets a warning naming the likely causes within about 10 s; fixing it
// gets a line saying the client connected.
func TestClientExplainsItself(t *testing.T) {
	t.Parallel()
	be := startBackend(t, "web", false)
	svc := map[string]string{"web": be.addr}

	t.Run("unregistered key", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServer(t, nil)
		c := startClient(t, srv, "home", ck, svc)
		// The start line names the server's key and endpoint.
		waitLog(t, c.proc, 5*time.Second, "using server", fmt.Sprintf("server_public_key=%q", srv.key.PublicKey().String()),
			fmt.Sprintf("endpoint=127.0.0.1:%d", srv.tunnelPort))
		checkExplained(t, c, "threshold client started")
		// Registering the key is the fix: the client says it connected.
		if code, body, err := srv.call("PUT", "/clients/home", map[string]string{"PublicKey": ck.PublicKey().String()}); err != nil || code != http.StatusOK {
			t.Fatalf("PUT /clients/home: %d %s %v", code, body, err)
		}
		registered := time.Now()
		waitLog(t, c.proc, 10*time.Second, "connected to server", "after=")
		t.Logf("connected %s after the key was registered", time.Since(registered).Round(10*time.Millisecond))
	})

	t.Run("wrong ServerPublicKey", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServer(t, map[string]wg.Key{"home": ck})
		c := startClientWith(t, srv, "home", ck, svc, map[string]any{"ServerPublicKey": newKey(t).PublicKey().String()})
		checkExplained(t, c, "threshold client started")
	})

	t.Run("UDP port blocked", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServer(t, map[string]wg.Key{"home": ck})
		c := startClientWith(t, srv, "home", ck, svc, map[string]any{"ServerTunnelControlPort": freePort(t, "udp")})
		checkExplained(t, c, "threshold client started")
	})

	t.Run("server lost", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServerWith(t, map[string]wg.Key{"home": ck}, map[string]any{"StateDir": t.TempDir()})
		c := startClient(t, srv, "home", ck, svc)
		waitLog(t, c.proc, 15*time.Second, "connected to server")
		if logCount(c.logs.String(), noHandshake) != 0 {
			t.Fatalf("warned about a server that answered:\n%s", c.logs.String())
		}
		srv.kill()
		waitLog(t, c.proc, 5*time.Second, "server not answering; retrying")
		checkExplained(t, c, "server not answering; retrying")
		srv.start(t)
		waitUntil(t, 15*time.Second, "the client to say it connected again", func() bool {
			return logCount(c.logs.String(), "connected to server") == 2
		})
	})
}

// TestServerExplainsHandshakes: the server names, within seconds of the
// client's first try, a handshake from a key it does not know (with the
// key and its address) and one made for another server key.
func TestServerExplainsHandshakes(t *testing.T) {
	t.Parallel()
	svc := map[string]string{"web": "127.0.0.1:1"}

	t.Run("unregistered key", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServer(t, nil)
		c := startClient(t, srv, "home", ck, svc)
		start := logTime(t, waitLog(t, c.proc, 5*time.Second, "threshold client started"))
		line := waitLog(t, srv.proc, 10*time.Second, "WireGuard handshake refused: the public key is not registered",
			fmt.Sprintf("client_public_key=%q", ck.PublicKey().String()), "from=127.0.0.1:")
		t.Logf("the server named the key %s after the client started", logTime(t, line).Sub(start).Round(time.Millisecond))
		if !strings.Contains(line, "level=INFO") || !strings.Contains(line, "PUT /clients/") {
			t.Errorf("line is not at INFO or does not say how to register: %s", line)
		}
		// Bounded: the client retries every 5 s; one line a minute per source.
		waitLog(t, c.proc, 20*time.Second, noHandshake)
		if n := logCount(srv.logs.String(), "the public key is not registered"); n != 1 {
			t.Errorf("%d lines in 10 s of retries, want 1", n)
		}
	})

	t.Run("wrong ServerPublicKey", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServer(t, map[string]wg.Key{"home": ck})
		c := startClientWith(t, srv, "home", ck, svc, map[string]any{"ServerPublicKey": newKey(t).PublicKey().String()})
		start := logTime(t, waitLog(t, c.proc, 5*time.Second, "threshold client started"))
		line := waitLog(t, srv.proc, 10*time.Second, "WireGuard handshake refused: it was made for another server's public key",
			fmt.Sprintf("public_key=%q", srv.key.PublicKey().String()), "from=127.0.0.1:")
		t.Logf("the server said so %s after the client started", logTime(t, line).Sub(start).Round(time.Millisecond))
	})
}

// TestServerExplainsClients: a client whose ClientId differs from its
// registration is named with both names (once) and GET /clients shows
// the name it gives itself; a registered key that completes handshakes
// but sends no heartbeats (a plain WireGuard peer here) is named about
// 10 s after its handshake.
func TestServerExplainsClients(t *testing.T) {
	t.Parallel()

	t.Run("ClientId mismatch", func(t *testing.T) {
		t.Parallel()
		ck := newKey(t)
		srv := startServer(t, map[string]wg.Key{"TestClient1": ck})
		c := startClient(t, srv, "TestClient2", ck, map[string]string{"web": "127.0.0.1:1"})
		start := logTime(t, waitLog(t, c.proc, 5*time.Second, "threshold client started"))
		line := waitLog(t, srv.proc, 10*time.Second, "level=WARN", "client calls itself by another name than it is registered under",
			"client=TestClient1", "client_says=TestClient2")
		t.Logf("the server named both %s after the client started", logTime(t, line).Sub(start).Round(time.Millisecond))
		code, body, err := srv.call("GET", "/clients", nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /clients: %d %v", code, err)
		}
		var cs map[string]struct{ ReportedClientId string }
		if err := json.Unmarshal(body, &cs); err != nil || cs["TestClient1"].ReportedClientId != "TestClient2" {
			t.Errorf("GET /clients: %s (%v), want ReportedClientId TestClient2", body, err)
		}
	})

	t.Run("handshakes without heartbeats", func(t *testing.T) {
		t.Parallel()
		pk := newKey(t)
		srv := startServer(t, map[string]wg.Key{"quiet": pk})
		peer, err := wg.New(wg.Config{PrivateKey: pk, TUN: tuntest.NewChannelTUN().TUN(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { peer.Close() })
		if err := peer.SetPeer(wg.Peer{PublicKey: srv.key.PublicKey(), AllowedIPs: []netip.Prefix{wg.TunnelPrefix},
			Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(srv.tunnelPort)), PersistentKeepalive: 5 * time.Second}); err != nil {
			t.Fatal(err)
		}
		if err := peer.Rehandshake(srv.key.PublicKey()); err != nil {
			t.Fatal(err)
		}
		var handshake time.Time
		waitUntil(t, 10*time.Second, "the handshake", func() bool {
			if hs := srv.clients(t)["quiet"].LastHandshake; hs != nil {
				handshake = *hs
				return true
			}
			return false
		})
		line := waitLog(t, srv.proc, 20*time.Second, "level=WARN", "client completes WireGuard handshakes but sends no heartbeats", "client=quiet",
			fmt.Sprintf("public_key=%q", pk.PublicKey().String()))
		// The peer may handshake again (a retry after REKEY_TIMEOUT on a
		// slow machine) and the server counts from the latest one, so the
		// reference is the handshake the line itself names: it is given to
		// the second, hence the extra second of slack.
		_, rest, _ := strings.Cut(line, "last_handshake=")
		stamp, _, _ := strings.Cut(rest, " ")
		last, err := time.Parse(time.RFC3339, stamp)
		if err != nil {
			t.Fatalf("no last_handshake in %q: %v", line, err)
		}
		if last.Before(handshake.Truncate(time.Second)) {
			t.Errorf("the line names handshake %s, before the first one seen (%s)", last, handshake)
		}
		d := logTime(t, line).Sub(last)
		t.Logf("the server said so %s after the handshake it names (first handshake seen %s before)", d.Round(time.Millisecond),
			logTime(t, line).Sub(handshake).Round(time.Millisecond))
		if d < 9*time.Second || d > 15*time.Second {
			t.Errorf("said %s after the handshake, want about 10 s", d)
		}
		if st := srv.clients(t)["quiet"]; st.CurrentState != "ClientUnknown" {
			t.Errorf("state %s", st.CurrentState)
		}
	})
}
