package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The UDP test ("-tests udp"): datagrams through a UDP tunnel against
// direct loopback UDP, to an in-process echo service, at fixed offered
// loads on an absolute schedule, with loss and round trips counted:
//
//   - -pings round trips of 64 bytes, one at a time on one session (as the
//     TCP latency test);
//   - 2,000 datagrams/s of 256 bytes over 16 sessions: the round trip of
//     a lightly loaded tunnel;
//   - 10,000 datagrams/s of 256 bytes over 16 sessions: delivered rate,
//     loss, p50/p99 round trip, and CPU per datagram;
//   - 40,000 datagrams/s offered (more than the tunnel delivers on the
//     two shared cores this was built on): its ceiling, and the loss there;
//   - 5,000 datagrams/s of 1,200 bytes (one tunnel packet) and of 1,452
//     bytes (what a WireGuard tunnel inside ours sends: two fragments in
//     ours), for what fragmentation costs;
//   - then idle sessions (udpIdleSessions) on fresh processes, for the
//     memory each costs the server and the client.
//
// Each load runs for -rate-dur. The stock path has no UDP.
const (
	udpSessions     = 16
	udpLightRate    = 2000
	udpFixedRate    = 10000
	udpMaxRate      = 40000
	udpFragRate     = 5000
	udpSmall        = 256
	udpUnfragmented = 1200
	udpWireGuard    = 1452
	udpIdleSessions = 5000
	udpMaxBurst     = 64 // credit a late sender may catch up with at once
	udpSettle       = 500 * time.Millisecond
)

// Metric keys of the UDP test.
const (
	mUDPPP50   = "udp-pp-p50"
	mUDPPP99   = "udp-pp-p99"
	mUDPLightL = "udp-light-loss"
	mUDPLight5 = "udp-light-p50"
	mUDPLight9 = "udp-light-p99"
	mUDPRate   = "udp-rate"
	mUDPLoss   = "udp-loss"
	mUDPP50    = "udp-p50"
	mUDPP99    = "udp-p99"
	mUDPCPU    = "udp-cpu"
	mUDPMax    = "udp-max"
	mUDPMaxL   = "udp-max-loss"
	mUDPCPU12  = "udp-cpu-1200"
	mUDPCPU14  = "udp-cpu-1452"
	mUDPLoss12 = "udp-loss-1200"
	mUDPLoss14 = "udp-loss-1452"
	mUDPIdleS  = "udp-idle-server"
	mUDPIdleC  = "udp-idle-client"
)

// udpBench is the UDP test's state: the echo service, and each threshold
// instance's UDP tunnel.
type udpBench struct {
	echo    *udpEcho
	targets map[*instance]string
	failed  error
}

// udpEcho answers every datagram with itself, on the TCP backend's port
// number, so the client's one service name ("bench") serves both.
type udpEcho struct {
	pc *net.UDPConn
	wg sync.WaitGroup
}

func startUDPEcho(addr string) (*udpEcho, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("UDP echo on the backend's port: %w", err)
	}
	pc.SetReadBuffer(8 << 20)
	pc.SetWriteBuffer(8 << 20)
	e := &udpEcho{pc: pc}
	for range 2 {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			buf := make([]byte, 1<<16)
			for {
				n, from, err := pc.ReadFromUDPAddrPort(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				pc.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	return e, nil
}

func (e *udpEcho) close() {
	e.pc.Close()
	e.wg.Wait()
}

// udpTest runs the UDP loads through one path.
func (b *bench) udpTest(in *instance) (string, error) {
	// A UDP tunnel is set up through threshold's management API: the
	// threshold path and an earlier threshold build (-before). Other paths
	// (stock, peers such as frp) are not measured: sending to the echo
	// service directly would report direct loopback under their name.
	if in.path != "threshold" && in.path != "before" && in.path != "direct" {
		return "no UDP on this path", nil
	}
	u := &b.udp
	if u.failed != nil {
		return "", u.failed
	}
	if u.echo == nil {
		if u.echo, u.failed = startUDPEcho(b.backend.addr()); u.failed != nil {
			return "", u.failed
		}
		u.targets = map[*instance]string{}
	}
	target := u.echo.pc.LocalAddr().String()
	if in.path != "direct" {
		t, err := u.tunnel(in)
		if err != nil && in.path == "before" {
			// An earlier build may have no UDP tunnels.
			return fmt.Sprintf("no UDP tunnel on this build (%v)", err), nil
		}
		if err != nil {
			return "", err
		}
		target = t
	}
	p := in.path
	dur := b.opts.rateDur
	var summary []string
	pp, err := udpPingPong(target, b.opts.pings, 30*time.Second)
	if err != nil {
		return "", err
	}
	b.res.add(mUDPPP50, p, pp.p50)
	b.res.add(mUDPPP99, p, pp.p99)
	summary = append(summary, fmt.Sprintf("ping-pong p50 %.0f µs, p99 %.0f µs", pp.p50, pp.p99))
	cpuPerDatagram := func(r udpResult, cpu float64) float64 {
		if r.recv == 0 {
			return 0
		}
		return cpu / float64(r.sent) * 1e6
	}

	r, _, err := udpRun(in, target, udpLightRate, udpSmall, dur)
	if err != nil {
		return "", err
	}
	b.res.add(mUDPLightL, p, 100*r.loss())
	b.res.add(mUDPLight5, p, r.p50)
	b.res.add(mUDPLight9, p, r.p99)
	summary = append(summary, fmt.Sprintf("%d/s: p50 %.0f µs, p99 %.0f µs", udpLightRate, r.p50, r.p99))

	r, cpu, err := udpRun(in, target, udpFixedRate, udpSmall, dur)
	if err != nil {
		return "", err
	}
	b.res.add(mUDPRate, p, r.delivered())
	b.res.add(mUDPLoss, p, 100*r.loss())
	b.res.add(mUDPP50, p, r.p50)
	b.res.add(mUDPP99, p, r.p99)
	if len(in.procs) > 0 {
		b.res.add(mUDPCPU, p, cpuPerDatagram(r, cpu))
	}
	summary = append(summary, fmt.Sprintf("%d/s offered: %.0f/s, loss %.3f%%, p50 %.0f µs", udpFixedRate, r.delivered(), 100*r.loss(), r.p50))

	for _, c := range []struct {
		size       int
		cpu, lossM string
	}{{udpUnfragmented, mUDPCPU12, mUDPLoss12}, {udpWireGuard, mUDPCPU14, mUDPLoss14}} {
		r, cpu, err := udpRun(in, target, udpFragRate, c.size, dur)
		if err != nil {
			return "", err
		}
		b.res.add(c.lossM, p, 100*r.loss())
		if len(in.procs) > 0 {
			b.res.add(c.cpu, p, cpuPerDatagram(r, cpu))
			summary = append(summary, fmt.Sprintf("%d B: %.1f µs CPU each, loss %.3f%%", c.size, cpuPerDatagram(r, cpu), 100*r.loss()))
		}
	}

	// The overload last: the queues it fills would distort what follows.
	r, _, err = udpRun(in, target, udpMaxRate, udpSmall, dur)
	if err != nil {
		return "", err
	}
	b.res.add(mUDPMax, p, r.delivered())
	b.res.add(mUDPMaxL, p, 100*r.loss())
	summary = append(summary, fmt.Sprintf("%d/s offered: %.0f/s, loss %.1f%%", udpMaxRate, r.delivered(), 100*r.loss()))

	if in.path == "threshold" {
		// On fresh processes: memory a load freed is reused, not returned.
		fresh, err := b.startPath("threshold")
		if err != nil {
			return "", err
		}
		defer b.stopPath(fresh)
		freshTarget, err := u.tunnel(fresh)
		if err != nil {
			return "", err
		}
		defer delete(u.targets, fresh)
		srv, cli, err := u.idleCost(fresh, freshTarget)
		if err != nil {
			return "", err
		}
		b.res.add(mUDPIdleS, p, srv)
		b.res.add(mUDPIdleC, p, cli)
		summary = append(summary, fmt.Sprintf("idle session: server %.2f KB, client %.2f KB", srv, cli))
	}
	return strings.Join(summary, "; "), nil
}

// tunnel adds a UDP tunnel to a threshold instance's list (once), to the
// service "bench", and returns its public address.
func (u *udpBench) tunnel(in *instance) (string, error) {
	if t, ok := u.targets[in]; ok {
		return t, nil
	}
	port, err := freePort("udp")
	if err != nil {
		return "", err
	}
	if err := u.putUDP(in, port); err != nil {
		return "", err
	}
	t := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitFor(15*time.Second, "an echo through the UDP tunnel", func() error {
		c, err := net.Dial("udp", t)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		_, err = c.Read(buf)
		return err
	}); err != nil {
		return "", err
	}
	u.targets[in] = t
	return t, nil
}

// putUDP puts the instance's tunnels back with a UDP tunnel on port (none
// if port is 0), leaving its TCP tunnels as they are.
func (u *udpBench) putUDP(in *instance, port int) error {
	body, err := httpDo(http.DefaultClient, "GET", in.api+"/tunnels", nil) // the UDP load runs on loopback
	if err != nil {
		return err
	}
	var ts []map[string]any
	if err := json.Unmarshal(body, &ts); err != nil {
		return err
	}
	keep := ts[:0]
	for _, t := range ts {
		delete(t, "ActiveClientId")
		delete(t, "ActiveSessions")
		if t["Protocol"] != "udp" {
			keep = append(keep, t)
		}
	}
	if port != 0 {
		keep = append(keep, map[string]any{"Protocol": "udp", "ListenAddress": "127.0.0.1", "ListenPort": port, "BackEndService": "bench", "ClientId": "bench"})
	}
	data, err := json.Marshal(keep)
	if err != nil {
		return err
	}
	_, err = httpDo(http.DefaultClient, "PUT", in.api+"/tunnels", data)
	return err
}

// udpResult is one load's outcome.
type udpResult struct {
	sent, recv, reordered int
	elapsed               time.Duration
	p50, p99              float64 // round trip, µs
}

func (r udpResult) delivered() float64 { return float64(r.recv) / r.elapsed.Seconds() }

func (r udpResult) loss() float64 {
	if r.sent == 0 {
		return 0
	}
	return float64(r.sent-r.recv) / float64(r.sent)
}

// udpRun offers rate datagrams/s of size bytes over udpSessions sessions
// for dur, and reports what came back and the CPU the instance used.
func udpRun(in *instance, target string, rate, size int, dur time.Duration) (udpResult, float64, error) {
	time.Sleep(udpSettle) // the previous load's queues drain
	cpu0, cpuErr := totalCPU(in.pids())
	r, err := udpLoad(target, udpSessions, rate, size, dur)
	if err != nil {
		return r, 0, err
	}
	var cpu float64
	if len(in.procs) > 0 && cpuErr == nil {
		if cpu1, err := totalCPU(in.pids()); err == nil {
			cpu = cpu1 - cpu0
		}
	}
	return r, cpu, nil
}

// udpLoad is the load generator: per session a connected socket, a sender
// on an absolute schedule and a receiver that counts the echoes, each
// datagram carrying its sequence number and send time.
func udpLoad(target string, sessions, rate, size int, dur time.Duration) (udpResult, error) {
	size = max(size, 16)
	conns := make([]*net.UDPConn, sessions)
	for i := range conns {
		c, err := net.Dial("udp", target)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return udpResult{}, err
		}
		conns[i] = c.(*net.UDPConn)
		conns[i].SetReadBuffer(4 << 20)
		conns[i].SetWriteBuffer(4 << 20)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	perSession := float64(rate) / float64(sessions)
	start := time.Now()
	end := start.Add(dur)
	var sent, recv, reordered atomic.Int64
	var mu sync.Mutex
	var rtts []float64
	var lastRecv atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			n := 0
			for {
				now := time.Now()
				if !now.Before(end) {
					return
				}
				due := int(now.Sub(start).Seconds()*perSession) - n
				for range min(due, udpMaxBurst) {
					binary.BigEndian.PutUint64(buf, uint64(n))
					binary.BigEndian.PutUint64(buf[8:], uint64(time.Since(start)))
					if _, err := c.Write(buf); err == nil {
						sent.Add(1)
					}
					n++
				}
				if due > udpMaxBurst {
					n += due - udpMaxBurst // credit beyond the burst is forgone, not sent late
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<16)
			last := -1
			local := make([]float64, 0, 1024)
			defer func() {
				mu.Lock()
				rtts = append(rtts, local...)
				mu.Unlock()
			}()
			for {
				c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				n, err := c.Read(buf)
				if err != nil {
					if time.Now().After(end) {
						return
					}
					continue
				}
				if n < 16 {
					continue
				}
				seq := int(binary.BigEndian.Uint64(buf))
				at := time.Duration(binary.BigEndian.Uint64(buf[8:]))
				now := time.Since(start)
				if seq <= last {
					reordered.Add(1)
				}
				last = seq
				recv.Add(1)
				lastRecv.Store(int64(now))
				if len(local) < 200000 {
					local = append(local, float64(now-at)/1e3)
				}
			}
		}()
	}
	wg.Wait()
	r := udpResult{sent: int(sent.Load()), recv: int(recv.Load()), reordered: int(reordered.Load()), elapsed: dur}
	slices.Sort(rtts)
	if len(rtts) > 0 {
		r.p50 = rtts[len(rtts)/2]
		r.p99 = rtts[len(rtts)*99/100]
	}
	return r, nil
}

// idleCost opens udpIdleSessions sessions (one datagram each, answered)
// on an instance that has carried nothing else and reads what they add to
// each process's RSS, in KB per session; then it closes them by taking
// the tunnel out and back in.
func (u *udpBench) idleCost(in *instance, target string) (server, client float64, err error) {
	if len(in.procs) != 2 {
		return 0, 0, errors.New("the threshold path needs a server and a client process")
	}
	rss := func() (s, c float64, err error) {
		s1, err1 := statusBytes(in.procs[0].pid(), "VmRSS")
		c1, err2 := statusBytes(in.procs[1].pid(), "VmRSS")
		return float64(s1), float64(c1), errors.Join(err1, err2)
	}
	time.Sleep(time.Second)
	s0, c0, err := rss()
	if err != nil {
		return 0, 0, err
	}
	conns := make([]*net.UDPConn, 0, udpIdleSessions)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	answered := 0
	buf := make([]byte, 64)
	for i := range udpIdleSessions {
		c, err := net.Dial("udp", target)
		if err != nil {
			return 0, 0, fmt.Errorf("idle session %d: %w", i, err)
		}
		conns = append(conns, c.(*net.UDPConn))
		for try := 0; try < 3; try++ {
			c.Write([]byte("idle session"))
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := c.Read(buf); err == nil {
				answered++
				break
			}
		}
	}
	if answered < udpIdleSessions {
		return 0, 0, fmt.Errorf("only %d of %d idle sessions were answered", answered, udpIdleSessions)
	}
	time.Sleep(2 * time.Second)
	s1, c1, err := rss()
	if err != nil {
		return 0, 0, err
	}
	// Close them all: out with the UDP tunnel, and in again.
	port := netip.MustParseAddrPort(target).Port()
	if err := u.putUDP(in, 0); err != nil {
		return 0, 0, err
	}
	if err := u.putUDP(in, int(port)); err != nil {
		return 0, 0, err
	}
	return (s1 - s0) / udpIdleSessions / 1e3, (c1 - c0) / udpIdleSessions / 1e3, nil
}

// udpTable is the report's UDP section, if the test ran.
func (r *results) udpTable() string {
	if len(r.vals[mUDPRate]) == 0 {
		return ""
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("\n### UDP\n\n")
	w("%d sessions, each a connected socket; each load runs for -rate-dur on an absolute schedule; loss = datagrams not echoed back of those sent; round trip measured per datagram. Fragmentation: a 1,452-byte datagram is 2 fragments in the tunnel (MTU 1420), a 1,200-byte one is 1 packet. Idle sessions: %d opened with one answered datagram each on fresh processes, RSS growth per session per process.\n\n", udpSessions, udpIdleSessions)
	w("| metric | threshold | direct | threshold/direct |\n|---|---|---|---|\n")
	for _, row := range []row{
		{mUDPPP50, "64-byte round trip, one at a time on one session, p50 (µs)"},
		{mUDPPP99, "64-byte round trip, one at a time on one session, p99 (µs)"},
		{mUDPLightL, fmt.Sprintf("loss at %d datagrams/s offered, %d B (%%)", udpLightRate, udpSmall)},
		{mUDPLight5, "round trip at that load, p50 (µs)"},
		{mUDPLight9, "round trip at that load, p99 (µs)"},
		{mUDPRate, fmt.Sprintf("delivered at %d datagrams/s offered, %d B (datagrams/s)", udpFixedRate, udpSmall)},
		{mUDPLoss, fmt.Sprintf("loss at %d datagrams/s offered (%%)", udpFixedRate)},
		{mUDPP50, "round trip at that load, p50 (µs)"},
		{mUDPP99, "round trip at that load, p99 (µs)"},
		{mUDPCPU, "CPU server+client per datagram echoed at that load (µs)"},
		{mUDPMax, fmt.Sprintf("delivered at %d datagrams/s offered (datagrams/s)", udpMaxRate)},
		{mUDPMaxL, fmt.Sprintf("loss at %d datagrams/s offered (%%)", udpMaxRate)},
		{mUDPCPU12, fmt.Sprintf("CPU per datagram, %d B at %d/s, unfragmented (µs)", udpUnfragmented, udpFragRate)},
		{mUDPCPU14, fmt.Sprintf("CPU per datagram, %d B at %d/s, 2 fragments (µs)", udpWireGuard, udpFragRate)},
		{mUDPLoss12, fmt.Sprintf("loss, %d B at %d/s (%%)", udpUnfragmented, udpFragRate)},
		{mUDPLoss14, fmt.Sprintf("loss, %d B at %d/s (%%)", udpWireGuard, udpFragRate)},
		{mUDPIdleS, "server RSS per idle UDP session (KB)"},
		{mUDPIdleC, "client RSS per idle UDP session (KB)"},
	} {
		if len(r.vals[row.metric]) == 0 {
			continue
		}
		w("| %s | %s | %s | %s |\n", row.label, r.cell(row.metric, "threshold"), r.cell(row.metric, "direct"), r.ratio(row.metric, "threshold", "direct"))
	}
	if c12, ok1 := r.median(mUDPCPU12, "threshold"); ok1 {
		if c14, ok2 := r.median(mUDPCPU14, "threshold"); ok2 && c12 > 0 {
			w("\nFragmentation cost: a 1,452-byte datagram takes %.2fx the CPU of a 1,200-byte one through the tunnel (%.1f vs %.1f µs).\n", c14/c12, c14, c12)
		}
	}
	return b.String()
}

// udpPingPong times count round trips of 64 bytes, one at a time.
func udpPingPong(target string, count int, maxDur time.Duration) (latencyResult, error) {
	c, err := net.Dial("udp", target)
	if err != nil {
		return latencyResult{}, err
	}
	defer c.Close()
	msg := make([]byte, 64)
	resp := make([]byte, 128)
	const warmup = 50
	var samples []float64
	lost := 0
	end := time.Now().Add(maxDur)
	for i := 0; i < warmup+count && time.Now().Before(end); i++ {
		binary.BigEndian.PutUint64(msg, uint64(i))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return latencyResult{}, err
		}
		for {
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(resp)
			if err != nil {
				lost++
				break
			}
			if n == len(msg) && binary.BigEndian.Uint64(resp) == uint64(i) {
				if i >= warmup {
					samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
				}
				break
			}
		}
	}
	if len(samples) == 0 || lost > count/100 {
		return latencyResult{}, fmt.Errorf("%d of %d round trips lost", lost, warmup+count)
	}
	slices.Sort(samples)
	return latencyResult{p50: samples[len(samples)/2], p99: samples[(len(samples)-1)*99/100], n: len(samples)}, nil
}
