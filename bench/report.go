package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Metric keys. Idle RSS metrics are "rss@N" and "idlefail@N".
const (
	mUp      = "up"
	mDown    = "down"
	mUp8     = "up8"
	mDown8   = "down8"
	mRate    = "rate"
	mP50     = "p50"
	mP99     = "p99"
	mRSS0    = "rss@0"
	mCPUUp   = "cpu-up"
	mCPUDown = "cpu-down"
	mCPUUp8  = "cpu-up8"
	mCPUDn8  = "cpu-down8"
)

var cpuMetric = map[string]string{"up": mCPUUp, "down": mCPUDown, "up8": mCPUUp8, "down8": mCPUDn8}

type results struct {
	vals      map[string]map[string][]float64 // metric -> path -> one value per run
	idle      []int
	notes     []string
	machine   string
	limitNote string
	// CPU pressure (PSI "some" avg60) at the start and the end: how much
	// other work competed for the CPUs.
	pressureStart, pressureEnd string
	build                      string   // where the threshold binary came from
	peerInfo                   []string // which peer binaries were measured
	elapsed                    time.Duration
}

func newResults() *results { return &results{vals: map[string]map[string][]float64{}} }

func (r *results) add(metric, path string, v float64) {
	if r.vals[metric] == nil {
		r.vals[metric] = map[string][]float64{}
	}
	r.vals[metric][path] = append(r.vals[metric][path], v)
}

func (r *results) addIdle(n int, path string, rssMB, anonMB float64, open, failed int) {
	if !slices.Contains(r.idle, n) {
		r.idle = append(r.idle, n)
	}
	r.add(fmt.Sprintf("rss@%d", n), path, rssMB)
	r.add(fmt.Sprintf("anon@%d", n), path, anonMB)
	r.add(fmt.Sprintf("idlefail@%d", n), path, float64(failed))
}

func (r *results) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// median of the values of metric for path; ok is false without values.
func (r *results) median(metric, path string) (float64, bool) {
	v := r.vals[metric][path]
	if len(v) == 0 {
		return 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

func (r *results) cell(metric, path string) string {
	v := r.vals[metric][path]
	if len(v) == 0 {
		return "—"
	}
	m, _ := r.median(metric, path)
	if len(v) == 1 {
		return num(m)
	}
	return fmt.Sprintf("%s (%s–%s)", num(m), num(slices.Min(v)), num(slices.Max(v)))
}

func (r *results) ratio(metric, a, b string) string {
	x, ok1 := r.median(metric, a)
	y, ok2 := r.median(metric, b)
	if !ok1 || !ok2 || y == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2fx", x/y)
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

type row struct{ metric, label string }

func (r *results) rows() []row {
	rows := []row{
		{mUp, "single-stream upload, client → backend (MB/s)"},
		{mDown, "single-stream download, backend → client (MB/s)"},
		{mUp8, "8-stream upload, aggregate (MB/s)"},
		{mDown8, "8-stream download, aggregate (MB/s)"},
		{mRate, "short connections, 32 workers (conn/s)"},
		{mP50, "64-byte round trip, p50 (µs)"},
		{mP99, "64-byte round trip, p99 (µs)"},
		{mRSS0, "RSS server+client, no connections (MB)"},
	}
	for _, n := range r.idle {
		rows = append(rows,
			row{fmt.Sprintf("rss@%d", n), fmt.Sprintf("RSS server+client, %d idle connections (MB)", n)})
	}
	rows = append(rows, row{"anon@0", "RssAnon server+client, no connections (MB)"})
	for _, n := range r.idle {
		rows = append(rows, row{fmt.Sprintf("anon@%d", n), fmt.Sprintf("RssAnon server+client, %d idle connections (MB)", n)})
	}
	for _, n := range r.idle {
		rows = append(rows, row{fmt.Sprintf("idlefail@%d", n), fmt.Sprintf("idle connections that failed to open, of %d", n)})
	}
	rows = append(rows,
		row{mCPUUp, "CPU server+client, single-stream upload (s/GB)"},
		row{mCPUDown, "CPU server+client, single-stream download (s/GB)"},
		row{mCPUUp8, "CPU server+client, 8-stream upload (s/GB)"},
		row{mCPUDn8, "CPU server+client, 8-stream download (s/GB)"},
	)
	for i := range rows {
		rows[i].label = strings.Replace(rows[i].label, "8-stream", fmt.Sprintf("%d-stream", streamsUsed), 1)
		rows[i].label = strings.Replace(rows[i].label, "32 workers", fmt.Sprintf("%d workers", workersUsed), 1)
	}
	return rows
}

// Set by render from the options, for the row labels.
var streamsUsed, workersUsed = 8, 32

type target struct {
	name     string
	measured string
	pass     bool
	ok       bool // false: not measured
}

// Baseline figures of the committed tree before the data path work of
// issue 11 (BENCHMARKS.md, "Before"), for the targets that are relative
// to "today": threshold's single-stream throughput as a share of direct
// loopback, and its short-connection rate as a share of direct.
const (
	baselineUpOfDirect   = 0.0397
	baselineDownOfDirect = 0.0297
	baselineRateOfDirect = 0.166
)

// writeTargets writes a report's targets as a PASS/MISS table with the
// count that pass, then its notes, through w.
func writeTargets(w func(format string, args ...any), heading string, ts []target, notes []string) {
	w("### %s\n\n| target | measured | result |\n|---|---|---|\n", heading)
	pass, total := 0, 0
	for _, t := range ts {
		res := "not measured"
		if t.ok {
			total++
			res = "MISS"
			if t.pass {
				res = "PASS"
				pass++
			}
		}
		w("| %s | %s | %s |\n", t.name, orDash(t.measured), res)
	}
	w("\n%d of %d measured targets pass.\n", pass, total)
	if len(notes) > 0 {
		w("\n### Notes\n\n")
		for _, n := range notes {
			w("- %s\n", strings.ReplaceAll(n, "\n", " "))
		}
	}
}

func (r *results) targets() []target {
	var ts []target
	med := func(metric, path string) (float64, bool) {
		v, ok := r.median(metric, path)
		return v, ok && v != 0
	}
	// CPU per GB of the two tunnel processes, single stream each way.
	for _, m := range []struct{ metric, dir string }{{mCPUUp, "upload"}, {mCPUDown, "download"}} {
		name := "tunnel CPU ≤ 8 core-s per GB server+client, single-stream " + m.dir
		if v, ok := med(m.metric, "threshold"); ok {
			ts = append(ts, target{name: name, measured: fmt.Sprintf("%.2f core-s/GB", v), pass: v <= 8, ok: true})
		} else {
			ts = append(ts, target{name: name})
		}
	}
	// Single-stream throughput against frp over TLS in the same run, or,
	// without frp, against 2.5x the baseline share of direct.
	for _, m := range []struct {
		metric, dir string
		base        float64
	}{{mUp, "upload", baselineUpOfDirect}, {mDown, "download", baselineDownOfDirect}} {
		t, okT := med(m.metric, "threshold")
		if f, ok := med(m.metric, "frp"); ok {
			name := "single-stream " + m.dir + " ≥ 1.0x frp (TLS)"
			if !okT {
				ts = append(ts, target{name: name})
				continue
			}
			ts = append(ts, target{name: name, measured: fmt.Sprintf("%.2fx frp (%s vs %s MB/s)", t/f, num(t), num(f)), pass: t/f >= 1.0, ok: true})
			continue
		}
		want := 2.5 * m.base
		name := fmt.Sprintf("single-stream %s ≥ %.1f%% of direct (2.5x the baseline %.1f%%; no frp in this run)", m.dir, 100*want, 100*m.base)
		d, okD := med(m.metric, "direct")
		if !okT || !okD {
			ts = append(ts, target{name: name})
			continue
		}
		ts = append(ts, target{name: name, measured: fmt.Sprintf("%.1f%% of direct", 100*t/d), pass: t/d >= want, ok: true})
	}
	const latName = "64-byte round trip p50 ≤ 350 µs"
	if v, ok := med(mP50, "threshold"); ok {
		ts = append(ts, target{name: latName, measured: fmt.Sprintf("%.0f µs", v), pass: v <= 350, ok: true})
	} else {
		ts = append(ts, target{name: latName})
	}
	const rssName = "RSS with 1,000 idle connections ≤ 40 MB server+client"
	if rss, ok := r.median("rss@1000", "threshold"); ok {
		fails, _ := r.median("idlefail@1000", "threshold")
		m := fmt.Sprintf("%.1f MB", rss)
		if fails > 0 {
			m += fmt.Sprintf(" (%.0f failed to open)", fails)
		}
		ts = append(ts, target{name: rssName, measured: m, pass: rss <= 40 && fails == 0, ok: true})
	} else {
		ts = append(ts, target{name: rssName})
	}
	// "No worse than today": against the -before build in the same run
	// when there is one (within 5%, the run-to-run noise of this figure
	// here), else against the baseline's share of direct.
	t, ok1 := med(mRate, "threshold")
	if b, ok := med(mRate, "before"); ok {
		name := "short-connection rate no worse than before (≥ 0.95x the -before build)"
		if ok1 {
			ts = append(ts, target{name: name, measured: fmt.Sprintf("%.2fx before (%.0f vs %.0f conn/s)", t/b, t, b), pass: t/b >= 0.95, ok: true})
		} else {
			ts = append(ts, target{name: name})
		}
		return ts
	}
	rateName := fmt.Sprintf("short-connection rate no worse than the baseline (≥ %.1f%% of direct)", 100*baselineRateOfDirect)
	d, ok2 := med(mRate, "direct")
	if ok1 && ok2 {
		ts = append(ts, target{name: rateName, measured: fmt.Sprintf("%.1f%% of direct (%.0f vs %.0f conn/s)", 100*t/d, t, d), pass: t/d >= baselineRateOfDirect, ok: true})
	} else {
		ts = append(ts, target{name: rateName})
	}
	return ts
}

func (r *results) render(o *options) string {
	streamsUsed, workersUsed = o.streams, o.workers
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## threshold benchmark\n\n")
	w("Command: `%s` (finished %s, took %s)\n\n", o.commandLine, time.Now().UTC().Format("2006-01-02 15:04 MST"), r.elapsed.Round(time.Second))
	w("Machine: %s; CPU pressure (PSI some avg60) %s at start, %s at end\n\n", r.machine, r.pressureStart, r.pressureEnd)
	if r.build != "" {
		w("threshold binary: %s\n\n", r.build)
	}
	w("Settings: %d run(s) per figure (median, with min–max); bulk %s per stream; short connections for %s or %d per run, %d workers, 16-byte request and reply; %d round trips of 64 bytes on one connection; idle connections %v on fresh processes; file descriptor limit %s. MB = 10^6 bytes, GB = 10^9 bytes; CPU is utime+stime of the server and client processes from /proc, RSS their VmRSS summed.\n\n",
		o.runs, o.bulk, o.rateDur, o.maxConns, o.workers, o.pings, o.idle, r.limitNote)
	w("Paths: **threshold** = client → `threshold server` → WireGuard (loopback UDP) → `threshold client` → backend; **direct** = loopback TCP to the backend; **stock** = the same two-process shape on wireguard-go's stock `tun/netstack` (bench/stock)")
	for _, p := range o.peers {
		w("; **%s** = %s", p.kind, peerKinds[p.kind].about)
	}
	w(". The backend and the load generator run in the bench process.\n\n")
	for _, p := range r.peerInfo {
		w("%s\n\n", p)
	}
	// Columns: threshold first, then the other paths in the order given;
	// then threshold's ratio to each of them.
	cols := []string{"threshold"}
	for _, p := range o.paths {
		if p != "threshold" {
			cols = append(cols, p)
		}
	}
	w("| metric |")
	for _, c := range cols {
		w(" %s |", c)
	}
	for _, c := range cols[1:] {
		w(" threshold/%s |", c)
	}
	w("\n|---|%s\n", strings.Repeat("---|", 2*len(cols)-1))
	for _, row := range r.rows() {
		if len(r.vals[row.metric]) == 0 {
			continue
		}
		w("| %s |", row.label)
		for _, c := range cols {
			w(" %s |", r.cell(row.metric, c))
		}
		for _, c := range cols[1:] {
			w(" %s |", r.ratio(row.metric, "threshold", c))
		}
		w("\n")
	}
	w("%s", r.udpTable())
	w("\n")
	writeTargets(w, "Targets", r.targets(), r.notes)
	return b.String()
}

// cpuPressure reads the share of time some task waited for a CPU over the
// last minute (/proc/pressure/cpu): near 0% on a quiet machine.
func cpuPressure() string {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return "unknown"
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "avg60="); ok {
			return v + "%"
		}
	}
	return "unknown"
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// describeMachine: CPUs, CPU model, memory, Go version, kernel, load.
func describeMachine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "unknown memory"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb float64
				fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
				mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			load = fmt.Sprintf(", load average at start %s %s %s", f[0], f[1], f[2])
		}
	}
	return fmt.Sprintf("%d CPUs (nproc), %s, %s RAM, %s %s/%s, Linux %s%s",
		runtime.NumCPU(), model, mem, runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel, load)
}
