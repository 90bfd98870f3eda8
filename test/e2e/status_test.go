package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// TestStatusCommand: threshold status on the server (through the
// management API, with the config's credentials) and on the client
// (through its status endpoint).
func TestStatusCommand(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	tokenFile := filepath.Join(t.TempDir(), "mgmt.token")
	const token = "status-test-token-0123456789abcdef"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServerWith(t, map[string]wg.Key{"home": ck, "office": newKey(t)}, map[string]any{"ManagementTokenFile": tokenFile})
	srv.token = token
	be := startBackend(t, "web", false)
	status, socks := tcpAddr(freePort(t, "tcp")), tcpAddr(freePort(t, "tcp"))
	cl := startClientWith(t, srv, "home", ck, map[string]string{"web": be.addr},
		map[string]any{"StatusListenAddress": status, "Socks5ListenAddress": socks})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientIds: []string{"home", "office"}}})
	mustExchange(t, tcpAddr(port), "web")

	out, errOut, code := runCLI(t, "", "status", "--config", filepath.Join(srv.dir, "server.json"))
	if code != 0 {
		t.Fatalf("threshold status on the server: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("threshold status on the server:\n%s", out)
	for _, want := range []string{
		fmt.Sprintf("server: http://127.0.0.1:%d", srv.mgmtPort),
		"home    connected", "office  never seen", " ago ", " received, ",
		fmt.Sprintf("127.0.0.1:%d *  web      home,office  home", port),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("server status lacks %q", want)
		}
	}

	waitUntil(t, 5*time.Second, "the client's status to show it connected", func() bool {
		out, _, code = runCLI(t, "", "status", "--config", cl.path)
		return code == 0 && strings.Contains(out, " connected for ")
	})
	t.Logf("threshold status on the client:\n%s", out)
	for _, want := range []string{
		"client: home", "public key: " + ck.PublicKey().String(), "tunnel address: " + wg.ClientAddr(ck.PublicKey()).String(),
		fmt.Sprintf("127.0.0.1:%d  127.0.0.1:%d  connected for", srv.tunnelPort, srv.tunnelPort),
		"web      " + be.addr,
		fmt.Sprintf("socks5: %s leaves from 127.0.0.1:%d", socks, srv.tunnelPort),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("client status lacks %q", want)
		}
	}

	// Without credentials, or without a status endpoint, it says why.
	if _, errOut, code := runCLI(t, "", "status", "--management", srv.api); code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("status without the token: exit %d %s", code, errOut)
	}
	delete(cl.config, "StatusListenAddress")
	bare := filepath.Join(t.TempDir(), "client.json")
	writeJSON(t, bare, cl.config)
	if _, errOut, code := runCLI(t, "", "status", "--config", bare); code == 0 || !strings.Contains(errOut, "has no StatusListenAddress") {
		t.Errorf("status of a client without a status endpoint: exit %d %s", code, errOut)
	}
}
