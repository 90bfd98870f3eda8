package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// nobody is the unprivileged uid and gid the rootless test runs as.
const nobody = 65534

// setprivArgs drop everything a process can hold: uid and gid 65534, no
// supplementary group, no inheritable or bounding capability (so none can
// ever be gained), and no-new-privileges (setuid binaries do nothing). This
// is what README.md's hardened systemd unit and container flags amount to.
var setprivArgs = []string{
	"--reuid=65534", "--regid=65534", "--clear-groups",
	"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
}

// TestRootless runs the server and the client as uid 65534 with an empty
// capability set, from files in a directory that user may only read (its
// state directories aside), and passes traffic end to end with PROXY v1 and
// v2 headers: threshold needs no privilege, not even NET_ADMIN or a TUN device.
func TestRootless(t *testing.T) {
	t.Parallel()
	setpriv := requireSetpriv(t)

	// A root-owned directory that uid 65534 may read and search: the binary
	// and the configs. Only the state directories are theirs (like systemd's
	// StateDirectory=, or a container's volume).
	dir, err := os.MkdirTemp("", "threshold-rootless-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "threshold")
	copyFile(t, binPath, bin, 0o755)
	serverState, clientState := nobodysDir(t, dir, "server-state"), nobodysDir(t, dir, "client-state")

	// The client's key exists beforehand (the server registers it), where
	// StateDir puts it; the server generates its own into its StateDir on
	// first start, and keeps its clients and tunnels there.
	ck := newKey(t)
	clientKeyFile := filepath.Join(clientState, "client.key")
	if err := os.WriteFile(clientKeyFile, []byte(ck.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	chownNobody(t, clientKeyFile)

	s := &server{dir: dir, tunnelPort: freePort(t, "udp"), mgmtPort: freePort(t, "tcp")}
	s.api = fmt.Sprintf("http://127.0.0.1:%d", s.mgmtPort)
	s.config = map[string]any{
		"DebugLog": true, "TunnelControlPort": s.tunnelPort, "ManagementPort": s.mgmtPort,
		"StateDir": serverState,
		"Clients":  []map[string]string{{"ClientId": "Rootless1", "PublicKey": ck.PublicKey().String()}},
	}
	serverConfig := filepath.Join(dir, "server.json")
	writeReadable(t, serverConfig, s.config)
	s.proc = startAsNobody(t, setpriv, dir, "server", nil, bin, "server", "--config", serverConfig)
	waitUntil(t, 15*time.Second, "management API of the unprivileged server", func() bool {
		if !s.running() {
			t.Fatalf("the server exited: %v", s.proc.err)
		}
		code, _, err := s.call("GET", "/healthz", nil)
		return err == nil && code == 200
	})
	checkUnprivileged(t, s.proc)

	// The generated key belongs to uid 65534 alone.
	serverKeyFile := filepath.Join(serverState, "server.key")
	checkNobodysFile(t, serverKeyFile)
	data, err := os.ReadFile(serverKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if s.key, err = wg.ParseKey(strings.TrimSpace(string(data))); err != nil {
		t.Fatalf("generated key: %v", err)
	}

	back := startBackend(t, "rootless", true)
	clientConfig := filepath.Join(dir, "client.json")
	writeReadable(t, clientConfig, map[string]any{
		"DebugLog": true, "ClientId": "Rootless1", "ServerHost": "127.0.0.1", "ServerTunnelControlPort": s.tunnelPort,
		"ServerPublicKey": s.key.PublicKey().String(), "StateDir": clientState,
		"ServiceToLocalAddrMap": map[string]string{"fooService": back.addr},
		"ProxySourceAllowCIDRs": []string{"127.0.0.0/8"}, // the senders are on loopback
	})
	// The client finds its config through THRESHOLD_CONFIG, as in a container.
	cl := startAsNobody(t, setpriv, dir, "client Rootless1", []string{"THRESHOLD_CONFIG=" + clientConfig}, bin, "client")
	s.waitState(t, "Rootless1", "ClientConnected", 30*time.Second)
	checkUnprivileged(t, cl)

	p1, p2 := freePort(t, "tcp"), freePort(t, "tcp")
	s.mustPutTunnels(t, []tunnel{
		{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenPort: p1, BackEndService: "fooService", ClientId: "Rootless1"},
		{HaProxyProxyProtocol: true, HaProxyProxyProtocolVersion: 2, ListenAddress: "127.0.0.1", ListenPort: p2, BackEndService: "fooService", ClientId: "Rootless1"},
	})
	for _, port := range []int{p1, p2} {
		seen, from := mustExchange(t, tcpAddr(port), "rootless")
		if seen != from {
			t.Errorf("port %d: the backend saw %s, the sender was %s", port, seen, from)
		}
	}
	// The accepted tunnels were saved as uid 65534, for it alone.
	checkNobodysFile(t, filepath.Join(serverState, "state.json"))

	// Both still hold nothing, and stop cleanly on SIGTERM.
	checkUnprivileged(t, s.proc)
	checkUnprivileged(t, cl)
	cl.stop(t)
	s.stop(t)
}

// requireSetpriv skips unless this test can drop from root to uid 65534
// with no capability; it returns setpriv's path.
func requireSetpriv(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("TestRootless: setpriv and /proc/<pid>/status are Linux only")
	}
	if os.Geteuid() != 0 {
		t.Skip("TestRootless: run the tests as root to include it: it drops to uid 65534 with setpriv, which needs root to start")
	}
	path, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("TestRootless: setpriv not found (Debian package util-linux)")
	}
	if out, err := exec.Command(path, append(slices.Clone(setprivArgs), "--", "true")...).CombinedOutput(); err != nil {
		t.Skipf("TestRootless: setpriv cannot drop privileges here: %v: %s", err, out)
	}
	return path
}

// startAsNobody is startProc under setpriv, in dir, with extra environment.
// setpriv execs the command, so the process is the threshold binary itself.
func startAsNobody(t *testing.T, setpriv, dir, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(setpriv, append(append(slices.Clone(setprivArgs), "--"), args...)...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
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

// checkUnprivileged reads the kernel's view of a running process: the
// threshold binary, uid and gid 65534 (real, effective, saved, fs), no
// supplementary group, every capability set empty, no-new-privileges.
func checkUnprivileged(t *testing.T, p *proc) {
	t.Helper()
	if !p.running() {
		t.Fatalf("%s is not running: %v", p.name, p.err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			got[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	ids := fmt.Sprintf("%d %d %d %d", nobody, nobody, nobody, nobody)
	none := "0000000000000000"
	for _, w := range [][2]string{
		{"Name", "threshold"}, {"Uid", ids}, {"Gid", ids}, {"Groups", ""},
		{"CapInh", none}, {"CapPrm", none}, {"CapEff", none}, {"CapBnd", none}, {"CapAmb", none},
		{"NoNewPrivs", "1"},
	} {
		if got[w[0]] != w[1] {
			t.Errorf("%s (pid %d): /proc status %s is %q, want %q", p.name, p.cmd.Process.Pid, w[0], got[w[0]], w[1])
		}
	}
	t.Logf("%s (pid %d): Uid %s, CapEff %s, CapBnd %s, NoNewPrivs %s", p.name, p.cmd.Process.Pid, got["Uid"], got["CapEff"], got["CapBnd"], got["NoNewPrivs"])
}

func copyFile(t *testing.T, from, to string, perm os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// nobodysDir makes dir/name owned by uid 65534, mode 0700.
func nobodysDir(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	chownNobody(t, path)
	return path
}

func chownNobody(t *testing.T, path string) {
	t.Helper()
	if err := os.Chown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

// checkNobodysFile fails unless path belongs to uid 65534 with mode 0600.
func checkNobodysFile(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("the unprivileged server wrote no %s: %v", filepath.Base(path), err)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != nobody || sys.Gid != nobody || st.Mode().Perm() != 0o600 {
		t.Errorf("%s: owner %d:%d, mode %v; want %d:%d, 0600", path, sys.Uid, sys.Gid, st.Mode().Perm(), nobody, nobody)
	}
}

// writeReadable writes a root-owned JSON file that others may read (a
// config holds no secret: the keys are in their own files).
func writeReadable(t *testing.T, path string, v any) {
	t.Helper()
	writeJSON(t, path, v)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
}
