package e2e

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// TestClientRestart: a killed client is seen as disconnected; started
// again with the same key, traffic resumes with no API call.
func TestClientRestart(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck})
	be := startBackend(t, "backend", true)
	cl := startClient(t, srv, "home", ck, map[string]string{"web": be.addr})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}})
	mustExchange(t, tcpAddr(port), "backend")

	cl.kill()
	start := time.Now()
	srv.waitState(t, "home", "ClientDisconnected", 15*time.Second)
	t.Logf("client loss detected after %s", time.Since(start).Round(time.Millisecond))
	if st := srv.clients(t)["home"]; st.LastState != "ClientConnected" {
		t.Errorf("LastState %q, want ClientConnected", st.LastState)
	}
	expectRefused(t, tcpAddr(port), 3*time.Second)

	cl.start(t)
	start = time.Now()
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	t.Logf("restarted client connected after %s", time.Since(start).Round(time.Millisecond))
	seen, from := mustExchange(t, tcpAddr(port), "backend")
	if seen != from {
		t.Errorf("backend saw %s, sender was %s", seen, from)
	}
}

// TestServerRestart: the client finds a restarted server by itself.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home": ck})
	be := startBackend(t, "backend", false)
	startClient(t, srv, "home", ck, map[string]string{"web": be.addr})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	tunnels := []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}}
	srv.mustPutTunnels(t, tunnels)
	mustExchange(t, tcpAddr(port), "backend")

	srv.kill()
	srv.start(t)
	srv.mustPutTunnels(t, tunnels)
	start := time.Now()
	srv.waitState(t, "home", "ClientConnected", 40*time.Second)
	t.Logf("client reconnected %s after the server restarted", time.Since(start).Round(time.Millisecond))
	mustExchange(t, tcpAddr(port), "backend")
}

// TestClientsAPI: register, rotate and remove clients at runtime.
func TestClientsAPI(t *testing.T) {
	t.Parallel()
	ka := newKey(t)
	srv := startServer(t, map[string]wg.Key{"home-a": ka})
	ba, bb := startBackend(t, "backend-a", false), startBackend(t, "backend-b", false)
	startClient(t, srv, "home-a", ka, map[string]string{"web": ba.addr})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	pa := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: pa, BackEndService: "web", ClientId: "home-a"}})
	live := dialLive(t, tcpAddr(pa), "backend-a")

	// Register a second client at runtime; the first is undisturbed.
	kb := newKey(t)
	code, body, err := srv.call("PUT", "/clients/home-b", map[string]string{"PublicKey": kb.PublicKey().String()})
	if err != nil || code != http.StatusOK {
		t.Fatalf("PUT /clients/home-b: %d %s %v", code, body, err)
	}
	startClient(t, srv, "home-b", kb, map[string]string{"web": bb.addr})
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	live.roundTrip(t, "a still flows")
	pb := freePort(t, "tcp")
	tunnels := []tunnel{
		{ListenAddress: "127.0.0.1", ListenPort: pa, BackEndService: "web", ClientId: "home-a"},
		{ListenAddress: "127.0.0.1", ListenPort: pb, BackEndService: "web", ClientId: "home-b"},
	}
	srv.mustPutTunnels(t, tunnels)
	mustExchange(t, tcpAddr(pb), "backend-b")

	for _, tc := range []struct {
		method, path string
		body         any
		code         int
	}{
		{"PUT", "/clients/home-c", map[string]string{"PublicKey": "not a key"}, 400},
		{"PUT", "/clients/home-c", `{"PublicKey":"` + newKey(t).PublicKey().String() + `","Extra":1}`, 400},
		{"PUT", "/clients/bad%20id", map[string]string{"PublicKey": newKey(t).PublicKey().String()}, 400},
		{"PUT", "/clients/home-c", map[string]string{"PublicKey": ka.PublicKey().String()}, 409},      // home-a's key
		{"PUT", "/clients/home-c", map[string]string{"PublicKey": srv.key.PublicKey().String()}, 400}, // the server's key
		{"DELETE", "/clients/home-b", nil, 409},                                                       // used by a tunnel
		{"DELETE", "/clients/nobody", nil, 404},
	} {
		code, body, err := srv.call(tc.method, tc.path, tc.body)
		if err != nil || code != tc.code {
			t.Errorf("%s %s: %d %s %v, want %d", tc.method, tc.path, code, body, err, tc.code)
		}
	}
	if _, ok := srv.clients(t)["home-c"]; ok {
		t.Error("a refused registration was stored")
	}

	// Rotating home-b's key cuts it off until it uses the new key.
	kb2 := newKey(t)
	code, body, err = srv.call("PUT", "/clients/home-b", map[string]string{"PublicKey": kb2.PublicKey().String()})
	if err != nil || code != http.StatusOK {
		t.Fatalf("rotate: %d %s %v", code, body, err)
	}
	if st := srv.clients(t)["home-b"]; st.PublicKey != kb2.PublicKey().String() || st.CurrentState == "ClientConnected" {
		t.Errorf("after rotation: %+v", st)
	}
	startClient(t, srv, "home-b", kb2, map[string]string{"web": bb.addr})
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	mustExchange(t, tcpAddr(pb), "backend-b")

	// Removing home-b once no tunnel uses it.
	srv.mustPutTunnels(t, tunnels[:1])
	if code, body, err := srv.call("DELETE", "/clients/home-b", nil); err != nil || code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s %v", code, body, err)
	}
	if _, ok := srv.clients(t)["home-b"]; ok {
		t.Error("deleted client still listed")
	}
	live.roundTrip(t, "a flows after all that")
}

func runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("threshold %v hung", args)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func TestCLI(t *testing.T) {
	t.Parallel()
	priv, _, code := runCLI(t, "", "genkey")
	if code != 0 {
		t.Fatalf("genkey exit %d", code)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(priv))
	if err != nil || len(raw) != 32 || raw[0]&7 != 0 || raw[31]&0xc0 != 0x40 {
		t.Fatalf("genkey printed %q: not a clamped 32-byte base64 key", priv)
	}
	pub, _, code := runCLI(t, priv, "pubkey")
	k, _ := wg.ParseKey(priv)
	if code != 0 || strings.TrimSpace(pub) != k.PublicKey().String() {
		t.Fatalf("pubkey: %q (exit %d), want %s", pub, code, k.PublicKey())
	}
	// RFC 7748's test vector: the same derivation as wg pubkey.
	vec, _, _ := runCLI(t, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n", "pubkey")
	if strings.TrimSpace(vec) != "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=" {
		t.Errorf("pubkey of the RFC 7748 vector: %q", vec)
	}
	if _, errOut, code := runCLI(t, "garbage", "pubkey"); code == 0 || !strings.Contains(errOut, "invalid") {
		t.Errorf("pubkey of garbage: exit %d, %q", code, errOut)
	}
	if out, _, code := runCLI(t, "", "version"); code != 0 || !strings.HasPrefix(out, "threshold ") {
		t.Errorf("version: %q %d", out, code)
	}
	if out, _, code := runCLI(t, "", "help"); code != 0 || !strings.Contains(out, "threshold server --config") {
		t.Errorf("help: %q %d", out, code)
	}
	for _, sub := range []string{"server", "client", "genkey", "pubkey", "demo"} {
		if _, errOut, code := runCLI(t, "", sub, "--help"); code != 0 || !strings.Contains(errOut, "Usage: threshold "+sub) {
			t.Errorf("%s --help: %d %q", sub, code, errOut)
		}
	}
	if _, _, code := runCLI(t, "", "frobnicate"); code == 0 {
		t.Error("unknown command exited 0")
	}

	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		role, config string
		mentions     []string
	}{
		{"server", `{"TunnelControlPort":70000,"ManagementPort":-1,"ManagementAddress":"localhost","Clients":[{"ClientId":"","PublicKey":"nope"},{"ClientId":"x","PublicKey":"nope"},{"ClientId":"x"}]}`,
			[]string{"TunnelControlPort", "ManagementPort", "ManagementAddress", "Clients[0].ClientId", "Clients[0].PublicKey", "Clients[2].ClientId"}},
		{"server", `{"TunnelControlPort":9056,"Bogus":true}`, []string{"Bogus"}},
		{"server", `{"TunnelControlPort":`, []string{"line 1, column 22: TunnelControlPort: unexpected end of input"}},
		{"client", `{"ServerTunnelControlPort":0,"ServiceToLocalAddrMap":{"web":"nohost","":"127.0.0.1:1"}}`,
			[]string{"ClientId", "ServerHost", "ServerPublicKey", `ServiceToLocalAddrMap["web"]`, `ServiceToLocalAddrMap[""]`}},
	} {
		path := write(tc.role+".json", tc.config)
		_, errOut, code := runCLI(t, "", tc.role, "--config", path)
		if code == 0 {
			t.Errorf("%s accepted %s", tc.role, tc.config)
		}
		for _, m := range tc.mentions {
			if !strings.Contains(errOut, m) {
				t.Errorf("%s config %s: error does not mention %s:\n%s", tc.role, tc.config, m, errOut)
			}
		}
	}
	if _, errOut, code := runCLI(t, "", "server", "--config", filepath.Join(dir, "missing.json")); code == 0 || !strings.Contains(errOut, "missing.json") {
		t.Errorf("missing config: %d %q", code, errOut)
	}
	if _, _, code := runCLI(t, "", "server"); code == 0 {
		t.Error("server without --config exited 0")
	}

	// A missing key file is generated with mode 0600 and reused.
	keyFile := filepath.Join(dir, "gen", "server.key")
	mgmt := freePort(t, "tcp")
	path := write("gen.json", `{"TunnelControlPort":`+itoa(freePort(t, "udp"))+`,"ManagementPort":`+itoa(mgmt)+`,"PrivateKeyFile":"`+keyFile+`"}`)
	p := startProc(t, "keygen server", "server", "--config", path)
	waitUntil(t, 15*time.Second, "key file", func() bool { _, err := os.Stat(keyFile); return err == nil })
	waitUntil(t, 15*time.Second, "startup log", func() bool { return strings.Contains(p.logs.String(), "public_key=") })
	p.stop(t)
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("generated key file: %v %v", st, err)
	}
	data, _ := os.ReadFile(keyFile)
	gk, err := wg.ParseKey(string(data))
	if err != nil || !strings.Contains(p.logs.String(), gk.PublicKey().String()) || strings.Contains(p.logs.String(), gk.String()) {
		t.Errorf("startup log should show the public key and never the private key:\n%s", p.logs.String())
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestDemo runs the README's main command.
func TestDemo(t *testing.T) {
	t.Parallel()
	out, errOut, code := runCLI(t, "", "demo", "--quiet")
	if code != 0 || !strings.Contains(out, "Response from listener was: asd") || !strings.Contains(out, "Demo succeeded") {
		t.Fatalf("demo exit %d:\n%s\n%s", code, out, errOut)
	}
}
