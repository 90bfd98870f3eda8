package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// netns is a three-host topology made of network namespaces, using only
// documentation address ranges:
//
//	internet 198.51.100.20 ──── 203.0.113.10 server 192.0.2.1 ──── 192.0.2.2 home
//
// The server does not forward packets, and the internet host has no route
// to 192.0.2.0/24: the home host is unreachable from the internet except
// through threshold.
type netns struct {
	prefix string
}

var netnsCount atomic.Int32

const (
	inetAddr   = "198.51.100.20"
	serverAddr = "203.0.113.10"
	homeAddr   = "192.0.2.2"
)

func (n *netns) name(host string) string { return n.prefix + host }

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2 (.ci/run installs it)")
	}
	// Unique per test too, so that tests with namespaces may run in
	// parallel.
	n := &netns{prefix: fmt.Sprintf("thr%d-%d-", os.Getpid()%100000, netnsCount.Add(1))}
	hosts := []string{"inet", "srv", "home"}
	t.Cleanup(func() {
		for _, h := range hosts {
			exec.Command("ip", "netns", "del", n.name(h)).Run()
			os.RemoveAll(filepath.Join("/etc/netns", n.name(h)))
		}
	})
	for _, h := range hosts {
		run(t, "ip", "netns", "add", n.name(h))
		run(t, "ip", "-n", n.name(h), "link", "set", "lo", "up")
	}
	inet, srv, home := n.name("inet"), n.name("srv"), n.name("home")
	run(t, "ip", "-n", srv, "link", "add", "to-inet", "type", "veth", "peer", "name", "eth0", "netns", inet)
	run(t, "ip", "-n", srv, "link", "add", "to-home", "type", "veth", "peer", "name", "eth0", "netns", home)
	for _, c := range [][]string{
		{"-n", inet, "addr", "add", inetAddr + "/24", "dev", "eth0"},
		{"-n", inet, "link", "set", "eth0", "up"},
		{"-n", inet, "route", "add", "203.0.113.0/24", "dev", "eth0"},
		{"-n", srv, "addr", "add", serverAddr + "/24", "dev", "to-inet"},
		{"-n", srv, "link", "set", "to-inet", "up"},
		{"-n", srv, "route", "add", "198.51.100.0/24", "dev", "to-inet"},
		{"-n", srv, "addr", "add", "192.0.2.1/24", "dev", "to-home"},
		{"-n", srv, "link", "set", "to-home", "up"},
		{"-n", home, "addr", "add", homeAddr + "/24", "dev", "eth0"},
		{"-n", home, "link", "set", "eth0", "up"},
		{"-n", home, "route", "add", "default", "via", "192.0.2.1"},
	} {
		run(t, append([]string{"ip"}, c...)...)
	}
	run(t, "ip", "netns", "exec", srv, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
	// Names the server resolves for SOCKS5 requests (ip netns exec mounts
	// /etc/netns/<name>/hosts over /etc/hosts).
	dir := filepath.Join("/etc/netns", srv)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hostsFile := "127.0.0.1 localhost\n127.0.0.1 loopback.test\n169.254.169.254 metadata.test\n10.9.8.7 private.test\n" +
		serverAddr + " server.test\n" + inetAddr + " internet.test\n"
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(hostsFile), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// in runs a command inside a host's namespace and returns its output and
// exit code.
func (n *netns) in(t testing.TB, host string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name(host)}, args...)...)
	done := make(chan struct{})
	var out []byte
	go func() { out, _ = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v hung", args)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func (n *netns) start(t testing.TB, host, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name+"@"+host, "ip", append([]string{"netns", "exec", n.name(host)}, args...)...)
}

func TestThreeHosts(t *testing.T) {
	n := newNetns(t)
	dir := t.TempDir()
	ck, sk := newKey(t), newKey(t)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const mgmtPort, publicPort, internetPort = 9057, 443, 7000
	const token = "netns-test-token-0123456789abcdef"
	serverCfg := map[string]any{
		"DebugLog": true, "TunnelControlPort": 9056, "ManagementPort": mgmtPort, "ManagementAddress": "0.0.0.0",
		"ManagementTokenFile": write("mgmt.token", token),
		"PrivateKeyFile":      write("server.key", sk.String()),
		"Clients":             []map[string]any{{"ClientId": "home", "PublicKey": ck.PublicKey().String()}},
	}
	clientCfg := map[string]any{
		"DebugLog": true, "ClientId": "home", "ServerHost": serverAddr, "ServerTunnelControlPort": 9056,
		"ServerPublicKey": sk.PublicKey().String(), "PrivateKeyFile": write("client.key", ck.String()),
		"ServiceToLocalAddrMap": map[string]string{"web": "127.0.0.1:9001"},
		"Socks5ListenAddress":   "127.0.0.1:1080",
	}
	writeJSON(t, filepath.Join(dir, "server.json"), serverCfg)
	writeJSON(t, filepath.Join(dir, "client.json"), clientCfg)

	internet := n.start(t, "inet", "echo-source", nettoolPath, "echo-source", "-listen", fmt.Sprintf("%s:%d", inetAddr, internetPort))
	backend := n.start(t, "home", "proxy-backend", nettoolPath, "proxy-backend", "-listen", "127.0.0.1:9001")
	homeOpen := n.start(t, "home", "open-service", nettoolPath, "echo-source", "-listen", "0.0.0.0:9002")
	for _, p := range []*proc{internet, backend, homeOpen} {
		waitUntil(t, 10*time.Second, p.name+" ready", func() bool { return strings.Contains(p.logs.String(), "ready") })
	}
	n.start(t, "srv", "server", binPath, "server", "--config", filepath.Join(dir, "server.json"))
	n.start(t, "home", "client", binPath, "client", "--config", filepath.Join(dir, "client.json"))
	api := fmt.Sprintf("http://127.0.0.1:%d", mgmtPort)
	waitUntil(t, 30*time.Second, "client connected", func() bool {
		out, _ := n.in(t, "srv", nettoolPath, "http", "-token", token, "-url", api+"/clients", "-timeout", "2s")
		return strings.Contains(out, `"CurrentState":"ClientConnected"`)
	})
	tunnels, _ := json.Marshal([]tunnel{{HaProxyProxyProtocol: true, ListenAddress: serverAddr, ListenPort: publicPort, BackEndService: "web", ClientId: "home"}})
	if out, _ := n.in(t, "srv", nettoolPath, "http", "-token", token, "-method", "PUT", "-url", api+"/tunnels", "-body", string(tunnels)); !strings.HasPrefix(out, "200 ") {
		t.Fatalf("PUT /tunnels: %s", out)
	}

	// 1. The internet reaches the home backend through the server, and the
	// backend sees the internet host's address.
	out, code := n.in(t, "inet", nettoolPath, "dial", "-addr", fmt.Sprintf("%s:%d", serverAddr, publicPort), "-msg", "hi home")
	if code != 0 || !strings.HasPrefix(out, "SRC "+inetAddr+":") {
		t.Errorf("internet -> server:%d -> home: exit %d, %q; want the backend to see %s", publicPort, code, out, inetAddr)
	}

	// 2. SOCKS5 from home leaves from the server's public address, by IP
	// and by a name the server resolves.
	for _, target := range []string{fmt.Sprintf("%s:%d", inetAddr, internetPort), fmt.Sprintf("internet.test:%d", internetPort)} {
		out, code := n.in(t, "home", nettoolPath, "socks", "-proxy", "127.0.0.1:1080", "-addr", target, "-msg", "hi internet")
		if code != 0 || !strings.HasPrefix(out, "SRC "+serverAddr+":") {
			t.Errorf("SOCKS5 home -> %s: exit %d, %q; want the internet host to see %s", target, code, out, serverAddr)
		}
	}

	// 3. Forbidden destinations are refused with reply 0x02, by IP and by name.
	for _, target := range []string{
		"127.0.0.1:9001", "loopback.test:9001",
		"169.254.169.254:80", "metadata.test:80",
		"10.9.8.7:25", "private.test:25",
		fmt.Sprintf("%s:%d", serverAddr, mgmtPort), fmt.Sprintf("server.test:%d", mgmtPort),
		// The server's own address on any port: loopback in disguise.
		fmt.Sprintf("%s:%d", serverAddr, publicPort), fmt.Sprintf("server.test:%d", publicPort),
	} {
		out, code := n.in(t, "home", nettoolPath, "socks", "-proxy", "127.0.0.1:1080", "-addr", target)
		if code != 3 || !strings.Contains(out, "SOCKS_REPLY 0x02") {
			t.Errorf("SOCKS5 to %s: exit %d, %q; want reply 0x02", target, code, out)
		}
	}

	// 4. The home host is not reachable from the internet directly.
	out, code = n.in(t, "inet", nettoolPath, "dial", "-addr", homeAddr+":9002", "-timeout", "3s")
	if code == 0 {
		t.Errorf("internet reached the home host directly: %q", out)
	}
	// ...while the same service answers at home, so it is the network that says no.
	if out, code := n.in(t, "home", nettoolPath, "dial", "-addr", homeAddr+":9002"); code != 0 {
		t.Errorf("home service not answering locally: %q", out)
	}
}
