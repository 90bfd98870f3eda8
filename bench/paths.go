package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// proc is one child process: a threshold or stock server or client.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts bin with args, its output going to logPath. A non-empty
// prefix is a command that runs it, such as ["ip", "netns", "exec", "NS"]
// (which execs bin in place, so the pid stays the program's own).
func startProc(name, logPath string, prefix []string, bin string, args ...string) (*proc, error) {
	return startProcEnv(name, logPath, nil, prefix, bin, args...)
}

// startProcEnv is startProc with extra KEY=VALUE environment variables.
func startProcEnv(name, logPath string, env, prefix []string, bin string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, log: logPath, done: make(chan struct{})}
	argv := append(append(append([]string(nil), prefix...), bin), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	// Die with the bench, whatever happens to it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail is the end of a process's output, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Sprintf("--- %s (%s) ---\n%s", p.name, p.log, b)
}

// instance is one running tunnel (server + client processes) or the direct
// path (no process); addr is where the load generator connects.
type instance struct {
	path  string
	addr  string
	api   string // the threshold server's management API
	procs []*proc
}

func (in *instance) pids() []int {
	var out []int
	for _, p := range in.procs {
		out = append(out, p.pid())
	}
	return out
}

// rssEach names each process's VmRSS and RssAnon, for progress lines
// that show where an RSS figure sits.
func (in *instance) rssEach() string {
	var parts []string
	for _, p := range in.procs {
		rss, err1 := statusBytes(p.pid(), "VmRSS")
		anon, err2 := statusBytes(p.pid(), "RssAnon")
		if err1 != nil || err2 != nil {
			parts = append(parts, p.name+" ?")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.1f (anon %.1f)", p.name, float64(rss)/1e6, float64(anon)/1e6))
	}
	return strings.Join(parts, ", ")
}

// check reports a process that has died.
func (in *instance) check() error {
	for _, p := range in.procs {
		if p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.logTail())
		}
	}
	return nil
}

func (in *instance) stop() {
	for i := len(in.procs) - 1; i >= 0; i-- {
		in.procs[i].stop()
	}
}

func (in *instance) logs() string {
	var b strings.Builder
	for _, p := range in.procs {
		b.WriteString(p.logTail())
		b.WriteByte('\n')
	}
	return b.String()
}

// --- ports, polling, HTTP ---

func freePort(network string) (int, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitFor(timeout time.Duration, what string, ok func() error) error {
	deadline := time.Now().Add(timeout)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		err := ok()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s waiting for %s: %w", timeout, what, err)
		}
		time.Sleep(delay)
	}
}

func httpDo(client *http.Client, method, url string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return b, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// ready waits until an echo works end to end through addr.
func ready(dial dialFunc, addr string, timeout time.Duration) error {
	return waitFor(timeout, "an echo through "+addr, func() error { return shortConn(dial, addr) })
}

// --- threshold ---

// thresholdPath starts `threshold server` in the server host and `threshold
// client` in the home host, configured as a user would: config files, then
// PUT /tunnels on the management API. The zero hosts put both on the
// bench's own loopback; the server's public port and management API are on
// 127.0.0.1 of the server host, where the load generator runs.
type thresholdPath struct {
	name         string   // the path's name: threshold, or before (-before)
	env          []string // extra environment of the processes (-threshold-env)
	bin, dir     string
	n            int     // instances started, for file names
	server, home netHost // where the two processes run
	serverIP     string  // the server's address as the client dials it; "" is 127.0.0.1
	maxPublic    int     // MaxPublicConnections for the server; 0: its default
}

func (t *thresholdPath) start(backendAddr string) (_ *instance, err error) {
	t.n++
	dir := filepath.Join(t.dir, fmt.Sprintf("%s-%d", t.name, t.n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	serverIP := t.serverIP
	if serverIP == "" {
		serverIP = "127.0.0.1"
	}
	tunnelPort, err := t.server.freePort("udp")
	if err != nil {
		return nil, err
	}
	mgmtPort, err := t.server.freePort("tcp")
	if err != nil {
		return nil, err
	}
	publicPort, err := t.server.freePort("tcp")
	if err != nil {
		return nil, err
	}
	serverKey, err := wg.GenerateKey()
	if err != nil {
		return nil, err
	}
	clientKey, err := wg.GenerateKey()
	if err != nil {
		return nil, err
	}
	for name, k := range map[string]wg.Key{"server.key": serverKey, "client.key": clientKey} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(k.String()+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	serverCfg := map[string]any{
		"TunnelControlPort": tunnelPort, "ManagementPort": mgmtPort, "ManagementAddress": "127.0.0.1",
		"PrivateKeyFile": filepath.Join(dir, "server.key"),
		"Clients":        []map[string]string{{"ClientId": "bench", "PublicKey": clientKey.PublicKey().String()}},
	}
	if t.maxPublic > 0 {
		serverCfg["MaxPublicConnections"] = t.maxPublic
	}
	clientCfg := map[string]any{
		"ClientId": "bench", "ServerHost": serverIP, "ServerTunnelControlPort": tunnelPort,
		"ServerPublicKey": serverKey.PublicKey().String(), "PrivateKeyFile": filepath.Join(dir, "client.key"),
		"ServiceToLocalAddrMap": map[string]string{"bench": backendAddr},
	}
	in := &instance{path: t.name, addr: fmt.Sprintf("127.0.0.1:%d", publicPort)}
	mgmt := t.server.httpClient()
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, in.logs())
			in.stop()
		}
	}()
	for _, role := range []string{"server", "client"} {
		cfg, host := serverCfg, t.server
		if role == "client" {
			cfg, host = clientCfg, t.home
		}
		data, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			return nil, err
		}
		cfgPath := filepath.Join(dir, role+".json")
		if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
			return nil, err
		}
		argv := host.command(t.bin, role, "--config", cfgPath)
		p, err := startProcEnv(t.name+" "+role, filepath.Join(dir, role+".log"), t.env, nil, argv[0], argv[1:]...)
		if err != nil {
			return nil, err
		}
		in.procs = append(in.procs, p)
		if role == "server" {
			if err := waitFor(20*time.Second, "the management API", func() error {
				if err := in.check(); err != nil {
					return err
				}
				_, err := httpDo(mgmt, "GET", fmt.Sprintf("http://127.0.0.1:%d/healthz", mgmtPort), nil)
				return err
			}); err != nil {
				return nil, err
			}
		}
	}
	api := fmt.Sprintf("http://127.0.0.1:%d", mgmtPort)
	in.api = api
	if err := waitFor(30*time.Second, "GET /clients to show ClientConnected", func() error {
		if err := in.check(); err != nil {
			return err
		}
		b, err := httpDo(mgmt, "GET", api+"/clients", nil)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte(`"CurrentState":"ClientConnected"`)) {
			return fmt.Errorf("GET /clients: %s", bytes.TrimSpace(b))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	tunnels := fmt.Sprintf(`[{"HaProxyProxyProtocol":false,"ListenAddress":"127.0.0.1","ListenHostnameGlob":"*","ListenPort":%d,"BackEndService":"bench","ClientId":"bench"}]`, publicPort)
	if _, err := httpDo(mgmt, "PUT", api+"/tunnels", []byte(tunnels)); err != nil {
		return nil, err
	}
	if err := ready(t.server.dial, in.addr, 15*time.Second); err != nil {
		return nil, err
	}
	return in, nil
}

// --- stock wireguard-go tun/netstack ---

type stockPath struct {
	bin, dir string
	n        int
}

func (s *stockPath) start(backendAddr string) (_ *instance, err error) {
	s.n++
	dir := filepath.Join(s.dir, fmt.Sprintf("stock-%d", s.n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	wgPort, err := freePort("udp")
	if err != nil {
		return nil, err
	}
	publicPort, err := freePort("tcp")
	if err != nil {
		return nil, err
	}
	serverKey, err := wg.GenerateKey()
	if err != nil {
		return nil, err
	}
	clientKey, err := wg.GenerateKey()
	if err != nil {
		return nil, err
	}
	hexKey := func(k wg.Key) string { return hex.EncodeToString(k[:]) }
	in := &instance{path: "stock", addr: fmt.Sprintf("127.0.0.1:%d", publicPort)}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, in.logs())
			in.stop()
		}
	}()
	srv, err := startProc("stock server", filepath.Join(dir, "server.log"), nil, s.bin, "-mode", "server",
		"-private", hexKey(serverKey), "-peer", hexKey(clientKey.PublicKey()),
		"-wg-port", strconv.Itoa(wgPort), "-listen", in.addr)
	if err != nil {
		return nil, err
	}
	in.procs = append(in.procs, srv)
	// Start the client once the server is up (its public port opens after
	// its WireGuard device), or its first handshake is lost and retried
	// only 5 s later.
	if err := waitFor(20*time.Second, "the stock server's public port", func() error {
		if err := in.check(); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", in.addr, dialTimeout)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return nil, err
	}
	cli, err := startProc("stock client", filepath.Join(dir, "client.log"), nil, s.bin, "-mode", "client",
		"-private", hexKey(clientKey), "-peer", hexKey(serverKey.PublicKey()),
		"-endpoint", fmt.Sprintf("127.0.0.1:%d", wgPort), "-backend", backendAddr)
	if err != nil {
		return nil, err
	}
	in.procs = append(in.procs, cli)
	if err := waitFor(30*time.Second, "an echo through the stock tunnel", func() error {
		if err := in.check(); err != nil {
			return err
		}
		return shortConn(dial, in.addr)
	}); err != nil {
		return nil, err
	}
	return in, nil
}

// --- process figures from /proc ---

// statusBytes reads a kB field (VmRSS, RssAnon) from /proc/<pid>/status.
func statusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("odd %s line %q", field, line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s line", field)
}

// clockTicks is USER_HZ, which Linux fixes at 100 for /proc on every
// architecture Go runs on.
const clockTicks = 100

// cpuSeconds reads utime+stime (all threads) from /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / clockTicks, nil
}

func sumOver(pids []int, f func(int) (float64, error)) (float64, error) {
	var total float64
	for _, pid := range pids {
		v, err := f(pid)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

// totalRSS sums a /proc status field (VmRSS: what the targets use; RssAnon:
// the same without the binary's file-backed pages, which each process
// counts although they share them) over the processes.
func totalRSS(pids []int, field string) (float64, error) {
	return sumOver(pids, func(pid int) (float64, error) {
		b, err := statusBytes(pid, field)
		return float64(b), err
	})
}

func totalCPU(pids []int) (float64, error) { return sumOver(pids, cpuSeconds) }
