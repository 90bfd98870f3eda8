// Package e2e runs the real threshold binary: servers and clients as
// separate processes on loopback, driven through the management API.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/thresholdtunnel/threshold/wg"
)

var binPath, nettoolPath string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "threshold-e2e-bin-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "threshold")
	nettoolPath = filepath.Join(dir, "nettool")
	for path, pkg := range map[string]string{binPath: "./cmd/threshold", nettoolPath: "./test/e2e/nettool"} {
		build := exec.Command("go", "build", "-o", path, "github.com/thresholdtunnel/threshold/"+strings.TrimPrefix(pkg, "./"))
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	// Directories are made world-readable so tests may run the binaries as
	// an unprivileged user.
	os.Chmod(dir, 0o755)
	return m.Run()
}

// --- ports ---

var (
	portsMu sync.Mutex
	handed  = map[string]bool{}
)

// freePort returns a port free for network on every address, never the
// same one twice in this test process, so parallel tests cannot collide
// with each other. It takes ports outside the kernel's ephemeral range
// (ip_local_port_range): a port the kernel just had free in that range can
// be handed to any outgoing connection or ":0" listener (another test's,
// or a threshold process's) before the test binds it, which failed CI
// once with "address already in use".
func freePort(t testing.TB, network string) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	lo, hi := fixedPortRange()
	n := hi - lo + 1
	start := rand.IntN(n)
	for i := range min(n, 2000) {
		port := lo + (start+i)%n
		key := fmt.Sprintf("%s/%d", network, port)
		if handed[key] || !portFree(network, port) {
			continue
		}
		handed[key] = true
		return port
	}
	t.Fatalf("no free %s port found in %d-%d", network, lo, hi)
	return 0
}

// fixedPortRange is a range of ports the kernel does not hand out by
// itself: below the ephemeral range if there is room, else above it.
func fixedPortRange() (lo, hi int) {
	elo, ehi := 32768, 60999 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if a, err1 := strconv.Atoi(f[0]); err1 == nil {
				if z, err2 := strconv.Atoi(f[1]); err2 == nil {
					elo, ehi = a, z
				}
			}
		}
	}
	switch {
	case elo > 12000:
		return 10000, elo - 1
	case ehi < 63000:
		return ehi + 1, 65535
	}
	return elo, ehi // no room outside it: take the race
}

// portFree reports whether port can be bound for network on all
// addresses (which also fails when any single address holds it).
func portFree(network string, port int) bool {
	addr := fmt.Sprintf(":%d", port)
	if network == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// freePortBoth picks a port free for both TCP and UDP on loopback, for a
// test that puts a TCP and a UDP tunnel on the same port.
func freePortBoth(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := freePort(t, "tcp")
		c, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use for UDP: take another
		}
		c.Close()
		portsMu.Lock()
		taken := handed[fmt.Sprintf("udp/%d", port)]
		handed[fmt.Sprintf("udp/%d", port)] = true
		portsMu.Unlock()
		if !taken {
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP found")
	return 0
}

// --- polling ---

func waitUntil(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		if ok() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(delay)
	}
}

// --- processes ---

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
	err  error
}

// startProc runs the binary; cleanup kills it and, if the test failed,
// prints its output.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, binPath, args...)
}

// startCmd runs any program like startProc.
func startCmd(t testing.TB, name, path string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.logs.String())
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) kill() {
	if p.running() {
		p.cmd.Process.Kill()
	}
	<-p.done
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within 10s of SIGTERM", p.name)
	}
	if p.err != nil {
		t.Errorf("%s exited with %v after SIGTERM", p.name, p.err)
	}
}

// --- server and client ---

type server struct {
	*proc
	api        string
	tunnelPort int
	mgmtPort   int
	key        wg.Key
	dir        string
	config     map[string]any
	token      string // sent as a bearer token, if set
}

func newKey(t testing.TB) wg.Key {
	k, err := wg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startServer starts a server with the given clients registered.
func startServer(t testing.TB, clients map[string]wg.Key) *server {
	t.Helper()
	return startServerWith(t, clients, nil)
}

// startServerWith is startServer with extra config fields (they win).
func startServerWith(t testing.TB, clients map[string]wg.Key, extra map[string]any) *server {
	t.Helper()
	s := &server{dir: t.TempDir(), key: newKey(t), tunnelPort: freePort(t, "udp"), mgmtPort: freePort(t, "tcp")}
	s.api = fmt.Sprintf("http://127.0.0.1:%d", s.mgmtPort)
	keyFile := filepath.Join(s.dir, "server.key")
	if err := os.WriteFile(keyFile, []byte(s.key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var regs []map[string]string
	for id, k := range clients {
		regs = append(regs, map[string]string{"ClientId": id, "PublicKey": k.PublicKey().String()})
	}
	s.config = map[string]any{
		"DebugLog": true, "TunnelControlPort": s.tunnelPort, "ManagementPort": s.mgmtPort,
		"PrivateKeyFile": keyFile, "Clients": regs,
	}
	for k, v := range extra {
		s.config[k] = v
	}
	s.start(t)
	return s
}

// start (re)starts the server process from its config.
func (s *server) start(t testing.TB) {
	t.Helper()
	path := filepath.Join(s.dir, "server.json")
	writeJSON(t, path, s.config)
	s.proc = startProc(t, "server", "server", "--config", path)
	waitUntil(t, 15*time.Second, "management API", func() bool {
		_, _, err := s.call("GET", "/clients", nil)
		return err == nil
	})
}

type client struct {
	*proc
	id     string
	key    wg.Key
	config map[string]any
	path   string
}

func startClient(t testing.TB, s *server, id string, key wg.Key, services map[string]string) *client {
	t.Helper()
	return startClientWith(t, s, id, key, services, nil)
}

// startClientWith is startClient with extra config fields (they win).
func startClientWith(t testing.TB, s *server, id string, key wg.Key, services map[string]string, extra map[string]any) *client {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "client.key")
	if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &client{id: id, key: key, path: filepath.Join(dir, "client.json")}
	c.config = map[string]any{
		"DebugLog": true, "ClientId": id, "ServerHost": "127.0.0.1", "ServerTunnelControlPort": s.tunnelPort,
		"ServerPublicKey": s.key.PublicKey().String(), "PrivateKeyFile": keyFile, "ServiceToLocalAddrMap": services,
		// The tests' senders are on loopback, which a client does not
		// believe as a PROXY source unless told to.
		"ProxySourceAllowCIDRs": []string{"127.0.0.0/8", "::1/128"},
	}
	for k, v := range extra {
		c.config[k] = v
	}
	writeJSON(t, c.path, c.config)
	c.start(t)
	return c
}

func (c *client) start(t testing.TB) {
	c.proc = startProc(t, "client "+c.id, "client", "-config", c.path)
}

// call does one management API request and returns status and body.
func (s *server) call(method, path string, body any) (int, []byte, error) {
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.api+path, r)
	if err != nil {
		return 0, nil, err
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// mustPutTunnels applies tunnels and fails the test unless it answers 200.
func (s *server) mustPutTunnels(t testing.TB, tunnels []tunnel) []tunnel {
	t.Helper()
	code, body, err := s.call("PUT", "/tunnels", tunnels)
	if err != nil || code != http.StatusOK {
		t.Fatalf("PUT /tunnels: %d %s %v", code, body, err)
	}
	var applied []tunnel
	if err := json.Unmarshal(body, &applied); err != nil {
		t.Fatalf("PUT /tunnels answer %s: %v", body, err)
	}
	return applied
}

// configOf is a tunnel list without its output-only fields (the live
// session count changes as connections come and go).
func configOf(ts []tunnel) []tunnel {
	out := make([]tunnel, len(ts))
	for i, t := range ts {
		t.ActiveSessions = nil
		t.LastRefusalReason, t.LastRefusal, t.LastRefusalAt = "", "", nil
		out[i] = t
	}
	return out
}

func (s *server) tunnels(t testing.TB) []tunnel {
	t.Helper()
	code, body, err := s.call("GET", "/tunnels", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /tunnels: %d %s %v", code, body, err)
	}
	var ts []tunnel
	if err := json.Unmarshal(body, &ts); err != nil {
		t.Fatal(err)
	}
	return ts
}

type clientStatus struct {
	CurrentState, LastState, PublicKey, TunnelAddress string
	LastHandshake                                     *time.Time
	BytesIn, BytesOut                                 uint64
	Socks5Enabled                                     bool
	Socks5BytesSent, Socks5BytesReceived              uint64
}

func (s *server) clients(t testing.TB) map[string]clientStatus {
	t.Helper()
	code, body, err := s.call("GET", "/clients", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /clients: %d %s %v", code, body, err)
	}
	var cs map[string]clientStatus
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatal(err)
	}
	return cs
}

func (s *server) waitState(t testing.TB, id, state string, timeout time.Duration) {
	t.Helper()
	waitUntil(t, timeout, id+" "+state, func() bool { return s.clients(t)[id].CurrentState == state })
}

type tunnel struct {
	Protocol                    string `json:",omitempty"`
	HaProxyProxyProtocol        bool
	HaProxyProxyProtocolVersion int    `json:",omitempty"`
	UdpProxyProtocolMode        string `json:",omitempty"`
	ListenAddress               string
	ListenHostnameGlob          string
	ListenPort                  int
	UdpSessionIdleSeconds       int `json:",omitempty"`
	UdpMaxSessions              int `json:",omitempty"`
	BackEndService              string
	ClientId                    string     `json:",omitempty"`
	ClientIds                   []string   `json:",omitempty"`
	ActiveClientId              string     `json:",omitempty"`
	ActiveSessions              *int       `json:",omitempty"`
	LastRefusalReason           string     `json:",omitempty"`
	LastRefusal                 string     `json:",omitempty"`
	LastRefusalAt               *time.Time `json:",omitempty"`
}

// --- backends and senders ---

// backend is a local service on the client's side. For each connection it
// answers "<name> <seen source>\n", then echoes every byte until EOF.
type backend struct {
	name  string
	ln    net.Listener
	addr  string
	proxy bool // expects a PROXY header
	mu    sync.Mutex
	heads []string // raw first bytes seen, for checks without PROXY
	wg    sync.WaitGroup
}

func startBackend(t testing.TB, name string, proxy bool) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln, addr: ln.Addr().String(), proxy: proxy}
	if proxy {
		b.ln = &proxyproto.Listener{Listener: ln, ConnPolicy: proxyproto.TrustProxyHeaderFrom(net.IPv4(127, 0, 0, 1)), ReadHeaderTimeout: 5 * time.Second}
	}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() { b.ln.Close(); b.wg.Wait() })
	return b
}

func (b *backend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := fmt.Fprintf(c, "%s %s\n", b.name, c.RemoteAddr()); err != nil {
				return
			}
			buf := make([]byte, 32<<10)
			first := true
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if first {
						b.mu.Lock()
						b.heads = append(b.heads, string(buf[:min(n, 64)]))
						b.mu.Unlock()
						first = false
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// exchange dials addr, sends msg, half-closes, and returns the backend's
// greeting line, the echo, and the sender's own address.
func exchange(t testing.TB, addr, msg string) (greeting, echo, from string, err error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	from = c.LocalAddr().String()
	if _, err := io.WriteString(c, msg); err != nil {
		return "", "", from, err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", "", from, err
	}
	all, err := io.ReadAll(c)
	if err != nil {
		return "", "", from, err
	}
	line, rest, ok := strings.Cut(string(all), "\n")
	if !ok {
		return "", "", from, fmt.Errorf("no greeting in %q", all)
	}
	return line, rest, from, nil
}

// mustExchange is exchange that checks the echo and the backend's name.
func mustExchange(t testing.TB, addr, wantBackend string) (seenFrom, from string) {
	t.Helper()
	msg := fmt.Sprintf("hello through %s at %d", addr, time.Now().UnixNano())
	greeting, echo, from, err := exchange(t, addr, msg)
	if err != nil {
		t.Fatalf("exchange via %s: %v", addr, err)
	}
	name, seen, _ := strings.Cut(greeting, " ")
	if name != wantBackend {
		t.Fatalf("via %s reached backend %q, want %q", addr, name, wantBackend)
	}
	if echo != msg {
		t.Fatalf("via %s echo %q, want %q", addr, echo, msg)
	}
	return seen, from
}

// expectRefused checks a connection to addr is closed promptly with no data.
func expectRefused(t testing.TB, addr string, within time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return // refused outright is fine too
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(within + 5*time.Second))
	io.WriteString(c, "anyone there?")
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Fatalf("connection via %s got data %q, want it closed", addr, b)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection via %s hung instead of closing", addr)
	}
	if d := time.Since(start); d > within {
		t.Fatalf("connection via %s closed after %s, want within %s", addr, d, within)
	}
}

func tcpAddr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
