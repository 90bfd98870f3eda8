//go:build linux

package e2e

// Faults that need a network: a partition between the server and the home
// host, and an address the server gains after start. Root only (network
// namespaces, see netns_test.go); skipped with a message otherwise.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dial opens a TCP connection from inside a host's namespace and hands it
// to the test: the socket stays in that namespace. The dialling thread
// enters the namespace and is never unlocked, so it ends with its
// goroutine and no other goroutine ever runs in the namespace.
func (n *netns) dial(host, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", n.name(host)))
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", host, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// topology is a server in "srv" and a client in "home" with an echo
// service, reachable from "inet" on the server's public address.
type topology struct {
	*netns
	api, token string
	dir        string
	public     string // serverAddr:443
	server     *proc
	client     *proc
}

const topoToken = "netns-fault-token-0123456789abcdef"

func startTopology(t *testing.T, serverExtra map[string]any) *topology {
	t.Helper()
	n := newNetns(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ck, sk := newKey(t), newKey(t)
	serverCfg := map[string]any{
		"DebugLog": true, "TunnelControlPort": 9056, "ManagementPort": 9057, "ManagementAddress": "127.0.0.1",
		"PrivateKeyFile": write("server.key", sk.String()),
		"Clients":        []map[string]any{{"ClientId": "home", "PublicKey": ck.PublicKey().String()}},
	}
	for k, v := range serverExtra {
		serverCfg[k] = v
	}
	clientCfg := map[string]any{
		"DebugLog": true, "ClientId": "home", "ServerHost": serverAddr, "ServerTunnelControlPort": 9056,
		"ServerPublicKey": sk.PublicKey().String(), "PrivateKeyFile": write("client.key", ck.String()),
		"ServiceToLocalAddrMap": map[string]string{"web": "127.0.0.1:9001"},
		"Socks5ListenAddress":   "127.0.0.1:1080",
	}
	writeJSON(t, filepath.Join(dir, "server.json"), serverCfg)
	writeJSON(t, filepath.Join(dir, "client.json"), clientCfg)
	// Connections to it may last longer than the partition.
	backend := n.start(t, "home", "echo", nettoolPath, "echo-source", "-listen", "127.0.0.1:9001", "-deadline", "3m")
	waitUntil(t, 10*time.Second, "echo ready", func() bool { return strings.Contains(backend.logs.String(), "ready") })
	top := &topology{netns: n, api: "http://127.0.0.1:9057", dir: dir, public: serverAddr + ":443"}
	top.server = n.start(t, "srv", "server", binPath, "server", "--config", filepath.Join(dir, "server.json"))
	top.client = n.start(t, "home", "client", binPath, "client", "--config", filepath.Join(dir, "client.json"))
	top.waitState(t, "ClientConnected", 30*time.Second)
	tunnels, _ := json.Marshal([]tunnel{{ListenAddress: serverAddr, ListenPort: 443, BackEndService: "web", ClientId: "home"}})
	if out := top.call(t, "PUT", "/tunnels", string(tunnels)); !strings.HasPrefix(out, "200 ") {
		t.Fatalf("PUT /tunnels: %s", out)
	}
	return top
}

// call does a management request from inside the server's namespace.
func (top *topology) call(t testing.TB, method, path, body string) string {
	t.Helper()
	out, _ := top.in(t, "srv", nettoolPath, "http", "-method", method, "-url", top.api+path, "-body", body, "-timeout", "3s")
	return out
}

func (top *topology) state(t testing.TB) string {
	t.Helper()
	out := top.call(t, "GET", "/clients", "")
	var cs map[string]clientStatus
	if _, body, ok := strings.Cut(out, " "); !ok || json.Unmarshal([]byte(body), &cs) != nil {
		return ""
	}
	return cs["home"].CurrentState
}

func (top *topology) waitState(t testing.TB, state string, within time.Duration) {
	t.Helper()
	waitUntil(t, within, "client "+state, func() bool { return top.state(t) == state })
}

// echoOnce checks that a connection from the internet host, on c or a
// new one, reaches the home service and echoes msg.
func echoOn(t testing.TB, c net.Conn, msg string) error {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := readFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// newConn opens a connection from the internet host through the tunnel
// and reads the service's greeting.
func (top *topology) newConn(t testing.TB) (net.Conn, error) {
	t.Helper()
	c, err := top.dial("inet", top.public, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c)
	if err != nil || !strings.HasPrefix(line, "SRC ") {
		c.Close()
		return nil, fmt.Errorf("greeting %q: %v", line, err)
	}
	return c, nil
}

// TestPartition: all traffic between the server and the home host is
// dropped for 60 s (the server's link to it is down), then restored. An
// idle connection opened before is still usable after; the client is
// ClientConnected again within 10 s; new connections work.
func TestPartition(t *testing.T) {
	t.Parallel()
	top := startTopology(t, nil)
	idle, err := top.newConn(t)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := echoOn(t, idle, "before the partition"); err != nil {
		t.Fatal(err)
	}

	run(t, "ip", "-n", top.name("srv"), "link", "set", "to-home", "down")
	partitioned := time.Now()
	restored := false
	t.Cleanup(func() {
		if !restored {
			run(t, "ip", "-n", top.name("srv"), "link", "set", "to-home", "up")
		}
	})
	top.waitState(t, "ClientDisconnected", 10*time.Second)
	t.Logf("the server saw the client lost %s into the partition", time.Since(partitioned).Round(100*time.Millisecond))
	if c, err := top.newConn(t); err == nil {
		c.Close()
		t.Error("a connection got through the partition")
	}
	time.Sleep(time.Until(partitioned.Add(60 * time.Second)))

	run(t, "ip", "-n", top.name("srv"), "link", "set", "to-home", "up")
	restored = true
	back := time.Now()
	top.waitState(t, "ClientConnected", 10*time.Second)
	t.Logf("ClientConnected %s after the partition ended", time.Since(back).Round(100*time.Millisecond))
	if err := echoOn(t, idle, "after the partition"); err != nil {
		t.Errorf("the idle connection opened before the partition: %v", err)
	}
	c, err := top.newConn(t)
	if err != nil {
		t.Fatalf("a new connection after the partition: %v", err)
	}
	defer c.Close()
	if err := echoOn(t, c, "new after the partition"); err != nil {
		t.Error(err)
	}
}

// TestSelfAddressAddedAfterStart: issue 15 item 2. The server gains an
// address after it started (a floating IP, DHCP, an IPv6 privacy
// address); SOCKS5 to it, where a service listens on every address, must
// be refused like the server's other addresses (before: it got through,
// the list was read once at start).
func TestSelfAddressAddedAfterStart(t *testing.T) {
	t.Parallel()
	top := startTopology(t, nil)
	svc := top.start(t, "srv", "server-local service", nettoolPath, "echo-source", "-listen", "0.0.0.0:7001")
	waitUntil(t, 10*time.Second, "service ready", func() bool { return strings.Contains(svc.logs.String(), "ready") })
	const added = "203.0.113.77"
	socks := func(target string) (string, int) {
		return top.in(t, "home", nettoolPath, "socks", "-proxy", "127.0.0.1:1080", "-addr", target, "-timeout", "5s")
	}
	waitUntil(t, 10*time.Second, "SOCKS5 through the client", func() bool {
		_, code := socks(fmt.Sprintf("%s:%d", inetAddr, 9))
		return code != 1 // refused by the internet host or answered: the proxy works
	})
	run(t, "ip", "-n", top.name("srv"), "addr", "add", added+"/24", "dev", "to-inet")
	// Well within the address cache's second, and then some.
	time.Sleep(1500 * time.Millisecond)
	out, code := socks(added + ":7001")
	if code != 3 || !strings.Contains(out, "SOCKS_REPLY 0x02") {
		t.Errorf("SOCKS5 to an address the server gained after start: exit %d, %q; want reply 0x02", code, out)
	}
}
