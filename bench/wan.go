package main

// The WAN benchmark (go run ./bench -wan): the same user-facing loads as
// the loopback benchmark, but across an emulated home-to-VPS link between
// network namespaces (topology.go, emulator.go), through each path:
//
//   - direct: kernel TCP (BBR) from the server host straight to the
//     backend on the home host, across the link: the reference;
//   - threshold: the internet user on the server host connects to
//     `threshold server`'s public port there; only the WireGuard tunnel to
//     `threshold client` on the home host crosses the link.
//
// The load generator (the "internet user") and the backend run in the
// bench process, on sockets made in the server and home namespaces.

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	allWANPaths = []string{"direct", "threshold"}
	allWANTests = []string{"up", "down", "up4", "down4", "rtt", "fair"}
	// The scenarios: 30 ms at 0%, 0.1% and 1% loss, 100 ms at 0.1%.
	defaultScenarios = "30ms/0%,30ms/0.1%,30ms/1%,100ms/0.1%"
)

// scenario is one setting of the link.
type scenario struct {
	rtt  time.Duration
	loss float64 // per frame, each direction
	spec string  // as given, e.g. "30ms/0.1%"
}

func (s scenario) name(rate float64) string {
	return fmt.Sprintf("%s RTT, %s Mbit/s, %s%% loss", fmtDuration(s.rtt), num(rate/1e6), strconv.FormatFloat(s.loss*100, 'f', -1, 64))
}

func fmtDuration(d time.Duration) string {
	if d%time.Millisecond == 0 {
		return fmt.Sprintf("%d ms", d/time.Millisecond)
	}
	return d.String()
}

// parseScenarios parses "RTT/LOSS%,..." such as "30ms/0.1%".
func parseScenarios(s string) ([]scenario, error) {
	var out []scenario
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		r, l, ok := strings.Cut(f, "/")
		if !ok || !strings.HasSuffix(l, "%") {
			return nil, fmt.Errorf("%q: want RTT/LOSS%%, e.g. 30ms/0.1%%", f)
		}
		rtt, err := time.ParseDuration(r)
		if err != nil || rtt < 0 || rtt > 2*time.Second {
			return nil, fmt.Errorf("%q: RTT must be a duration within 0-2s", f)
		}
		loss, err := strconv.ParseFloat(strings.TrimSuffix(l, "%"), 64)
		if err != nil || !(loss >= 0 && loss <= 50) {
			return nil, fmt.Errorf("%q: loss must be a percentage within 0-50", f)
		}
		sc := scenario{rtt: rtt, loss: loss / 100, spec: f}
		for _, o := range out {
			if o.rtt == sc.rtt && o.loss == sc.loss {
				return nil, fmt.Errorf("%q given twice", f)
			}
		}
		out = append(out, sc)
	}
	if len(out) == 0 {
		return nil, errors.New("no scenario")
	}
	return out, nil
}

// wanOptions are the options of -wan beyond the shared ones (runs, bulk,
// streams, pings, paths, tests, bin, keep, out, max-bytes).
type wanOptions struct {
	on        bool
	scenarios []scenario
	rate      float64       // bit/s
	queue     time.Duration // the bottleneck's queue, as time at the rate
	warm      time.Duration // how long the bulk runs before the loaded round trips start
	seed      uint64
	hold      time.Duration

	// flag values before parsing
	scenarioSpec string
	rateMbit     float64
}

func addWANFlags(fs *flag.FlagSet) *wanOptions {
	w := &wanOptions{}
	fs.BoolVar(&w.on, "wan", false, "run the WAN benchmark instead: an emulated home-to-VPS link between network namespaces (needs root, ip, ethtool); its defaults are -runs 3 -bulk 8s -streams 4, -quick makes them -runs 1 -bulk 2s")
	fs.StringVar(&w.scenarioSpec, "scenarios", defaultScenarios, "with -wan: the link settings to measure, RTT/LOSS% each (loss per frame in each direction)")
	fs.Float64Var(&w.rateMbit, "link-rate", 100, "with -wan: the link's rate cap each way, Mbit/s of Ethernet frames")
	fs.DurationVar(&w.queue, "queue", 30*time.Millisecond, "with -wan: the bottleneck's queue each way, as time at the link rate (30ms at 100 Mbit/s = 375 kB)")
	fs.Uint64Var(&w.seed, "seed", 1, "with -wan: seed of the random loss")
	fs.DurationVar(&w.hold, "hold", 0, "with -wan: set up the first scenario's link and paths, print how to reach them, wait this long (or until ^C) and exit without measuring: for checks by hand")
	return w
}

// unused rejects -wan's own flags without -wan.
func (w *wanOptions) unused(set map[string]bool) error {
	for _, f := range []string{"scenarios", "link-rate", "queue", "seed", "hold"} {
		if set[f] {
			return fmt.Errorf("-%s applies only with -wan", f)
		}
	}
	return nil
}

// parseWAN completes o for -wan, with its own defaults where a flag was
// not given.
func parseWAN(o *options, w *wanOptions, set map[string]bool, paths, tests string) error {
	for _, f := range []string{"rate-dur", "idle", "workers", "max-conns", "perf"} {
		if set[f] {
			return fmt.Errorf("-%s does not apply with -wan", f)
		}
	}
	def := func(name string, apply func()) {
		if !set[name] {
			apply()
		}
	}
	def("runs", func() { o.runs = 3 })
	def("bulk", func() { o.bulk = 8 * time.Second })
	def("streams", func() { o.streams = 4 })
	if o.quick {
		def("runs", func() { o.runs = 1 })
		def("bulk", func() { o.bulk = 2 * time.Second })
	}
	def("paths", func() {
		paths = strings.Join(allWANPaths, ",")
		if o.beforeBin != "" {
			paths += ",before"
		}
	})
	def("tests", func() { tests = strings.Join(allWANTests, ",") })
	if o.runs < 1 || o.runs > 100 {
		return fmt.Errorf("-runs %d out of range 1-100", o.runs)
	}
	if o.bulk < time.Second || o.bulk > 5*time.Minute {
		return errors.New("-bulk must be within [1s, 5m] with -wan")
	}
	if o.pings < 1 || o.pings > 1_000_000 || o.streams < 1 || o.streams > 64 {
		return errors.New("-pings or -streams out of range (streams: 1-64 with -wan)")
	}
	var err error
	if w.scenarios, err = parseScenarios(w.scenarioSpec); err != nil {
		return fmt.Errorf("-scenarios: %w", err)
	}
	if !(w.rateMbit >= 1 && w.rateMbit <= 10000) {
		return fmt.Errorf("-link-rate %g out of range 1-10000 Mbit/s", w.rateMbit)
	}
	w.rate = w.rateMbit * 1e6
	if w.queue < time.Millisecond || w.queue > 2*time.Second {
		return fmt.Errorf("-queue %s out of range 1ms-2s", w.queue)
	}
	if w.hold < 0 || w.hold > time.Hour {
		return fmt.Errorf("-hold %s out of range 0-1h", w.hold)
	}
	w.warm = time.Second
	known := slices.Clone(allWANPaths)
	if o.beforeBin != "" {
		// The build to compare against, side by side in the same run.
		known = append(known, "before")
	}
	if o.paths, err = pickList(paths, known); err != nil {
		return fmt.Errorf("-paths: %w", err)
	}
	if !slices.Contains(o.paths, "direct") {
		// Every figure is read against direct, and it is the link check.
		o.paths = append([]string{"direct"}, o.paths...)
	}
	if o.tests, err = pickList(tests, allWANTests); err != nil {
		return fmt.Errorf("-tests: %w", err)
	}
	o.settle = 300 * time.Millisecond
	o.wan = w
	o.commandLine = "go run ./bench " + strings.Join(os.Args[1:], " ")
	return nil
}

// tunnelPath starts a tunnel in front of a backend: its server on the
// server host, its client on the home host (backendAddr is as the home
// host sees it); the instance's addr is where the internet user on the
// server host connects. thresholdPath is one; a peer tunnel given by its
// binaries (frp, say) would be another, added to wanBench.tunnels.
type tunnelPath interface {
	start(backendAddr string) (*instance, error)
}

type wanBench struct {
	b       *bench // the build, the temporary directory, progress
	o       *options
	w       *wanOptions
	topo    *topology
	emu     *emulator
	backend *backend
	port    int           // the backend's port on the home host
	ids     atomic.Uint64 // of counted uploads
	tunnels map[string]tunnelPath
	inst    map[string]*instance
	res     map[string]*results   // by scenario spec
	link    map[string]*linkTotal // by scenario spec
	notes   []string
	started time.Time
	clean   sync.Once
	mu      sync.Mutex // guards emu and inst against cleanup from the signal handler
}

// linkTotal sums the emulator's counters over a scenario's runs.
type linkTotal struct {
	runs       int
	realtime   int // runs whose emulator had real-time priority
	gcs        uint32
	atob, btoa dirStats
	cpu        float64
	elapsed    time.Duration
}

func runWAN(o *options) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: -wan needs root: it makes network namespaces, veths and AF_PACKET sockets (run it as root, e.g. sudo -E go run ./bench -wan)")
		return 1
	}
	for _, tool := range []string{"ip", "ethtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -wan needs %s in PATH (Debian: apt-get install %s)\n", tool, map[string]string{"ip": "iproute2", "ethtool": "ethtool"}[tool])
			return 1
		}
	}
	w := &wanBench{
		b: &bench{opts: o, res: newResults()}, o: o, w: o.wan,
		tunnels: map[string]tunnelPath{}, inst: map[string]*instance{},
		res: map[string]*results{}, link: map[string]*linkTotal{},
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	signal.Ignore(syscall.SIGPIPE)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "bench: interrupted; removing the namespaces")
		w.cleanup()
		os.Exit(130)
	}()
	err := w.run()
	w.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

func (w *wanBench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(w.started).Seconds(), fmt.Sprintf(format, args...))
}

func (w *wanBench) note(format string, args ...any) {
	w.notes = append(w.notes, fmt.Sprintf(format, args...))
}

// cleanup stops everything and removes the namespaces; safe to call twice
// and from the signal handler.
func (w *wanBench) cleanup() {
	w.clean.Do(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, in := range w.inst {
			in.stop()
		}
		if w.emu != nil {
			w.emu.kill()
		}
		if w.backend != nil {
			w.backend.close()
		}
		if w.topo != nil {
			w.topo.close()
		}
		w.b.cleanup()
	})
}

func (w *wanBench) run() error {
	w.started = time.Now()
	w.b.started = w.started
	o := w.o
	stale, err := removeStale()
	if len(stale) > 0 {
		w.progress("removed namespaces left by an earlier run: %s", strings.Join(stale, " "))
	}
	if err != nil {
		return fmt.Errorf("removing stale namespaces: %w", err)
	}
	w.b.res.machine = describeMachine()
	w.b.res.pressureStart = cpuPressure()
	if w.b.dir, err = os.MkdirTemp("", "threshold-wan-*"); err != nil {
		return err
	}
	if err := w.b.build(); err != nil {
		return err
	}
	if w.topo, err = newTopology(); err != nil {
		return err
	}
	w.progress("namespaces %s, %s, %s made", w.topo.srv.ns, w.topo.mid.ns, w.topo.home.ns)
	ln, err := w.topo.home.listen("tcp", "0.0.0.0:0")
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	w.backend = newBackend(ln)
	w.port = ln.Addr().(*net.TCPAddr).Port
	if w.b.threshold != nil {
		t := w.b.threshold
		t.server, t.home, t.serverIP = w.topo.srv, w.topo.home, wanSrvIP
		w.tunnels["threshold"] = t
	}
	if w.b.before != nil {
		t := w.b.before
		t.server, t.home, t.serverIP = w.topo.srv, w.topo.home, wanSrvIP
		w.tunnels["before"] = t
	}

	if w.w.hold > 0 {
		return w.holdForChecks()
	}
	for run := range o.runs {
		for si, sc := range w.w.scenarios {
			if err := w.scenarioRun(run, si, sc); err != nil {
				return err
			}
		}
	}
	w.b.res.elapsed = time.Since(w.started)
	w.b.res.pressureEnd = cpuPressure()
	return writeReport(w.render(), o.out, w.progress)
}

func (w *wanBench) params(sc scenario) linkParams {
	return linkParams{Rate: w.w.rate, Delay: sc.rtt / 2, Loss: sc.loss, Queue: w.w.queue}
}

// startLink (re)starts the emulator with sc's settings and, the first
// time, the tunnels (whose clients need the link to reach their server).
func (w *wanBench) startLink(run, si int, sc scenario) error {
	seed := w.w.seed*1_000_003 + uint64(run)*1009 + uint64(si)*2
	logPath := filepath.Join(w.b.dir, fmt.Sprintf("emulator-%d-%d.log", run+1, si+1))
	emu, err := startEmulator(w.topo.mid.ns, midSrvDev, midHomeDev, w.params(sc), seed, logPath)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.emu = emu
	w.mu.Unlock()
	direct := fmt.Sprintf("%s:%d", wanHomeIP, w.port)
	if err := ready(w.topo.srv.dial, direct, 15*time.Second); err != nil {
		return fmt.Errorf("the emulated link does not carry TCP: %w", err)
	}
	if _, ok := w.inst["direct"]; !ok {
		w.mu.Lock()
		w.inst["direct"] = &instance{path: "direct", addr: direct}
		w.mu.Unlock()
	}
	for _, p := range w.o.paths {
		if p == "direct" || w.inst[p] != nil {
			continue
		}
		w.progress("starting the %s path", p)
		in, err := w.tunnels[p].start(fmt.Sprintf("127.0.0.1:%d", w.port))
		if err != nil {
			return fmt.Errorf("starting the %s path: %w", p, err)
		}
		w.mu.Lock()
		w.inst[p] = in
		w.mu.Unlock()
		w.progress("%s path up: the user connects to %s in %s (pids %v)", p, in.addr, w.topo.srv.ns, in.pids())
	}
	return nil
}

func (w *wanBench) stopLink(sc scenario, started time.Time) error {
	w.mu.Lock()
	emu := w.emu
	w.emu = nil
	w.mu.Unlock()
	st, err := emu.stop()
	if err != nil {
		return err
	}
	t := w.link[sc.spec]
	if t == nil {
		t = &linkTotal{}
		w.link[sc.spec] = t
	}
	t.runs++
	if st.Realtime {
		t.realtime++
	}
	t.cpu += st.CPUSeconds
	t.gcs += st.GCs
	t.elapsed += time.Since(started)
	t.atob = addDirStats(t.atob, st.AtoB)
	t.btoa = addDirStats(t.btoa, st.BtoA)
	return nil
}

func addDirStats(a, b dirStats) dirStats {
	a.Frames += b.Frames
	a.Bytes += b.Bytes
	a.Delivered += b.Delivered
	a.DelBytes += b.DelBytes
	a.Lost += b.Lost
	a.QueueDrops += b.QueueDrops
	a.Overflow += b.Overflow
	a.Oversize += b.Oversize
	a.SendErrors += b.SendErrors
	a.KernelDrops += b.KernelDrops
	a.LateP50us = max(a.LateP50us, b.LateP50us)
	a.LateP99us = max(a.LateP99us, b.LateP99us)
	a.LateMaxus = max(a.LateMaxus, b.LateMaxus)
	a.MaxBacklogMs = max(a.MaxBacklogMs, b.MaxBacklogMs)
	return a
}

// scenarioRun is one run of every test through every path on one link
// setting; the order of the paths rotates from run to run.
func (w *wanBench) scenarioRun(run, si int, sc scenario) error {
	o := w.o
	started := time.Now()
	if err := w.startLink(run, si, sc); err != nil {
		return err
	}
	res := w.res[sc.spec]
	if res == nil {
		res = newResults()
		w.res[sc.spec] = res
	}
	prev := "the link's start"
	for _, t := range o.tests {
		for _, p := range rotate(o.paths, run) {
			in := w.inst[p]
			if err := errors.Join(in.check(), w.emu.check()); err != nil {
				return fmt.Errorf("%s path died: %w", p, err)
			}
			if took, err := w.quiet(sc); err != nil {
				w.note("run %d, %s: before %s %s: %v", run+1, sc.spec, p, t, err)
			} else if took > 2*time.Second {
				w.note("run %d, %s: the link stayed busy for %.1f s after %s", run+1, sc.spec, took.Seconds(), prev)
			}
			prev = p + " " + t
			summary, err := w.test(t, in, res)
			if err != nil {
				w.note("run %d, %s, %s, %s: %v", run+1, sc.spec, p, t, err)
				w.progress("run %d/%d %-10s %-9s %-5s ERROR %v", run+1, o.runs, sc.spec, p, t, err)
			} else {
				w.progress("run %d/%d %-10s %-9s %-5s %s", run+1, o.runs, sc.spec, p, t, summary)
			}
		}
	}
	return w.stopLink(sc, started)
}

// quiet waits until the link carries (nearly) nothing, so that a test
// never shares it with what the last one left behind: a tunnel may go on
// draining data its user has long given up on. Quiet is fewer than
// quietFrames frames through the server host's veth in quietWindow
// (heartbeats and keepalives are a few a second), for at most quietMax.
func (w *wanBench) quiet(sc scenario) (time.Duration, error) {
	const (
		quietWindow = 300 * time.Millisecond
		quietFrames = 30
		quietMax    = 30 * time.Second
	)
	start := time.Now()
	// At least the time for what is queued and in flight to arrive.
	time.Sleep(w.o.settle + sc.rtt + w.w.queue)
	last, err := w.topo.srv.packets(hostDev)
	if err != nil {
		return 0, err
	}
	for {
		time.Sleep(quietWindow)
		n, err := w.topo.srv.packets(hostDev)
		if err != nil {
			return 0, err
		}
		if n-last < quietFrames {
			return time.Since(start), nil
		}
		if time.Since(start) > quietMax {
			return 0, fmt.Errorf("the link was still busy after %s (%d frames in the last %s)", quietMax, n-last, quietWindow)
		}
		last = n
	}
}

// Metric keys of the WAN results.
const (
	wUp        = "up"
	wDown      = "down"
	wUp4       = "up4"
	wDown4     = "down4"
	wRTTIdle   = "rtt-idle"
	wRTTp50    = "rtt-p50"
	wRTTp99    = "rtt-p99"
	wRTTBulk   = "rtt-bulk"
	wRTTn      = "rtt-n"
	wFairHi    = "fair-hi"
	wFairLo    = "fair-lo"
	wFairRatio = "fair-ratio"
)

func mbit(t transfer) float64 { return float64(t.bytes) * 8 / 1e6 / t.elapsed.Seconds() }

// test runs one test through one path from the server host.
func (w *wanBench) test(test string, in *instance, res *results) (string, error) {
	o := w.o
	p := in.path
	conn := func() (*net.TCPConn, error) { return w.topo.srv.dial(in.addr) }
	// Uploads are counted at the backend as they arrive, over the same
	// window as downloads, rather than waiting for the last byte: a stream
	// that crawls would make the test last minutes.
	up := func(_ int, c *net.TCPConn) (transfer, error) {
		id := w.ids.Add(1)
		ctr := w.backend.counter(id)
		defer w.backend.forget(id)
		return uploadCounted(c, id, ctr.Load, o.bulk)
	}
	down := func(_ int, c *net.TCPConn) (transfer, error) { return downloadOn(c, o.bulk, o.maxBytes) }
	bulk := func(metric string, f func(int, *net.TCPConn) (transfer, error), n int) (string, error) {
		trs, err := together(n, conn, f)
		if err != nil {
			return "", err
		}
		tr := aggregate(trs)
		res.add(metric, p, mbit(tr))
		return fmt.Sprintf("%.1f Mbit/s (%.0f MB in %.1fs)", mbit(tr), float64(tr.bytes)/1e6, tr.elapsed.Seconds()), nil
	}
	switch test {
	case "up":
		return bulk(wUp, up, 1)
	case "down":
		return bulk(wDown, down, 1)
	case "up4":
		return bulk(wUp4, up, o.streams)
	case "down4":
		return bulk(wDown4, down, o.streams)
	case "rtt":
		return w.rttTest(in, res)
	case "fair":
		trs, err := together(2, conn, down)
		if err != nil {
			return "", err
		}
		a, b := mbit(trs[0]), mbit(trs[1])
		lo, hi := min(a, b), max(a, b)
		res.add(wFairHi, p, hi)
		res.add(wFairLo, p, lo)
		if hi > 0 {
			res.add(wFairRatio, p, lo/hi)
		}
		return fmt.Sprintf("%.1f and %.1f Mbit/s (slower/faster %.2f)", a, b, lo/max(hi, 1e-9)), nil
	}
	return "", fmt.Errorf("unknown test %q", test)
}

// rttTest measures 64-byte round trips on an idle path, then on a second
// connection while one bulk download runs: the bulk runs for warm (to
// fill the link and its queue) plus -bulk, the round trips during -bulk.
func (w *wanBench) rttTest(in *instance, res *results) (string, error) {
	o := w.o
	d := w.topo.srv.dial
	idle, err := pingPong(d, in.addr, 2, 20, 20*time.Second)
	if err != nil {
		return "", fmt.Errorf("idle round trips: %w", err)
	}
	type result struct {
		tr  transfer
		err error
	}
	done := make(chan result, 1)
	go func() {
		tr, err := download(d, in.addr, w.w.warm+o.bulk+200*time.Millisecond, o.maxBytes)
		done <- result{tr, err}
	}()
	time.Sleep(w.w.warm)
	loaded, perr := pingPong(d, in.addr, 0, o.pings, o.bulk)
	bulk := <-done
	if err := errors.Join(perr, bulk.err); err != nil {
		return "", err
	}
	p := in.path
	res.add(wRTTIdle, p, idle.p50/1e3)
	res.add(wRTTp50, p, loaded.p50/1e3)
	res.add(wRTTp99, p, loaded.p99/1e3)
	res.add(wRTTn, p, float64(loaded.n))
	res.add(wRTTBulk, p, mbit(bulk.tr))
	return fmt.Sprintf("idle p50 %.1f ms; under a %.1f Mbit/s download p50 %.1f ms, p99 %.1f ms (%d round trips)",
		idle.p50/1e3, mbit(bulk.tr), loaded.p50/1e3, loaded.p99/1e3, loaded.n), nil
}

// holdForChecks sets up the first scenario and waits, for checks by hand.
func (w *wanBench) holdForChecks() error {
	sc := w.w.scenarios[0]
	if err := w.startLink(0, 0, sc); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "\nThe link (%s, queue %s) is up until %s or ^C:\n", sc.name(w.w.rate), w.w.queue, time.Now().Add(w.w.hold).Format("15:04:05"))
	fmt.Fprintf(os.Stderr, "  server host: ip netns exec %s ...   (address %s)\n", w.topo.srv.ns, wanSrvIP)
	fmt.Fprintf(os.Stderr, "  home host:   ip netns exec %s ...   (address %s; the bench's backend on port %d: first byte S sink, D source, E echo)\n", w.topo.home.ns, wanHomeIP, w.port)
	for p, in := range w.inst {
		if p != "direct" {
			fmt.Fprintf(os.Stderr, "  %s: the user connects to %s on the server host\n", p, in.addr)
		}
	}
	started := time.Now()
	time.Sleep(w.w.hold)
	if err := w.stopLink(sc, started); err != nil {
		return err
	}
	t := w.link[sc.spec]
	fmt.Fprintf(os.Stderr, "emulator (real-time priority: %v, garbage collections: %d, %.1f CPU s):\n  %s\n  %s\n",
		t.realtime == t.runs, t.gcs, t.cpu, dirLine("server → home", t.atob), dirLine("home → server", t.btoa))
	return nil
}
