package forward

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// ckBackend counts the connections it accepts and the bytes each sent.
type ckBackend struct {
	addr   string
	banner string
	mu     sync.Mutex
	conns  int
	bytes  []int
	wg     sync.WaitGroup
}

func ckStartBackend(t *testing.T, banner string) *ckBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &ckBackend{addr: ln.Addr().String(), banner: banner}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			i := b.conns
			b.conns++
			b.bytes = append(b.bytes, 0)
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(ftPrompt))
				if b.banner != "" {
					io.WriteString(c, b.banner)
				}
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					b.mu.Lock()
					b.bytes[i] += n
					b.mu.Unlock()
					if n > 0 && b.banner == "" {
						c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

// seen reports the connections and the bytes received on all of them.
func (b *ckBackend) seen() (conns, bytes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.bytes {
		bytes += n
	}
	return b.conns, bytes
}

func ckClosedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func ckByPort(t *testing.T, res []CheckResult) map[int]CheckResult {
	t.Helper()
	m := map[int]CheckResult{}
	for _, r := range res {
		m[r.Tunnel.ListenPort] = r
	}
	return m
}

// Each tunnel is checked through its client, which answers itself: ok,
// or the reason, the round trip, and who answered. The backend gets one
// connect and not a byte.
func TestGatewayCheck(t *testing.T) {
	be := ckStartBackend(t, "")
	_, conn := ftStartConnector(t, map[string]string{"echo": be.addr, "closed": ckClosedPort(t), "slow": "192.0.2.1:9"}, func(c *ConnectorConfig) {
		c.DialTimeout = 200 * time.Millisecond
		base := net.Dialer{}
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == "192.0.2.1:9" { // never answers: the dial times out
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return base.DialContext(ctx, network, addr)
		}
	})
	// An old client: it refuses what it does not understand.
	old, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	go func() {
		for {
			c, err := old.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{byte(StatusBadRequest)})
			c.Close()
		}
	}()
	h := ftNewGateway(t, func(c *GatewayConfig) {
		c.DialTimeout = time.Second
	})
	h.addClient("home", conn)
	h.addClient("old", old.Addr().String())
	h.addClient("gone", ckClosedPort(t))
	ports := make([]int, 7)
	for i := range ports {
		ports[i] = ftFreePort(t)
	}
	tunnel := func(port int, service, client string) Tunnel {
		t := ftTunnel(port, client)
		t.BackEndService = service
		return t
	}
	h.apply(t,
		tunnel(ports[0], "echo", "home"),
		tunnel(ports[1], "nope", "home"),
		tunnel(ports[2], "closed", "home"),
		tunnel(ports[3], "slow", "home"),
		tunnel(ports[4], "echo", "gone"),
		tunnel(ports[5], "echo", "old"),
		Tunnel{ListenAddress: "127.0.0.1", ListenPort: ports[6], BackEndService: "echo", ClientIds: []string{"nobody", "home"}},
	)
	res, err := h.gw.Check(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 7 {
		t.Fatalf("%d results for 7 tunnels", len(res))
	}
	by := ckByPort(t, res)
	want := map[int]string{ports[0]: "", ports[1]: CheckUnknownService, ports[2]: CheckBackendRefused, ports[3]: CheckBackendTimeout,
		ports[4]: CheckClientUnreachable, ports[5]: CheckClientRefused, ports[6]: ""}
	for port, reason := range want {
		r := by[port]
		if r.Reason != reason || r.OK != (reason == "") {
			t.Errorf("port %d: %+v, want reason %q", port, r, reason)
		}
	}
	if r := by[ports[0]]; r.ClientId != "home" || r.RoundTripMillis <= 0 || r.BackendMillis <= 0 || r.Token == "" {
		t.Errorf("ok check: %+v", r)
	}
	if r := by[ports[6]]; r.ClientId != "home" {
		t.Errorf("a tunnel's first connected client answers: %+v", r)
	}
	if r := by[ports[2]]; !strings.Contains(r.Error, "refused") || r.RoundTripMillis <= 0 {
		t.Errorf("refused backend: %+v", r)
	}
	ftWaitFor(t, ftPrompt, "the backend's connections to end", func() bool {
		conns, _ := be.seen()
		return conns == 2
	})
	if conns, bytes := be.seen(); conns != 2 || bytes != 0 {
		t.Errorf("the backend saw %d connections and %d bytes, want 2 connects and no byte", conns, bytes)
	}

	// A client that is registered but not connected.
	h2 := ftNewGateway(t, func(c *GatewayConfig) {})
	h2.gw.cfg.Directory = func() *Directory { return h2.directory(func(string) bool { return false }) }
	h2.addClient("home", conn)
	p := ftFreePort(t)
	h2.apply(t, ftTunnel(p, "home"))
	res, err = h2.gw.Check(context.Background(), nil)
	if err != nil || len(res) != 1 || res[0].Reason != CheckNoClient {
		t.Fatalf("no client connected: %+v %v", res, err)
	}

	// Selectors: each must name a tunnel.
	res, err = h.gw.Check(context.Background(), []CheckSelector{{ListenPort: ports[1]}, {BackEndService: "closed"}})
	if err != nil || len(res) != 2 || res[0].Tunnel.ListenPort != ports[1] || res[1].Tunnel.ListenPort != ports[2] {
		t.Fatalf("selected: %+v %v", res, err)
	}
	if _, err := h.gw.Check(context.Background(), []CheckSelector{{ListenPort: ports[0]}, {ClientId: "stranger"}}); !errors.Is(err, ErrNoTunnel) || !strings.Contains(err.Error(), "Tunnels[1]") {
		t.Fatalf("a selector naming nothing: %v", err)
	}
}

// ckProbe connects to a public port, sends a probe and reads the answer
// line; an empty answer means the connection was closed without one.
func ckProbe(t *testing.T, port int, probe []byte) (CheckResult, string) {
	t.Helper()
	c := ftDialPublic(t, port)
	c.SetDeadline(time.Now().Add(ftPrompt))
	if _, err := c.Write(probe); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	if line == "" {
		return CheckResult{}, ""
	}
	res, err := ParseProbeAnswer([]byte(line))
	if err != nil {
		t.Fatalf("answer %q: %v", line, err)
	}
	return res, line
}

// An outside probe: armed through ArmCheck, answered through the tunnel,
// once; a user is never taken for one, and a probe never reaches the
// backend, also a late one or one whose token is spent.
func TestGatewayProbe(t *testing.T) {
	be := ckStartBackend(t, "")
	smtp := ckStartBackend(t, "220 mail ESMTP\r\n")
	_, conn := ftStartConnector(t, map[string]string{"echo": be.addr, "smtp": smtp.addr}, nil)
	h := ftNewGateway(t, nil)
	h.addClient("home", conn)
	plain, mail, named := ftFreePort(t), ftFreePort(t), ftFreePort(t)
	smtpTunnel := ftTunnel(mail, "home")
	smtpTunnel.BackEndService = "smtp"
	a, b := ftTunnel(named, "home"), ftTunnel(named, "home")
	a.ListenHostnameGlob, b.ListenHostnameGlob = "a.example.com", "*.example.com"
	h.apply(t, ftTunnel(plain, "home"), smtpTunnel, a, b)

	// A port that is not peeked takes the line.
	armed, err := h.gw.ArmCheck(ArmRequest{ListenPort: plain})
	if err != nil || armed.Probe != "line" || armed.Tunnel.ListenPort != plain || armed.Tunnel.ActiveClientId != "home" {
		t.Fatalf("ArmCheck: %+v %v", armed, err)
	}
	res, _ := ckProbe(t, plain, ProbeLine(armed.Token))
	if !res.OK || res.Token != armed.Token || res.ClientId != "home" || res.RoundTripMillis <= 0 {
		t.Fatalf("line probe: %+v", res)
	}
	// The token is spent: the same probe again is closed, unanswered,
	// and (the port holding nothing now) cut before the backend.
	if res, line := ckProbe(t, plain, ProbeLine(armed.Token)); line != "" {
		t.Fatalf("a spent token was answered: %+v", res)
	}
	// A user on the same port goes through as always.
	ftEcho(t, ftDialPublic(t, plain), "hello")
	ftWaitFor(t, ftPrompt, "the backend to see the user", func() bool { _, n := be.seen(); return n == 5 })

	// A port that routes by host name takes a ClientHello.
	if _, err := h.gw.ArmCheck(ArmRequest{ListenPort: named, Hostname: "c.example.org"}); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("arming a name no tunnel matches: %v", err)
	}
	armed, err = h.gw.ArmCheck(ArmRequest{ListenPort: named, Hostname: "A.Example.com"})
	if err != nil || armed.Probe != "tls" || armed.Tunnel.ListenHostnameGlob != "a.example.com" {
		t.Fatalf("ArmCheck by name: %+v %v", armed, err)
	}
	hello, err := ProbeClientHello("b.example.com", armed.Token)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := ckProbe(t, named, hello); res.Reason != CheckWrongTunnel || res.OK {
		t.Fatalf("a probe routed to another tunnel: %+v", res)
	}
	armed, _ = h.gw.ArmCheck(ArmRequest{ListenPort: named, Hostname: "a.example.com"})
	hello, _ = ProbeClientHello("a.example.com", armed.Token)
	if res, _ := ckProbe(t, named, hello); !res.OK || res.Token != armed.Token {
		t.Fatalf("ClientHello probe: %+v", res)
	}
	// A made-up token in a ClientHello is closed, not forwarded.
	hello, _ = ProbeClientHello("a.example.com", "AAAAAAAAAAAAAAAAAAAAAA")
	if res, line := ckProbe(t, named, hello); line != "" {
		t.Fatalf("a made-up token was answered: %+v", res)
	}

	// A server-speaks-first port: while armed, a user waits for the
	// banner at most CheckHoldTimeout; the probe is answered.
	armed, _ = h.gw.ArmCheck(ArmRequest{ListenPort: mail})
	start := time.Now()
	c := ftDialPublic(t, mail)
	c.SetDeadline(time.Now().Add(ftPrompt))
	banner, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || banner != "220 mail ESMTP\r\n" {
		t.Fatalf("banner while armed: %q %v", banner, err)
	}
	if d := time.Since(start); d < CheckHoldTimeout/2 || d > CheckHoldTimeout+time.Second {
		t.Errorf("the banner came after %s while armed, want about %s", d, CheckHoldTimeout)
	}
	c.Close()
	if res, _ := ckProbe(t, mail, ProbeLine(armed.Token)); !res.OK {
		t.Fatalf("probe of a server-speaks-first port: %+v", res)
	}
	start = time.Now()
	c = ftDialPublic(t, mail)
	c.SetDeadline(time.Now().Add(ftPrompt))
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil || time.Since(start) > CheckHoldTimeout/2 {
		t.Errorf("after the probe the banner took %s: %v", time.Since(start), err)
	}
	c.Close()

	// Nothing of all those probes reached a backend: only the user's 5
	// bytes, and the mail backend's connects.
	time.Sleep(100 * time.Millisecond)
	if _, n := be.seen(); n != 5 {
		t.Errorf("the backend got %d bytes, want only the user's 5", n)
	}
	if _, n := smtp.seen(); n != 0 {
		t.Errorf("the mail backend got %d bytes, want none", n)
	}

	if _, err := h.gw.ArmCheck(ArmRequest{ListenPort: ftFreePort(t)}); !errors.Is(err, ErrNoTunnel) {
		t.Errorf("arming a port without tunnels: %v", err)
	}
	for range MaxArmedChecks {
		if _, err := h.gw.ArmCheck(ArmRequest{ListenPort: plain}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.gw.ArmCheck(ArmRequest{ListenPort: plain}); !errors.Is(err, ErrTooManyChecks) {
		t.Errorf("arming beyond MaxArmedChecks: %v", err)
	}
}

func TestLooksLikeProbe(t *testing.T) {
	hello, err := ProbeClientHello("a.example.com", "tok")
	if err != nil {
		t.Fatal(err)
	}
	if len(hello) > 600 {
		t.Errorf("the probe's ClientHello is %d bytes; it should fit one segment", len(hello))
	}
	capture := &helloCapture{}
	tls.Client(capture, &tls.Config{ServerName: "a.example.com", NextProtos: []string{"h2", "http/1.1"}}).Handshake()
	normal := capture.buf.Bytes()
	for b, want := range map[string]bool{
		string(hello):                  true,
		string(ProbeLine("x")):         true,
		string(normal):                 false,
		"GET / HTTP/1.1\r\n":           false,
		"THRESHOLD-CHECK/2 x\r\n":      false,
		"EHLO threshold-check/1.x\r\n": false,
	} {
		if got := looksLikeProbe([]byte(b)); got != want {
			t.Errorf("looksLikeProbe(%.40q) = %v", b, got)
		}
	}
}

// Anyone can send a probe's line to a port with no token armed: the
// connections are cut, never passed on, and their log lines throttled.
func TestLateProbesThrottled(t *testing.T) {
	be := ckStartBackend(t, "")
	_, conn := ftStartConnector(t, map[string]string{"echo": be.addr}, nil)
	logs := &lockedBuffer{}
	h := ftNewGateway(t, func(c *GatewayConfig) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	h.addClient("home", conn)
	port := ftFreePort(t)
	h.apply(t, ftTunnel(port, "home"))
	const probes = 50
	for range probes {
		if res, line := ckProbe(t, port, ProbeLine("AAAAAAAAAAAAAAAAAAAAAA")); line != "" {
			t.Fatalf("a probe with no token armed was answered: %+v", res)
		}
	}
	if _, n := be.seen(); n != 0 {
		t.Errorf("the backend got %d bytes of probes", n)
	}
	if n := strings.Count(logs.String(), "reachability probe came after"); n == 0 || n > 20 {
		t.Errorf("%d late probes made %d log lines, want 1-20", probes, n)
	}
}

// A check call ends when its context does, however slow the services:
// the tunnels it could not finish say so, and the call answers at once.
func TestGatewayCheckBounded(t *testing.T) {
	_, conn := ftStartConnector(t, map[string]string{"slow": "192.0.2.1:9"}, func(c *ConnectorConfig) {
		c.DialTimeout = time.Minute // the client would wait long for its service
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}
	})
	h := ftNewGateway(t, nil)
	h.addClient("home", conn)
	var ts []Tunnel
	for range checkConcurrency + 2 { // some wait for a slot, some are mid-check
		tn := ftTunnel(ftFreePort(t), "home")
		tn.BackEndService = "slow"
		ts = append(ts, tn)
	}
	h.apply(t, ts...)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := h.gw.Check(ctx, nil)
	if took := time.Since(start); err != nil || took > 5*time.Second {
		t.Fatalf("Check took %s: %v", took, err)
	}
	timedOut := 0
	for _, r := range res {
		// The reason is the call's end, not the closed connection it
		// leaves; a client that answered its token was reachable.
		if r.OK || !strings.Contains(r.Error, context.DeadlineExceeded.Error()) {
			t.Errorf("an unfinished check: %+v", r)
		}
		if r.Reason == CheckBackendTimeout && r.RoundTripMillis > 0 {
			timedOut++
		}
	}
	if timedOut == 0 {
		t.Errorf("no check that reached the client reports backend_timeout: %+v", res)
	}
}
