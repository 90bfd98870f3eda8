package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/test/e2e/socksclient"
	"github.com/thresholdtunnel/threshold/wg"
)

// startMultiClient starts a client attached to every server of servers,
// in that order, with extra config fields (they win).
func startMultiClient(t testing.TB, servers []*server, id string, key wg.Key, services map[string]string, extra map[string]any) *client {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "client.key")
	if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	for _, s := range servers {
		list = append(list, map[string]any{"ServerHost": "127.0.0.1", "ServerTunnelControlPort": s.tunnelPort, "ServerPublicKey": s.key.PublicKey().String()})
	}
	c := &client{id: id, key: key, path: filepath.Join(dir, "client.json")}
	c.config = map[string]any{
		"DebugLog": true, "ClientId": id, "Servers": list, "PrivateKeyFile": keyFile, "ServiceToLocalAddrMap": services,
	}
	for k, v := range extra {
		c.config[k] = v
	}
	writeJSON(t, c.path, c.config)
	c.start(t)
	return c
}

// clientStatusDoc is GET /status of a client's status endpoint.
type clientStatusDoc struct {
	ClientId, PublicKey, TunnelAddress string
	Servers                            []struct {
		ServerHost              string
		ServerTunnelControlPort int
		ServerPublicKey         string
		Endpoint, State         string
		LastHandshake           *time.Time
		LastHeartbeat           *time.Time
		Connections             int
	}
	Services []struct{ Name, Address string }
	Socks5   *struct {
		ListenAddress string
		Order         []string
		Current       string
	}
}

func getStatus(addr string) (clientStatusDoc, error) {
	var st clientStatusDoc
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /status: %d %s", resp.StatusCode, body)
	}
	return st, json.Unmarshal(body, &st)
}

// socksSource dials dest through a SOCKS5 port and returns the source
// address the destination saw: which server the connection left from.
func socksSource(socks, dest string) (string, error) {
	c, err := socksclient.Dial(socks, dest, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	host, _, _ := strings.Cut(line, ":")
	return host, nil
}

// TestMultiServer: one client on two servers that share nothing. Both
// serve the same backend; killing one leaves the other serving; it comes
// back by itself; SOCKS5 egress fails over to the second and back to the
// first. Each server leaves from a loopback address of its own, so the
// destination tells them apart.
func TestMultiServer(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	egress := []string{"127.0.0.2", "127.0.0.3"}
	var servers []*server
	for _, addr := range egress {
		servers = append(servers, startServerWith(t, map[string]wg.Key{"home": ck}, map[string]any{
			"StateDir":            t.TempDir(),
			"Socks5EgressAddress": addr,
			"Socks5AllowCIDRs":    []string{"127.0.0.1/32"},
		}))
	}
	s1, s2 := servers[0], servers[1]
	be := startBackend(t, "web", false)
	socks, status := tcpAddr(freePort(t, "tcp")), tcpAddr(freePort(t, "tcp"))
	cl := startMultiClient(t, servers, "home", ck, map[string]string{"web": be.addr},
		map[string]any{"Socks5ListenAddress": socks, "StatusListenAddress": status})
	ports := []int{freePort(t, "tcp"), freePort(t, "tcp")}
	for i, s := range servers {
		s.waitState(t, "home", "ClientConnected", 30*time.Second)
		s.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: ports[i], BackEndService: "web", ClientId: "home"}})
	}
	for _, p := range ports {
		mustExchange(t, tcpAddr(p), "web")
	}

	// Key reuse: each server derives the same tunnel address from the
	// client's one key, inside its own tunnel.
	want := wg.ClientAddr(ck.PublicKey()).String()
	for i, s := range servers {
		if got := s.clients(t)["home"].TunnelAddress; got != want {
			t.Errorf("server %d: client tunnel address %s, want %s", i+1, got, want)
		}
	}

	// Both servers are named with their key and endpoint at start; SOCKS5
	// leaves from the first.
	for _, s := range servers {
		line := fmt.Sprintf("server_public_key=%q endpoint=127.0.0.1:%d", s.key.PublicKey().String(), s.tunnelPort)
		waitUntil(t, 5*time.Second, "start line naming "+line, func() bool { return strings.Contains(cl.logs.String(), line) })
	}
	dest := sourceEcho(t)
	waitUntil(t, 10*time.Second, "SOCKS5 via the first server", func() bool {
		src, err := socksSource(socks, dest)
		return err == nil && src == egress[0]
	})
	name := func(s *server) string { return fmt.Sprintf("127.0.0.1:%d", s.tunnelPort) }
	var st clientStatusDoc
	waitUntil(t, 5*time.Second, "status showing both servers connected", func() bool {
		var err error
		st, err = getStatus(status)
		return err == nil && len(st.Servers) == 2 && st.Servers[0].State == "connected" && st.Servers[1].State == "connected"
	})
	if st.Socks5 == nil || st.Socks5.Current != name(s1) || len(st.Socks5.Order) != 2 || st.Socks5.Order[1] != name(s2) ||
		st.TunnelAddress != want || st.Servers[0].LastHandshake == nil || st.Servers[1].ServerPublicKey != s2.key.PublicKey().String() {
		t.Fatalf("status with both servers up: %+v", st)
	}

	// Kill the first server: the second keeps serving, without a break.
	logsAtKill := len(cl.logs.String())
	killed := time.Now()
	s1.kill()
	var failover time.Duration
	for deadline := time.Now().Add(20 * time.Second); failover == 0; {
		if time.Now().After(deadline) {
			t.Fatal("SOCKS5 egress did not move to the second server within 20 s")
		}
		mustExchange(t, tcpAddr(ports[1]), "web")
		if src, err := socksSource(socks, dest); err == nil && src == egress[1] {
			failover = time.Since(killed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("SOCKS5 egress failed over %s after the first server was killed", failover.Round(10*time.Millisecond))
	waitUntil(t, 10*time.Second, "status showing the failover", func() bool {
		st, err := getStatus(status)
		return err == nil && st.Socks5.Current == name(s2) && st.Servers[0].State == "disconnected" && st.Servers[1].State == "connected"
	})

	// It comes back by itself: no API call, no client restart.
	s1.start(t)
	restarted := time.Now()
	var failback time.Duration
	for deadline := time.Now().Add(30 * time.Second); failback == 0; {
		if time.Now().After(deadline) {
			t.Fatal("SOCKS5 egress did not move back to the first server within 30 s of its restart")
		}
		if src, err := socksSource(socks, dest); err == nil && src == egress[0] {
			failback = time.Since(restarted)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("SOCKS5 egress moved back %s after the first server was restarted", failback.Round(10*time.Millisecond))
	s1.waitState(t, "home", "ClientConnected", 10*time.Second)
	for _, p := range ports {
		mustExchange(t, tcpAddr(p), "web")
	}

	// The client said so: each change of the SOCKS5 route, in order. (At
	// start the second server may answer first and carry SOCKS5 until the
	// first does.)
	moves := func(logs string) []string {
		var out []string
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, "SOCKS5 egress now leaves from server") {
				_, after, _ := strings.Cut(line, " server=")
				srv, _, _ := strings.Cut(after, " ")
				out = append(out, srv)
			}
		}
		return out
	}
	logs := cl.logs.String()
	before, after := moves(logs[:logsAtKill]), moves(logs[logsAtKill:])
	if len(before) == 0 || before[len(before)-1] != name(s1) {
		t.Errorf("SOCKS5 route changes logged before the kill: %q, want the last to be %s", before, name(s1))
	}
	if len(after) != 2 || after[0] != name(s2) || after[1] != name(s1) {
		t.Errorf("SOCKS5 route changes logged after the kill: %q, want %s, %s", after, name(s2), name(s1))
	}
	if line, ok := logLine(logs[logsAtKill:], "SOCKS5 egress now leaves from server", "server="+name(s2)); ok {
		t.Logf("the client logged the move to the second server %s after the kill", logTime(t, line).Sub(killed).Round(10*time.Millisecond))
	}
	if !strings.Contains(logs, "order=\""+name(s1)+", "+name(s2)+"\"") {
		t.Errorf("the client's logs do not show the SOCKS5 order")
	}
}

// TestMultiServerOneDown: a server that never answers slows no other: the
// client attaches to the one that does at once, serves it, and sends
// SOCKS5 through it.
func TestMultiServerOneDown(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	live := startServerWith(t, map[string]wg.Key{"home": ck}, map[string]any{"Socks5AllowCIDRs": []string{"127.0.0.1/32"}})
	dead := &server{key: newKey(t), tunnelPort: freePort(t, "udp")} // nothing listens there
	be := startBackend(t, "web", false)
	socks, status := tcpAddr(freePort(t, "tcp")), tcpAddr(freePort(t, "tcp"))
	start := time.Now()
	cl := startMultiClient(t, []*server{dead, live}, "home", ck, map[string]string{"web": be.addr},
		map[string]any{"Socks5ListenAddress": socks, "StatusListenAddress": status})
	live.waitState(t, "home", "ClientConnected", 5*time.Second)
	t.Logf("attached to the live server %s after start, the first one dead", time.Since(start).Round(10*time.Millisecond))
	port := freePort(t, "tcp")
	live.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}})
	mustExchange(t, tcpAddr(port), "web")
	dest := sourceEcho(t)
	if _, err := socksSource(socks, dest); err != nil {
		t.Fatalf("SOCKS5 with the first server dead: %v", err)
	}
	st, err := getStatus(status)
	if err != nil {
		t.Fatal(err)
	}
	if st.Servers[0].State != "connecting" || st.Servers[1].State != "connected" || st.Socks5.Current != fmt.Sprintf("127.0.0.1:%d", live.tunnelPort) {
		t.Errorf("status: %+v", st)
	}
	// The dead one is explained, the live one is not.
	warn := waitLog(t, cl.proc, 15*time.Second, noHandshake)
	if !strings.Contains(warn, fmt.Sprintf("server=127.0.0.1:%d", dead.tunnelPort)) {
		t.Errorf("the warning does not name the dead server: %s", warn)
	}
	if n := logCount(cl.logs.String(), noHandshake); n != 1 {
		t.Errorf("%d warnings, want the dead server's one", n)
	}
}
