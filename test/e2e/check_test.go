package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// checkResult is one result of POST /tunnels/check.
type checkResult struct {
	Tunnel                         tunnel
	OK                             bool
	Reason, Error, ClientId, Token string
	RoundTripMillis, BackendMillis float64
}

type checkReply struct {
	OK      bool
	Results []checkResult
}

// check calls POST /tunnels/check, waiting out its rate limit.
func (s *server) check(t testing.TB, body any) checkReply {
	t.Helper()
	code, data, err := s.call("POST", "/tunnels/check", body)
	for deadline := time.Now().Add(20 * time.Second); code == http.StatusTooManyRequests && time.Now().Before(deadline); {
		time.Sleep(time.Second)
		code, data, err = s.call("POST", "/tunnels/check", body)
	}
	if err != nil || code != http.StatusOK {
		t.Fatalf("POST /tunnels/check: %d %s %v", code, data, err)
	}
	var r checkReply
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// silentPort is a loopback port whose listener never accepts and whose
// accept queue is full: connecting to it times out, as to a host that
// drops packets.
func silentPort(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for range 5 { // fill the accept queue
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("could not fill the accept queue of a silent port")
	return ""
}

// smtpBackend greets each connection first, as a mail server does, and
// records whether a byte ever arrived.
func smtpBackend(t testing.TB) (addr string, gotBytes func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan int, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprint(c, "220 mail.example.com ESMTP\r\n")
				buf := make([]byte, 512)
				n, _ := c.Read(buf)
				got <- n
			}()
		}
	}()
	return ln.Addr().String(), func() int {
		total := 0
		for {
			select {
			case n := <-got:
				total += n
			default:
				return total
			}
		}
	}
}

// TestReachabilityCheck: POST /tunnels/check and threshold check, with
// every failure reason, authenticated and rate-limited; nothing reaches a
// backend but one connect.
func TestReachabilityCheck(t *testing.T) {
	t.Parallel()
	ck, ak := newKey(t), newKey(t)
	tokenFile := filepath.Join(t.TempDir(), "mgmt.token")
	const token = "check-test-token-0123456789abcdef"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServerWith(t, map[string]wg.Key{"home": ck, "away": ak}, map[string]any{"ManagementTokenFile": tokenFile})
	srv.token = token
	web := startBackend(t, "web", false)
	mail, mailBytes := smtpBackend(t)
	dns, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	cl := startClient(t, srv, "home", ck, map[string]string{
		"web": web.addr, "mail": mail, "down": tcpAddr(freePort(t, "tcp")), "silent": silentPort(t),
		"dns": dns.LocalAddr().String(), "nodns": tcpAddr(freePort(t, "udp")),
	})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := map[string]int{}
	for _, name := range []string{"web", "mail", "unknown", "down", "silent", "away", "named", "dns", "nodns"} {
		port[name] = freePort(t, "tcp")
	}
	ts := []tunnel{
		{ListenAddress: "127.0.0.1", ListenPort: port["web"], BackEndService: "web", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: port["mail"], BackEndService: "mail", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: port["unknown"], BackEndService: "nosuch", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: port["down"], BackEndService: "down", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: port["silent"], BackEndService: "silent", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: port["away"], BackEndService: "web", ClientId: "away"},
		{ListenAddress: "127.0.0.1", ListenPort: port["named"], ListenHostnameGlob: "a.example.com", BackEndService: "web", ClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: port["named"], ListenHostnameGlob: "*.example.com", BackEndService: "down", ClientId: "home"},
		{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port["dns"], BackEndService: "dns", ClientId: "home"},
		{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port["nodns"], BackEndService: "nodns", ClientId: "home"},
	}
	srv.mustPutTunnels(t, ts)

	// Authenticated like the rest of the API.
	srv.token = ""
	if code, _, _ := srv.call("POST", "/tunnels/check", nil); code != http.StatusUnauthorized {
		t.Errorf("POST /tunnels/check without the token: %d", code)
	}
	if code, _, _ := srv.call("POST", "/tunnels/check/arm", map[string]int{"ListenPort": port["web"]}); code != http.StatusUnauthorized {
		t.Errorf("POST /tunnels/check/arm without the token: %d", code)
	}
	srv.token = token

	// Every tunnel, each with its result.
	start := time.Now()
	reply := srv.check(t, nil)
	t.Logf("POST /tunnels/check of %d tunnels took %s", len(reply.Results), time.Since(start).Round(time.Millisecond))
	byPort := map[int]checkResult{}
	for _, r := range reply.Results {
		if r.Tunnel.ListenHostnameGlob == "*.example.com" {
			continue
		}
		byPort[r.Tunnel.ListenPort] = r
	}
	want := map[string]string{"web": "", "mail": "", "unknown": "unknown_service", "down": "backend_refused",
		"silent": "backend_timeout", "away": "no_client_connected", "named": "", "dns": "", "nodns": "backend_refused"}
	for name, reason := range want {
		r := byPort[port[name]]
		if r.Reason != reason || r.OK != (reason == "") {
			t.Errorf("%s: %+v, want reason %q", name, r, reason)
		}
	}
	if reply.OK || len(reply.Results) != len(ts) {
		t.Errorf("reply: OK %v with %d results", reply.OK, len(reply.Results))
	}
	ok := byPort[port["web"]]
	if ok.ClientId != "home" || ok.RoundTripMillis <= 0 || ok.BackendMillis <= 0 {
		t.Errorf("web: %+v", ok)
	}
	t.Logf("round trip through the tunnel %.3f ms, the client's connect to web %.3f ms", ok.RoundTripMillis, ok.BackendMillis)

	// Named tunnels only.
	reply = srv.check(t, map[string]any{"Tunnels": []map[string]any{{"ListenPort": port["down"]}}})
	if len(reply.Results) != 1 || reply.Results[0].Reason != "backend_refused" || !strings.Contains(reply.Results[0].Error, "refused") {
		t.Errorf("one named tunnel: %+v", reply)
	}
	if code, body, _ := srv.call("POST", "/tunnels/check", map[string]any{"Tunnels": []map[string]any{{"ListenPort": 1}}}); code != http.StatusNotFound {
		t.Errorf("naming no tunnel: %d %s", code, body)
	}

	// A UDP service got one empty datagram from the check, nothing else.
	dns.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, _, err := dns.ReadFrom(buf); err != nil || n != 0 {
		t.Errorf("the UDP service got %d bytes (%v), want one empty datagram", n, err)
	}

	// threshold check from outside: the public port, then the tunnel.
	api := []string{"--management", srv.api, "--token-file", tokenFile}
	out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port["web"])}, api...)...)
	if code != 0 || !strings.Contains(out, "ok: the token came back from client \"home\"") || !strings.Contains(out, "round trip through the tunnel") {
		t.Errorf("threshold check web: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("threshold check: %s", strings.TrimSpace(out))
	// A server-speaks-first port.
	if out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port["mail"])}, api...)...); code != 0 {
		t.Errorf("threshold check mail: exit %d\n%s%s", code, out, errOut)
	}
	// A port routed by host name: the ClientHello names the tunnel.
	if out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port["named"]), "--tls-name", "a.example.com"}, api...)...); code != 0 || !strings.Contains(out, "a.example.com") {
		t.Errorf("threshold check named: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port["named"]), "--tls-name", "b.example.com"}, api...)...); code != 1 || !strings.Contains(out, "backend_refused") {
		t.Errorf("threshold check of the *.example.com tunnel: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port["named"])}, api...)...); code != 1 || !strings.Contains(errOut, "routes by host name") {
		t.Errorf("threshold check of a named port without --tls-name: exit %d\n%s%s", code, out, errOut)
	}
	// Each failure reason, as the user sees it.
	for name, reason := range map[string]string{"unknown": "unknown_service", "down": "backend_refused", "away": "no_client_connected"} {
		out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port[name])}, api...)...)
		if code != 1 || !strings.Contains(out, "FAILED: "+reason) {
			t.Errorf("threshold check %s: exit %d, want FAILED: %s\n%s%s", name, code, reason, out, errOut)
		}
	}
	// The firewall: a public port nobody listens on.
	if out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(freePort(t, "tcp"))}, api...)...); code != 1 || !strings.Contains(errOut, "no TCP tunnel listens on port") {
		t.Errorf("threshold check of a port without a tunnel: exit %d\n%s%s", code, out, errOut)
	}
	// A UDP port cannot be probed from outside; the answer says what can.
	if out, errOut, code := runCLI(t, "", append([]string{"check", tcpAddr(port["dns"])}, api...)...); code != 1 || !strings.Contains(errOut, "UDP tunnel") {
		t.Errorf("threshold check of a UDP port: exit %d\n%s%s", code, out, errOut)
	}
	// Without credentials the API refuses to arm.
	if out, errOut, code := runCLI(t, "", "check", tcpAddr(port["web"]), "--management", srv.api); code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("threshold check without the token: exit %d\n%s%s", code, out, errOut)
	}

	// No check reached a backend beyond its connect.
	web.mu.Lock()
	heads := len(web.heads)
	web.mu.Unlock()
	if heads != 0 {
		t.Errorf("the web backend got bytes from checks: %q", web.heads)
	}
	if n := mailBytes(); n != 0 {
		t.Errorf("the mail backend got %d bytes from checks", n)
	}
	// And a user still gets through.
	mustExchange(t, tcpAddr(port["web"]), "web")

	// A probe sent without arming (or after its token was spent) is cut
	// on its first bytes: the backend gets the connect, never the probe.
	c, err := net.DialTimeout("tcp", tcpAddr(port["web"]), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "THRESHOLD-CHECK/1 AAAAAAAAAAAAAAAAAAAAAA\r\n")
	greeting, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	time.Sleep(200 * time.Millisecond)
	web.mu.Lock()
	heads = len(web.heads)
	web.mu.Unlock()
	if heads != 1 { // the user's exchange only
		t.Errorf("a probe without a token reached the backend (greeting %q, heads %q)", greeting, web.heads)
	}

	// A client judged connected that does not answer: client_unreachable.
	cl.cmd.Process.Signal(syscall.SIGSTOP)
	reply = srv.check(t, map[string]any{"Tunnels": []map[string]any{{"ListenPort": port["web"]}}})
	cl.cmd.Process.Signal(syscall.SIGCONT)
	if r := reply.Results[0]; r.Reason != "client_unreachable" && r.Reason != "no_client_connected" {
		t.Errorf("a stopped client: %+v", r)
	} else {
		t.Logf("a stopped client: %s (%s)", r.Reason, r.Error)
	}

	// Rate-limited: a burst, then 429.
	limited := false
	for range 10 {
		code, _, _ := srv.call("POST", "/tunnels/check/arm", map[string]int{"ListenPort": port["web"]})
		if code == http.StatusTooManyRequests {
			limited = true
			break
		}
	}
	if !limited {
		t.Error("10 checks in a row were not rate-limited")
	}
}
