package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClientBootsBeforeNetwork: a home server that starts its client
// before its network is up. The client neither exits nor needs a restart:
// it retries the lookup of ServerHost with backoff, and connects once the
// network and the name are there.
func TestClientBootsBeforeNetwork(t *testing.T) {
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
	writeJSON(t, filepath.Join(dir, "server.json"), map[string]any{
		"TunnelControlPort": 9056, "ManagementPort": 9057,
		"PrivateKeyFile": write("server.key", sk.String()),
		"Clients":        []map[string]any{{"ClientId": "home", "PublicKey": ck.PublicKey().String()}},
	})
	writeJSON(t, filepath.Join(dir, "client.json"), map[string]any{
		"ClientId": "home", "ServerHost": "server.test", "ServerPublicKey": sk.PublicKey().String(),
		"PrivateKeyFile": write("client.key", ck.String()), "ServiceToLocalAddrMap": map[string]string{"web": "127.0.0.1:9001"},
	})
	// The home host has no network yet, and no name for the server.
	home := n.name("home")
	run(t, "ip", "-n", home, "link", "set", "eth0", "down")
	hostsDir := filepath.Join("/etc/netns", home)
	if err := os.MkdirAll(hostsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(hostsDir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n.start(t, "srv", "server", binPath, "server", "--config", filepath.Join(dir, "server.json"))
	c := n.start(t, "home", "client", binPath, "client", "--config", filepath.Join(dir, "client.json"))
	waitLog(t, c, 10*time.Second, "cannot look up the server's address; retrying", "server.test")
	time.Sleep(2 * time.Second) // a client that gave up would be gone by now
	if !c.running() {
		t.Fatalf("the client exited without a network:\n%s", c.logs.String())
	}

	// The network comes up: the same file gets the name (ip netns exec
	// bind-mounted it over /etc/hosts), the link an address and a route.
	if err := os.WriteFile(hosts, []byte(fmt.Sprintf("127.0.0.1 localhost\n%s server.test\n", serverAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", home, "link", "set", "eth0", "up")
	run(t, "ip", "-n", home, "route", "add", "default", "via", "192.0.2.1")
	up := time.Now()
	waitLog(t, c, 45*time.Second, "connected to server")
	t.Logf("connected %s after the network came up", time.Since(up).Round(100*time.Millisecond))
	if line, ok := logLine(c.logs.String(), "server address found", "endpoint="+serverAddr+":9056"); !ok {
		t.Errorf("no line naming the address found:\n%s", c.logs.String())
	} else if strings.Contains(c.logs.String(), "level=ERROR") {
		t.Errorf("errors logged: %s", line)
	}
}
