package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/thresholdtunnel/threshold/atomicfile"
	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/server"
	"github.com/thresholdtunnel/threshold/wg"
)

// runDemo replays the original project's usage example on loopback: a
// server and a client (as real child processes), a PROXY-aware "listener"
// backend and a "sender" playing the internet user.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	quiet := fs.Bool("quiet", false, "do not show the server's and client's logs")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: threshold demo [--quiet]\n\nRuns the usage example end to end on loopback, with free ports, and cleans up.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	d := &demo{out: stdout, showLogs: !*quiet}
	err := d.run()
	d.cleanup()
	if err != nil {
		fmt.Fprintf(stdout, "\nDEMO FAILED: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "\nDemo succeeded: the listener saw the sender's real address through the tunnel.")
	return 0
}

type demo struct {
	out      io.Writer
	showLogs bool
	dir      string
	procs    []*exec.Cmd
	outMu    sync.Mutex
}

func (d *demo) say(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, format+"\n", args...)
}

// freePort picks a free port and holds it until release is called, so
// that ports picked one after another (and the backend's) all differ.
func freePort(network string) (port int, release func(), err error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, nil, err
		}
		return c.LocalAddr().(*net.UDPAddr).Port, func() { c.Close() }, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, err
	}
	return l.Addr().(*net.TCPAddr).Port, func() { l.Close() }, nil
}

func (d *demo) run() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding own executable: %w", err)
	}
	if d.dir, err = os.MkdirTemp("", "threshold-demo-*"); err != nil {
		return err
	}
	var tunnelPort, mgmtPort, publicPort int
	var held []func()
	releasePorts := func() {
		for _, release := range held {
			release()
		}
		held = nil
	}
	defer releasePorts()
	for _, p := range []struct {
		port    *int
		network string
	}{{&tunnelPort, "udp"}, {&mgmtPort, "tcp"}, {&publicPort, "tcp"}} {
		var release func()
		if *p.port, release, err = freePort(p.network); err != nil {
			return fmt.Errorf("picking a free port: %w", err)
		}
		held = append(held, release)
	}

	// The "listener" test app: the web application on the client's side.
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	releasePorts() // the server and client bind them next
	// Only the threshold client, on loopback, may (and must) send a PROXY header.
	listener := &proxyproto.Listener{Listener: backend, ConnPolicy: proxyproto.TrustProxyHeaderFrom(net.IPv4(127, 0, 0, 1)), ReadHeaderTimeout: 5 * time.Second}
	defer listener.Close()
	d.say("Starting the \"listener\" test app. It listens on %s. This would be your web application server.", backend.Addr())
	seen := make(chan string, 1)
	go d.serveListener(listener, seen)

	serverKey, err := wg.GenerateKey()
	if err != nil {
		return err
	}
	clientKey, err := wg.GenerateKey()
	if err != nil {
		return err
	}
	for name, k := range map[string]wg.Key{"server.key": serverKey, "client.key": clientKey} {
		if err := atomicfile.Write(filepath.Join(d.dir, name), []byte(k.String()+"\n"), 0o600); err != nil {
			return err
		}
	}
	serverCfg := server.Config{
		TunnelControlPort: tunnelPort, ManagementPort: mgmtPort, ManagementAddress: "127.0.0.1",
		PrivateKeyFile: filepath.Join(d.dir, "server.key"),
		Clients:        []control.Registration{{ClientId: "TestClient1", PublicKey: clientKey.PublicKey().String()}},
	}
	clientCfg := client.Config{
		ClientId: "TestClient1", ServerHost: "127.0.0.1", ServerTunnelControlPort: tunnelPort,
		ServerPublicKey: serverKey.PublicKey().String(), PrivateKeyFile: filepath.Join(d.dir, "client.key"),
		// The client's own choice: a PROXY v1 header for this backend,
		// whatever the server asks. Its sender is on loopback, which a
		// client believes only when told to.
		ServiceToLocalAddrMap: map[string]client.Service{"fooService": client.WithProxy(backend.Addr().String(), 1)},
		ProxySourceAllowCIDRs: []string{"127.0.0.0/8"},
	}

	// Shown as they run, defaults filled in.
	serverCfg.FillDefaults()
	clientCfg.FillDefaults()
	d.say("\nStarting the tunnel server with tunnel control port (UDP): %d, management port: %d", tunnelPort, mgmtPort)
	if err := d.start(exe, "server", serverCfg); err != nil {
		return err
	}
	api := fmt.Sprintf("http://127.0.0.1:%d", mgmtPort)
	if err := waitFor(15*time.Second, func() bool { _, err := httpDo("GET", api+"/clients", nil); return err == nil }); err != nil {
		return fmt.Errorf("the management API did not come up: %w", err)
	}

	d.say("\nStarting the tunnel client. Client Identifier: TestClient1")
	if err := d.start(exe, "client", clientCfg); err != nil {
		return err
	}
	d.say("\nChecking the list of connected clients.")
	var clients []byte
	if err := waitFor(30*time.Second, func() bool {
		clients, err = httpDo("GET", api+"/clients", nil)
		return err == nil && bytes.Contains(clients, []byte(`"CurrentState":"ClientConnected"`))
	}); err != nil {
		return fmt.Errorf("the client did not connect: last GET /clients: %s", clients)
	}
	d.say("HTTP GET %s/clients:\n%s", api, clients)

	tunnels := fmt.Sprintf(`[{"HaProxyProxyProtocol":true,"ListenAddress":"127.0.0.1","ListenHostnameGlob":"*","ListenPort":%d,"BackEndService":"fooService","ClientId":"TestClient1"}]`, publicPort)
	d.say("Sending the tunnel configuration to the server.\nHTTP PUT %s/tunnels:\n%s", api, tunnels)
	applied, err := httpDo("PUT", api+"/tunnels", []byte(tunnels))
	if err != nil {
		return fmt.Errorf("PUT /tunnels: %w", err)
	}
	d.say("response: %s", applied)

	d.say("Starting the \"sender\" test app.\nIt connects to the front end port of the tunnel (port %d). This would be your end user who wants to use the web application.", publicPort)
	senderAddr, reply, err := d.send(fmt.Sprintf("127.0.0.1:%d", publicPort))
	if err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	d.say("Sender: Response from listener was: %s", reply)
	if reply != "asd" {
		return fmt.Errorf("sender got %q, want \"asd\"", reply)
	}
	var listenerSaw string
	select {
	case listenerSaw = <-seen:
	case <-time.After(5 * time.Second):
		return errors.New("the listener never reported a connection")
	}
	d.say("\nThe sender dialed from %s; the listener saw the connection come from %s.", senderAddr, listenerSaw)
	if listenerSaw != senderAddr {
		return fmt.Errorf("listener saw %s, but the sender was %s", listenerSaw, senderAddr)
	}
	return nil
}

func (d *demo) serveListener(l net.Listener, seen chan<- string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			d.say("Listener: Someone connected from: %s", c.RemoteAddr())
			msg, err := io.ReadAll(c)
			if err != nil {
				d.say("Listener: read failed: %v", err)
				return
			}
			d.say("Listener: read %d bytes\nListener: the sender sent: %s", len(msg), msg)
			d.say("Listener: I am going to respond with \"asd\"")
			c.Write([]byte("asd"))
			d.say("Listener: conn.Close()")
			select {
			case seen <- c.RemoteAddr().String():
			default:
			}
		}()
	}
}

func (d *demo) send(addr string) (from, reply string, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	from = c.LocalAddr().String()
	d.say("Sender: I am dialing %s from %s", addr, from)
	msg := "Hello ! Hello! \n"
	if _, err := c.Write([]byte(msg)); err != nil {
		return from, "", err
	}
	d.say("Sender: sent %d bytes", len(msg))
	// Half-close: the listener reads to the end, then replies.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return from, "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return from, "", err
	}
	d.say("Sender: read %d bytes", len(b))
	return from, string(b), nil
}

func (d *demo) start(exe, role string, cfg any) error {
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(d.dir, role+".json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	d.say("%s config:\n%s", role, data)
	cmd := exec.Command(exe, role, "--config", path)
	if d.showLogs {
		w := &prefixWriter{d: d, prefix: role + " | "}
		cmd.Stdout, cmd.Stderr = w, w
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", role, err)
	}
	d.procs = append(d.procs, cmd)
	return nil
}

func (d *demo) cleanup() {
	if len(d.procs) > 0 {
		d.say("Done. Now terminating the server and client and cleaning up..")
	}
	for _, p := range d.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range d.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

type prefixWriter struct {
	d      *demo
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.d.say("%s%s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func waitFor(timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		if ok() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s", timeout)
		}
		time.Sleep(delay)
	}
}

func httpDo(method, url string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return b, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(b)))
	}
	return bytes.TrimSpace(b), nil
}
