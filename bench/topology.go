package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The WAN benchmark's hosts, three network namespaces named
// nsPrefix<PID>-{srv,mid,home}:
//
//	server host                 middle (the link)                home host
//	eth0 203.0.113.1 ── veth ── srv  [emulator]  home ── veth ── eth0 198.51.100.2
//
// The middle namespace has no addresses and no IP of its own: the emulator
// bridges its two veths in userspace. The two hosts see each other as
// directly attached (a /32 route and a permanent neighbour entry each, so
// no ARP crosses the link), with IPv6 off everywhere, so every frame on
// the link is the benchmark's own IPv4 traffic.
const (
	nsPrefix   = "thrwan"
	wanSrvIP   = "203.0.113.1"
	wanHomeIP  = "198.51.100.2"
	midSrvDev  = "srv"  // the middle's veth towards the server host
	midHomeDev = "home" // ... towards the home host
	hostDev    = "eth0" // each host's veth
)

// offloadsOff are the ethtool features that must be off on every veth: with
// checksum offload frames carry partial checksums, with TSO/GSO/GRO or UDP
// segmentation they exceed the MTU, and neither survives being re-sent
// from an AF_PACKET socket.
var offloadsOff = []string{"tx", "rx", "tso", "gso", "gro", "tx-udp-segmentation"}

// ...as `ethtool -k` names them.
var offloadNames = []string{"tx-checksumming", "rx-checksumming", "tcp-segmentation-offload",
	"generic-segmentation-offload", "generic-receive-offload", "tx-udp-segmentation"}

type topology struct {
	srv, mid, home netHost
	mu             sync.Mutex
	made           []string // namespaces to remove
}

// runCmd runs a short command and returns its error with its output.
func runCmd(argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		err = errors.New("took more than 30s")
	}
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// newTopology makes the namespaces and links; on error it removes what it made.
func newTopology() (_ *topology, err error) {
	prefix := fmt.Sprintf("%s%d-", nsPrefix, os.Getpid())
	t := &topology{srv: netHost{prefix + "srv"}, mid: netHost{prefix + "mid"}, home: netHost{prefix + "home"}}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	hosts := []netHost{t.srv, t.mid, t.home}
	for _, h := range hosts {
		if _, err := runCmd("ip", "netns", "add", h.ns); err != nil {
			return nil, err
		}
		t.mu.Lock()
		t.made = append(t.made, h.ns)
		t.mu.Unlock()
		if _, err := runCmd("ip", "-n", h.ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
		// Before the veths exist, so that they never get an IPv6 address.
		if _, err := runCmd("ip", "netns", "exec", h.ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			return nil, err
		}
	}
	for _, c := range []struct {
		host     netHost
		midDev   string
		ip, peer string
	}{{t.srv, midSrvDev, wanSrvIP, wanHomeIP}, {t.home, midHomeDev, wanHomeIP, wanSrvIP}} {
		if _, err := runCmd("ip", "-n", t.mid.ns, "link", "add", c.midDev, "type", "veth", "peer", "name", hostDev, "netns", c.host.ns); err != nil {
			return nil, err
		}
		for _, dev := range []struct {
			h   netHost
			dev string
		}{{t.mid, c.midDev}, {c.host, hostDev}} {
			if err := offloadOff(dev.h, dev.dev); err != nil {
				return nil, err
			}
		}
		for _, argv := range [][]string{
			{"ip", "-n", t.mid.ns, "link", "set", c.midDev, "promisc", "on", "up"},
			{"ip", "-n", c.host.ns, "addr", "add", c.ip + "/32", "dev", hostDev},
			{"ip", "-n", c.host.ns, "link", "set", hostDev, "up"},
			{"ip", "-n", c.host.ns, "route", "add", c.peer + "/32", "dev", hostDev, "src", c.ip},
			// BBR, as the VPS, and no cached metrics: every
			// connection starts from scratch, whatever ran before it.
			{"ip", "netns", "exec", c.host.ns, "sysctl", "-q", "-w",
				"net.ipv4.tcp_congestion_control=bbr", "net.ipv4.tcp_no_metrics_save=1"},
		} {
			if _, err := runCmd(argv...); err != nil {
				return nil, err
			}
		}
		if out, err := runCmd("ip", "netns", "exec", c.host.ns, "sysctl", "-n", "net.ipv4.tcp_congestion_control"); err != nil {
			return nil, err
		} else if cc := strings.TrimSpace(out); cc != "bbr" {
			return nil, fmt.Errorf("%s: tcp_congestion_control is %q after setting bbr", c.host.ns, cc)
		}
	}
	// Permanent neighbour entries: each host's MAC for the other.
	macs := map[netHost]string{}
	for _, h := range []netHost{t.srv, t.home} {
		if err := h.do(func() error {
			ifi, err := net.InterfaceByName(hostDev)
			if err == nil {
				macs[h] = ifi.HardwareAddr.String()
			}
			return err
		}); err != nil {
			return nil, fmt.Errorf("%s: %w", h.ns, err)
		}
	}
	for _, c := range []struct {
		h       netHost
		peerIP  string
		peerMAC string
	}{{t.srv, wanHomeIP, macs[t.home]}, {t.home, wanSrvIP, macs[t.srv]}} {
		if _, err := runCmd("ip", "-n", c.h.ns, "neigh", "replace", c.peerIP, "lladdr", c.peerMAC, "dev", hostDev, "nud", "permanent"); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// offloadOff turns the offloads off on dev in h and checks that they are.
func offloadOff(h netHost, dev string) error {
	if _, err := runCmd(append([]string{"ip", "netns", "exec", h.ns, "ethtool", "-K", dev}, offloadArgs()...)...); err != nil {
		return err
	}
	out, err := runCmd("ip", "netns", "exec", h.ns, "ethtool", "-k", dev)
	if err != nil {
		return err
	}
	for _, name := range offloadNames {
		found := false
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				found = true
				if !strings.HasPrefix(strings.TrimSpace(v), "off") {
					return fmt.Errorf("%s %s: %s is %s after ethtool -K", h.ns, dev, name, strings.TrimSpace(v))
				}
			}
		}
		if !found {
			return fmt.Errorf("%s %s: ethtool -k does not show %s", h.ns, dev, name)
		}
	}
	return nil
}

func offloadArgs() []string {
	var a []string
	for _, f := range offloadsOff {
		a = append(a, f, "off")
	}
	return a
}

// close removes the namespaces (which removes the veths); it may be called
// again, and from a signal handler while the bench is still running.
func (t *topology) close() {
	t.mu.Lock()
	made := t.made
	t.made = nil
	t.mu.Unlock()
	for _, ns := range made {
		if _, err := runCmd("ip", "netns", "del", ns); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}
}

// removeStale removes namespaces that an earlier WAN run left behind when
// it was killed: those with our prefix whose PID no longer runs. It
// returns the names it removed.
func removeStale() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue // not one of ours
		}
		if syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // its bench still runs (or the PID is someone else's now: leave it)
		}
		if _, err := runCmd("ip", "netns", "del", name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}
