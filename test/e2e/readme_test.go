package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The README's setup, followed literally: its commands, its file names
// and its config files as it shows them, read from README.md itself, so
// that the README and the code cannot drift apart. Only what cannot be
// literal on a shared test machine is changed, and said so: the ports
// (free ones instead of 9056, 9057, 9000 and 9001), the server's host
// name (127.0.0.1) and the keys (the ones the steps generate).

// readmeBlock is a fenced code block of README.md and the heading above it.
type readmeBlock struct {
	heading, lang, text string
}

func readmeBlocks(t *testing.T) (string, []readmeBlock) {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []readmeBlock
	var cur *readmeBlock
	heading := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &readmeBlock{heading: heading, lang: strings.TrimPrefix(line, "```")}
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		}
	}
	return string(data), blocks
}

// readmeBlockUnder returns the first block under heading that holds want.
func readmeBlockUnder(t *testing.T, blocks []readmeBlock, heading, want string) string {
	t.Helper()
	for _, b := range blocks {
		if b.heading == heading && strings.Contains(b.text, want) {
			return b.text
		}
	}
	t.Fatalf("README.md has no code block holding %q under the heading %q", want, heading)
	return ""
}

// readmeCommand returns the arguments of the command the README's table
// of commands gives, in backticks, starting with prefix.
func readmeCommand(t *testing.T, readme, prefix string) []string {
	t.Helper()
	m := regexp.MustCompile("(?m)^\\| `(" + regexp.QuoteMeta(prefix) + "[^`]*)` \\|").FindStringSubmatch(readme)
	if m == nil {
		t.Fatalf("README.md's table of commands has no `%s...`", prefix)
	}
	return strings.Fields(m[1])[1:]
}

// startIn runs the binary in dir with the binary's directory first in
// PATH, as a user who installed it would.
func startIn(t *testing.T, name, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Dir = dir
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

// decodeObject decodes a README JSON block into a generic object.
func decodeObject(t *testing.T, what, text string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		t.Fatalf("README.md's %s is not valid JSON: %v\n%s", what, err, text)
	}
	return m
}

// replaceField sets m[field], which the README's block must have.
func replaceField(t *testing.T, what string, m map[string]any, field string, v any) {
	t.Helper()
	if _, ok := m[field]; !ok {
		t.Fatalf("README.md's %s has no %s", what, field)
	}
	m[field] = v
}

func TestReadmeSetup(t *testing.T) {
	t.Parallel()
	readme, blocks := readmeBlocks(t)
	home, vm := t.TempDir(), t.TempDir()
	env := append(os.Environ(), "PATH="+filepath.Dir(binPath)+":"+os.Getenv("PATH"))

	// Step 1, on the client machine: the key, with the README's command.
	step1 := regexp.MustCompile("(?m)^1\\. On the client machine: `([^`]+)`").FindStringSubmatch(readme)
	if step1 == nil {
		t.Fatal("README.md's Setting up has no step 1 command")
	}
	cmd := exec.Command("sh", "-c", step1[1])
	cmd.Dir, cmd.Env = home, env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("step 1 %q: %v", step1[1], err)
	}
	clientPub := strings.TrimSpace(string(out))
	t.Logf("step 1: %s -> %s", step1[1], clientPub)

	// Step 2, on the server: server.json as the README shows it,
	// registering that key, then the server.
	tunnelPort, mgmtPort := freePort(t, "udp"), freePort(t, "tcp")
	const what = "server config"
	sc := decodeObject(t, what, readmeBlockUnder(t, blocks, "Server config", `"TunnelControlPort"`))
	replaceField(t, what, sc, "TunnelControlPort", tunnelPort)
	replaceField(t, what, sc, "ManagementPort", mgmtPort)
	clients, ok := sc["Clients"].([]any)
	if !ok || len(clients) != 1 {
		t.Fatalf("README.md's server config has no list of one client: %v", sc["Clients"])
	}
	registered := clients[0].(map[string]any)
	replaceField(t, what, registered, "PublicKey", clientPub)
	clientID, _ := registered["ClientId"].(string)
	writeJSON(t, filepath.Join(vm, "server.json"), sc)
	srv := startIn(t, "server", vm, readmeCommand(t, readme, "threshold server ")...)
	started := waitLog(t, srv, 15*time.Second, "threshold server started", "public_key=")
	serverPub := regexp.MustCompile(`public_key="?([A-Za-z0-9+/=]{44})`).FindStringSubmatch(started)[1]
	if sd, _ := sc["StateDir"].(string); sd != "" {
		if _, err := os.Stat(filepath.Join(vm, sd, "server.key")); err != nil {
			t.Errorf("the server's key is not in StateDir: %v", err)
		}
	}

	// A plain HTTP backend where the README's client config says
	// fooService is (on a free port).
	backendLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello from fooService\n") })}
	go backend.Serve(backendLn)
	t.Cleanup(func() { backend.Close() })

	// Step 3, on the client: client.json as the README shows it, with the
	// server's key, then the client. It must use step 1's key file.
	const cwhat = "client config"
	cc := decodeObject(t, cwhat, readmeBlockUnder(t, blocks, "Client config", `"ServerPublicKey"`))
	replaceField(t, cwhat, cc, "ServerHost", "127.0.0.1")
	replaceField(t, cwhat, cc, "ServerTunnelControlPort", tunnelPort)
	replaceField(t, cwhat, cc, "ServerPublicKey", serverPub)
	services, _ := cc["ServiceToLocalAddrMap"].(map[string]any)
	foo, _ := services["fooService"].(map[string]any)
	if foo == nil {
		t.Fatalf("README.md's client config has no fooService object: %v", cc["ServiceToLocalAddrMap"])
	}
	replaceField(t, cwhat, foo, "Address", backendLn.Addr().String())
	if cc["ClientId"] != clientID {
		t.Errorf("the README's client config calls the client %v, its server config %q", cc["ClientId"], clientID)
	}
	if _, err := os.Stat(filepath.Join(home, fmt.Sprint(cc["PrivateKeyFile"]))); err != nil {
		t.Errorf("the README's client config names PrivateKeyFile %v, which step 1 did not write: %v", cc["PrivateKeyFile"], err)
	}
	writeJSON(t, filepath.Join(home, "client.json"), cc)
	cl := startIn(t, "client", home, readmeCommand(t, readme, "threshold client ")...)
	waitLog(t, cl, 5*time.Second, "threshold client started", fmt.Sprintf("public_key=%q", clientPub))
	waitLog(t, cl, 20*time.Second, "connected to server")
	api := fmt.Sprintf("http://localhost:%d", mgmtPort)
	waitUntil(t, 10*time.Second, "GET /clients to show the client connected", func() bool {
		resp, err := http.Get(api + "/clients")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var cs map[string]struct{ CurrentState, PublicKey string }
		return json.NewDecoder(resp.Body).Decode(&cs) == nil && cs[clientID].CurrentState == "ClientConnected" && cs[clientID].PublicKey == clientPub
	})

	// Step 4, from the automation: the README's first PUT /tunnels.
	put := readmeBlockUnder(t, blocks, "`PUT /tunnels`", "curl -X PUT")
	m := regexp.MustCompile(`curl -X PUT localhost:9057(/tunnels) -d '([^']+)'`).FindStringSubmatch(put)
	if m == nil {
		t.Fatalf("README.md's PUT /tunnels example is not `curl -X PUT localhost:9057/tunnels -d '...'`: %s", put)
	}
	var tunnels []map[string]any
	if err := json.Unmarshal([]byte(m[2]), &tunnels); err != nil || len(tunnels) != 1 {
		t.Fatalf("README.md's PUT /tunnels body %s: %v", m[2], err)
	}
	if tunnels[0]["HaProxyProxyProtocol"] == true {
		t.Error("README.md's first PUT /tunnels turns PROXY on: a plain backend breaks")
	}
	publicPort := freePort(t, "tcp")
	replaceField(t, "PUT /tunnels body", tunnels[0], "ListenPort", publicPort)
	body, _ := json.Marshal(tunnels)
	req, _ := http.NewRequest("PUT", api+m[1], bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /tunnels: %d %s", resp.StatusCode, answer)
	}

	// A user, as curl would: through the public port to fooService.
	host, _ := tunnels[0]["ListenAddress"].(string)
	resp, err = http.Get("http://" + net.JoinHostPort(host, strconv.Itoa(publicPort)) + "/")
	if err != nil {
		t.Fatalf("through the tunnel: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(got) != "hello from fooService\n" {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, got)
	}
}
