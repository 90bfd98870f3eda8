// Command bench is threshold's reproducible performance benchmark. In one
// run on loopback it measures the same loads through three paths to one
// in-process backend:
//
//   - threshold: a public TCP client -> `threshold server` process ->
//     WireGuard -> `threshold client` process -> backend (the real binary,
//     built once into a temporary directory, configured through its config
//     files and management API as a user would);
//   - direct: loopback TCP straight to the backend (the ceiling);
//   - stock: the same shape built on wireguard-go's stock tun/netstack
//     package (./stock), the naive baseline.
//
// and prints a Markdown report: medians over -runs runs with their min-max
// spread, ratios to the baselines, and the performance targets as PASS/MISS.
//
//	go run ./bench            # the full benchmark (several minutes)
//	go run ./bench -quick     # a smoke run (well under a minute)
//	go run ./bench -out report.md
//
// Every load is bounded in count and time, and all traffic stays on 127.0.0.1.
//
// With -wan (root only) it measures instead across an emulated home-to-VPS
// link between network namespaces it makes and removes: see wan.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thresholdtunnel/threshold/forward"
)

type options struct {
	runs         int
	quick        bool
	out          string
	bulk         time.Duration
	rateDur      time.Duration
	pings        int
	idle         []int
	streams      int
	workers      int
	maxBytes     int64
	maxConns     int64
	paths        []string
	tests        []string
	bin          string
	beforeBin    string
	thresholdEnv []string
	perfDir      string
	settle       time.Duration
	keep         bool
	peers        []peerSpec
	commandLine  string
	wan          *wanOptions // -wan: the emulated WAN benchmark (wan.go)
}

// peerFlags collects repeated -peer flags.
type peerFlags []peerSpec

func (f *peerFlags) String() string { return "" }
func (f *peerFlags) Set(s string) error {
	spec, err := parsePeer(s)
	if err != nil {
		return err
	}
	for _, p := range *f {
		if p.kind == spec.kind {
			return fmt.Errorf("peer %s given twice", spec.kind)
		}
	}
	*f = append(*f, spec)
	return nil
}

var allPaths = []string{"threshold", "direct", "stock"}

// Tests in the order they run; "idle" runs last, on fresh processes.
var allTests = []string{"up", "down", "up8", "down8", "rate", "latency", "udp", "idle"}

func main() {
	if len(os.Args) == 3 && os.Args[1] == holderArg {
		os.Exit(runIdleHolder(os.Args[2]))
	}
	if len(os.Args) >= 2 && os.Args[1] == linkArg {
		os.Exit(runLink(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	o, err := parseOptions(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if o.wan != nil {
		return runWAN(o)
	}
	b := &bench{opts: o, res: newResults()}
	// Children die with us (Pdeathsig); on ^C stop them cleanly first.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	// Output piped into head(1) must not kill the bench before it cleans up.
	signal.Ignore(syscall.SIGPIPE)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "bench: interrupted; stopping")
		b.cleanup()
		os.Exit(130)
	}()
	err = b.run()
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	o := &options{}
	fs.IntVar(&o.runs, "runs", 5, "runs of each test per path; each figure is their median")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: 1 run, short durations, fewer idle connections (explicit flags still win)")
	fs.StringVar(&o.out, "out", "", "also write the report to this file")
	fs.DurationVar(&o.bulk, "bulk", 3*time.Second, "duration of each bulk transfer")
	fs.DurationVar(&o.rateDur, "rate-dur", 3*time.Second, "duration of each short-connection rate test")
	fs.IntVar(&o.pings, "pings", 2000, "round trips per latency test")
	idle := fs.String("idle", "1000,10000", "idle connection counts at which to read RSS, ascending")
	fs.IntVar(&o.streams, "streams", 8, "streams of the aggregate throughput tests")
	fs.IntVar(&o.workers, "workers", 32, "concurrent workers of the short-connection test")
	fs.Int64Var(&o.maxBytes, "max-bytes", 32<<30, "cap on the bytes of one bulk stream")
	fs.Int64Var(&o.maxConns, "max-conns", 200000, "cap on the connections of one short-connection run")
	fs.Func("threshold-env", "set `KEY=VALUE` in the environment of the threshold path's processes only (not -before's); repeatable", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return fmt.Errorf("%q: want KEY=VALUE", s)
		}
		o.thresholdEnv = append(o.thresholdEnv, s)
		return nil
	})
	var peers peerFlags
	fs.Var(&peers, "peer", "also measure a peer tunnel, `NAME=SERVER_BINARY,CLIENT_BINARY` (NAME: frp); repeatable")
	paths := fs.String("paths", "", "paths to measure (default: "+strings.Join(allPaths, ",")+" and every -peer; with -wan: "+strings.Join(allWANPaths, ",")+")")
	tests := fs.String("tests", strings.Join(allTests, ","), "tests to run: "+strings.Join(allTests, ",")+" (with -wan: "+strings.Join(allWANTests, ",")+")")
	fs.StringVar(&o.bin, "bin", "", "use this threshold binary instead of building ./cmd/threshold")
	fs.StringVar(&o.beforeBin, "before", "", "also measure this threshold `BINARY` (say, built from an earlier commit) as the path \"before\", side by side")
	fs.StringVar(&o.perfDir, "perf", "", "record `perf` profiles of the tunnel processes during the first run's tests into this directory (perturbs the figures)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (binaries, configs, logs)")
	wan := addWANFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if wan.on {
		return o, parseWAN(o, wan, set, *paths, *tests)
	}
	if err := wan.unused(set); err != nil {
		return nil, err
	}
	if o.quick {
		if !set["runs"] {
			o.runs = 1
		}
		if !set["bulk"] {
			o.bulk = 500 * time.Millisecond
		}
		if !set["rate-dur"] {
			o.rateDur = 500 * time.Millisecond
		}
		if !set["pings"] {
			o.pings = 300
		}
		if !set["idle"] {
			*idle = "1000"
		}
	}
	o.settle = 300 * time.Millisecond
	if o.runs < 1 || o.runs > 100 {
		return nil, fmt.Errorf("-runs %d out of range 1-100", o.runs)
	}
	if o.bulk <= 0 || o.bulk > 5*time.Minute || o.rateDur <= 0 || o.rateDur > 5*time.Minute {
		return nil, errors.New("-bulk and -rate-dur must be within (0, 5m]")
	}
	if o.pings < 1 || o.pings > 1_000_000 || o.streams < 1 || o.streams > 256 || o.workers < 1 || o.workers > 1024 {
		return nil, errors.New("-pings, -streams or -workers out of range")
	}
	prev := 0
	for _, f := range strings.Split(*idle, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= prev || n > 100_000 {
			return nil, fmt.Errorf("-idle: %q is not an ascending list of counts up to 100000", *idle)
		}
		o.idle = append(o.idle, n)
		prev = n
	}
	o.peers = peers
	known := slices.Clone(allPaths)
	if o.beforeBin != "" {
		known = append(known, "before")
	}
	for _, p := range peers {
		known = append(known, p.kind)
	}
	if *paths == "" {
		*paths = strings.Join(known, ",")
	}
	var err error
	if o.paths, err = pickList(*paths, known); err != nil {
		return nil, fmt.Errorf("-paths: %w", err)
	}
	if o.tests, err = pickList(*tests, allTests); err != nil {
		return nil, fmt.Errorf("-tests: %w", err)
	}
	o.commandLine = "go run ./bench"
	if len(args) > 0 {
		o.commandLine += " " + strings.Join(args, " ")
	}
	return o, nil
}

// pickList parses a comma-separated subset of all, keeping all's order.
func pickList(s string, all []string) ([]string, error) {
	want := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			want[f] = true
		}
	}
	var out []string
	for _, a := range all {
		if want[a] {
			out = append(out, a)
			delete(want, a)
		}
	}
	if len(want) > 0 || len(out) == 0 {
		return nil, fmt.Errorf("%q: choose from %s", s, strings.Join(all, ","))
	}
	return out, nil
}

type bench struct {
	opts      *options
	res       *results
	dir       string
	backend   *backend
	threshold *thresholdPath
	stock     *stockPath
	before    *thresholdPath // -before
	peerRuns  int            // peer instances started, for directory names
	live      []*instance
	started   time.Time
	udp       udpBench // udp.go
}

func (b *bench) has(list []string, x string) bool {
	for _, v := range list {
		if v == x {
			return true
		}
	}
	return false
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) run() error {
	b.started = time.Now()
	o := b.opts
	b.res.machine = describeMachine()
	b.res.pressureStart = cpuPressure()
	b.res.limitNote = raiseFileLimit()
	b.progress("file descriptor limit: %s", b.res.limitNote)
	var err error
	if b.dir, err = os.MkdirTemp("", "threshold-bench-*"); err != nil {
		return err
	}
	if err := b.build(); err != nil {
		return err
	}
	if b.backend, err = startBackend(); err != nil {
		return err
	}

	var loadTests []string
	for _, t := range o.tests {
		if t != "idle" {
			loadTests = append(loadTests, t)
		}
	}
	if len(loadTests) > 0 {
		if err := b.loadPhase(loadTests); err != nil {
			return err
		}
	}
	if b.has(o.tests, "idle") && len(o.idle) > 0 {
		if err := b.idlePhase(); err != nil {
			return err
		}
	}
	b.res.elapsed = time.Since(b.started)
	b.res.pressureEnd = cpuPressure()
	return writeReport(b.res.render(o), o.out, b.progress)
}

// writeReport prints a report and, with -out, writes it to that file too.
func writeReport(report, out string, progress func(format string, args ...any)) error {
	fmt.Print(report)
	if out == "" {
		return nil
	}
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		return err
	}
	progress("report written to %s", out)
	return nil
}

func (b *bench) cleanup() {
	for _, in := range b.live {
		in.stop()
	}
	b.live = nil
	if b.udp.echo != nil {
		b.udp.echo.close()
		b.udp.echo = nil
	}
	if b.backend != nil {
		b.backend.close()
		b.backend = nil
	}
	if b.dir != "" {
		if b.opts.keep {
			fmt.Fprintln(os.Stderr, "bench: kept", b.dir)
		} else {
			os.RemoveAll(b.dir)
		}
		b.dir = ""
	}
}

// build compiles the threshold binary (as the README says) and the stock
// baseline into the temporary directory.
func (b *bench) build() error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goBuild := func(out, pkg string) error {
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
		}
		return nil
	}
	if b.has(b.opts.paths, "threshold") {
		bin := b.opts.bin
		if bin == "" {
			bin = filepath.Join(b.dir, "threshold")
			b.progress("building ./cmd/threshold")
			if err := goBuild(bin, "./cmd/threshold"); err != nil {
				return err
			}
			b.res.build = "built from " + describeTree(root)
		} else if bin, err = filepath.Abs(bin); err != nil {
			return err
		} else {
			b.res.build = "the binary given with -bin (" + bin + ")"
		}
		b.threshold = &thresholdPath{name: "threshold", bin: bin, dir: b.dir, env: b.opts.thresholdEnv, maxPublic: b.opts.maxPublic()}
		if len(b.opts.thresholdEnv) > 0 {
			b.res.build += " (environment " + strings.Join(b.opts.thresholdEnv, " ") + ")"
		}
	}
	if b.has(b.opts.paths, "before") {
		bin, err := filepath.Abs(b.opts.beforeBin)
		if err != nil {
			return err
		}
		b.before = &thresholdPath{name: "before", bin: bin, dir: b.dir, maxPublic: b.opts.maxPublic()}
		b.res.peerInfo = append(b.res.peerInfo, "before: the threshold binary "+bin+" given with -before")
	}
	for _, p := range b.opts.peers {
		if b.has(b.opts.paths, p.kind) {
			b.res.peerInfo = append(b.res.peerInfo, fmt.Sprintf("%s binaries: %s (`--version`: %s), %s (`--version`: %s)",
				p.kind, p.serverBin, binVersion(p.serverBin), p.clientBin, binVersion(p.clientBin)))
		}
	}
	if b.has(b.opts.paths, "stock") {
		bin := filepath.Join(b.dir, "stock")
		b.progress("building ./bench/stock")
		if err := goBuild(bin, "./bench/stock"); err != nil {
			return err
		}
		b.stock = &stockPath{bin: bin, dir: b.dir}
	}
	return nil
}

// binVersion is the first line a binary prints for --version.
func binVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// describeTree names the commit of the tree the binary is built from.
func describeTree(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "the working tree (not a git checkout)"
	}
	s := "the working tree at commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		s += ", with uncommitted changes"
	}
	return s
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the bench from inside the threshold module (go run ./bench)")
	}
	return filepath.Dir(mod), nil
}

func (b *bench) startPath(name string) (*instance, error) {
	var in *instance
	var err error
	switch name {
	case "threshold":
		in, err = b.threshold.start(b.backend.addr())
	case "stock":
		in, err = b.stock.start(b.backend.addr())
	case "before":
		in, err = b.before.start(b.backend.addr())
	case "direct":
		return &instance{path: "direct", addr: b.backend.addr()}, nil
	default:
		in, err = b.startPeer(name)
	}
	if err != nil {
		return nil, fmt.Errorf("starting the %s path: %w", name, err)
	}
	b.live = append(b.live, in)
	return in, nil
}

func (b *bench) startPeer(name string) (*instance, error) {
	for _, spec := range b.opts.peers {
		if spec.kind != name {
			continue
		}
		b.peerRuns++
		env, err := loopbackPeerEnv(filepath.Join(b.dir, fmt.Sprintf("%s-%d", name, b.peerRuns)), b.backend.addr())
		if err != nil {
			return nil, err
		}
		return startPeer(spec, env)
	}
	return nil, fmt.Errorf("no peer %q", name)
}

func (b *bench) stopPath(in *instance) {
	in.stop()
	for i, x := range b.live {
		if x == in {
			b.live = append(b.live[:i], b.live[i+1:]...)
			break
		}
	}
}

// loadPhase runs the throughput, rate and latency tests: one long-lived
// instance per path; within each run, every test goes through every path
// before the next test starts, and the order of the paths rotates from run
// to run, so that a noisy neighbour hurts all paths alike.
func (b *bench) loadPhase(tests []string) error {
	o := b.opts
	inst := map[string]*instance{}
	for _, p := range o.paths {
		in, err := b.startPath(p)
		if err != nil {
			return err
		}
		inst[p] = in
		if len(in.procs) > 0 {
			b.progress("%s path up at %s (pids %v)", p, in.addr, in.pids())
		}
	}
	defer func() {
		for _, in := range inst {
			b.stopPath(in)
		}
	}()
	for run := range o.runs {
		order := rotate(o.paths, run)
		for _, t := range tests {
			for _, p := range order {
				in := inst[p]
				if err := in.check(); err != nil {
					return fmt.Errorf("%s path died: %w", p, err)
				}
				var stopPerf func()
				if o.perfDir != "" && run == 0 && len(in.procs) > 0 {
					stopPerf = startPerf(o.perfDir, p+"-"+t, in.pids())
				}
				summary, err := b.loadTest(t, in)
				if stopPerf != nil {
					stopPerf()
				}
				if err != nil {
					b.res.note("run %d, %s, %s: %v", run+1, p, t, err)
					b.progress("run %d/%d %-9s %-7s ERROR %v", run+1, o.runs, p, t, err)
				} else {
					b.progress("run %d/%d %-9s %-7s %s", run+1, o.runs, p, t, summary)
				}
				time.Sleep(o.settle)
			}
		}
	}
	return nil
}

func rotate(s []string, k int) []string {
	out := make([]string, 0, len(s))
	for i := range s {
		out = append(out, s[(i+k)%len(s)])
	}
	return out
}

// loadTest runs one test through one path and records its figures.
func (b *bench) loadTest(test string, in *instance) (string, error) {
	o := b.opts
	p := in.path
	cpu0, cpuErr := totalCPU(in.pids())
	var tr transfer
	var err error
	switch test {
	case "up":
		tr, err = upload(dial, in.addr, o.bulk, o.maxBytes)
	case "down":
		tr, err = download(dial, in.addr, o.bulk, o.maxBytes)
	case "up8":
		tr, err = streams(o.streams, func() (transfer, error) { return upload(dial, in.addr, o.bulk, o.maxBytes) })
	case "down8":
		tr, err = streams(o.streams, func() (transfer, error) { return download(dial, in.addr, o.bulk, o.maxBytes) })
	case "rate":
		r := connRate(dial, in.addr, o.workers, o.rateDur, o.maxConns)
		if r.errs > 0 {
			b.res.note("%s, short connections: %d failed of %d (first: %v)", p, r.errs, r.errs+r.ok, r.firstErr)
		}
		if r.ok == 0 {
			return "", fmt.Errorf("no connection succeeded: %v", r.firstErr)
		}
		b.res.add(mRate, p, r.perSec)
		return fmt.Sprintf("%.0f conn/s (%d ok, %d failed)", r.perSec, r.ok, r.errs), nil
	case "udp":
		return b.udpTest(in)
	case "latency":
		l, err := pingPong(dial, in.addr, 50, o.pings, 30*time.Second)
		if err != nil {
			return "", err
		}
		b.res.add(mP50, p, l.p50)
		b.res.add(mP99, p, l.p99)
		return fmt.Sprintf("p50 %.0f us, p99 %.0f us (%d round trips)", l.p50, l.p99, l.n), nil
	}
	if err != nil {
		return "", err
	}
	metric := map[string]string{"up": mUp, "down": mDown, "up8": mUp8, "down8": mDown8}[test]
	b.res.add(metric, p, mbps(tr))
	summary := fmt.Sprintf("%.1f MB/s (%.0f MB in %.2fs)", mbps(tr), float64(tr.bytes)/1e6, tr.elapsed.Seconds())
	if len(in.procs) > 0 && cpuErr == nil && tr.bytes > 0 {
		if cpu1, err := totalCPU(in.pids()); err == nil {
			perGB := (cpu1 - cpu0) / (float64(tr.bytes) / 1e9)
			b.res.add(cpuMetric[test], p, perGB)
			summary += fmt.Sprintf(", %.2f CPU s/GB", perGB)
		}
	}
	return summary, nil
}

// idlePhase opens idle connections end to end through fresh server and
// client processes of each tunnel path and reads their RSS.
func (b *bench) idlePhase() error {
	o := b.opts
	var paths []string
	for _, p := range o.paths {
		if p != "direct" {
			paths = append(paths, p)
		}
	}
	for run := range o.runs {
		for _, p := range rotate(paths, run) {
			if err := b.idleRun(run, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *bench) idleRun(run int, p string) error {
	o := b.opts
	in, err := b.startPath(p)
	if err != nil {
		return err
	}
	defer b.stopPath(in)
	time.Sleep(time.Second)
	if rss, err := totalRSS(in.pids(), "VmRSS"); err == nil {
		b.res.add(mRSS0, p, rss/1e6)
		if anon, err := totalRSS(in.pids(), "RssAnon"); err == nil {
			b.res.add("anon@0", p, anon/1e6)
		}
		b.progress("run %d/%d %-9s idle    %6d conns: RSS %.1f MB (%s)", run+1, o.runs, p, 0, rss/1e6, in.rssEach())
	}
	holder, err := startIdleHolder(in.addr)
	if err != nil {
		return err
	}
	defer holder.close()
	for _, n := range o.idle {
		t0 := time.Now()
		open, failed, firstErr, err := holder.open(n, 2*time.Minute)
		if err != nil {
			return err
		}
		opened := time.Since(t0)
		if err := in.check(); err != nil {
			return fmt.Errorf("%s path died with %d idle connections: %w", p, open, err)
		}
		time.Sleep(2 * time.Second) // let the connections settle
		rss, err := totalRSS(in.pids(), "VmRSS")
		if err != nil {
			return err
		}
		anon, err := totalRSS(in.pids(), "RssAnon")
		if err != nil {
			return err
		}
		b.res.addIdle(n, p, rss/1e6, anon/1e6, open, failed)
		if failed > 0 {
			b.res.note("run %d, %s, %d idle connections: %d failed to open (first: %s)", run+1, p, n, failed, firstErr)
		}
		b.progress("run %d/%d %-9s idle    %6d conns: RSS %.1f MB (%s; %d open, %d failed, opened in %.1fs)",
			run+1, o.runs, p, n, rss/1e6, in.rssEach(), open, failed, opened.Seconds())
	}
	return nil
}

// raiseFileLimit lifts RLIMIT_NOFILE as far as it may, for the bench and
// the children that inherit it: the bench holds the backend end of every
// idle connection (the idle holder, the client end), the server and the
// client one descriptor each per connection.
func raiseFileLimit() string {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return "unknown: " + err.Error()
	}
	const want = 1 << 18
	if lim.Max < want {
		try := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try); err == nil {
			return fmt.Sprintf("raised to %d", want)
		}
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Sprintf("%d (could not raise: %v)", lim.Cur, err)
	}
	return fmt.Sprintf("%d (the hard limit)", lim.Cur)
}

// startPerf runs `perf record` on the given processes until the returned
// function is called.
func startPerf(dir, name string, pids []int) func() {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench: perf:", err)
		return func() {}
	}
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	out := filepath.Join(dir, name+".data")
	cmd := exec.Command("perf", "record", "-q", "-F", "999", "-g", "-p", strings.Join(ps, ","), "-o", out)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: perf:", err)
		return func() {}
	}
	time.Sleep(300 * time.Millisecond) // let it attach
	return func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
}

// maxPublic is the MaxPublicConnections the threshold servers need for the
// largest idle count, or 0 when the server's default admits it (a -before
// binary older than that setting then still starts).
func (o *options) maxPublic() int {
	largest := 0
	if slices.Contains(o.tests, "idle") {
		for _, n := range o.idle {
			largest = max(largest, n)
		}
	}
	// Room for the other tests' connections beside the idle ones.
	if need := largest + 256; need > forward.DefaultMaxConnections {
		return need
	}
	return 0
}
