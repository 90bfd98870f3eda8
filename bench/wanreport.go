package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// wanRows are the per-scenario table's rows, in order.
func wanRows(streams int) []row {
	return []row{
		{wUp, "1-stream upload, user → backend (Mbit/s)"},
		{wDown, "1-stream download, backend → user (Mbit/s)"},
		{wUp4, fmt.Sprintf("%d-stream upload, aggregate (Mbit/s)", streams)},
		{wDown4, fmt.Sprintf("%d-stream download, aggregate (Mbit/s)", streams)},
		{wRTTIdle, "64-byte round trip, idle, p50 (ms)"},
		{wRTTp50, "64-byte round trip during a bulk download, p50 (ms)"},
		{wRTTp99, "64-byte round trip during a bulk download, p99 (ms)"},
		{wRTTn, "round trips measured during the bulk download"},
		{wRTTBulk, "that bulk download (Mbit/s)"},
		{wFairHi, "2 competing downloads: the faster (Mbit/s)"},
		{wFairLo, "2 competing downloads: the slower (Mbit/s)"},
		{wFairRatio, "2 competing downloads: slower/faster (per run)"},
	}
}

// target is one of the targets, for threshold against direct.
// near compares scenario settings given as floats.
func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// targets computes the targets from the results. Throughput
// targets need the link (100 Mbit/s) and its 30 ms scenarios.
func wanTargets(scs []scenario, rate float64, res map[string]*results) []target {
	find := func(rtt time.Duration, loss float64) *results {
		if !near(rate, 100e6) {
			return nil
		}
		for _, s := range scs {
			if s.rtt == rtt && near(s.loss, loss) {
				return res[s.spec]
			}
		}
		return nil
	}
	var ts []target
	ratio := func(r *results, metric string, min float64, name string) {
		t := target{name: name}
		if r != nil {
			a, ok1 := r.median(metric, "threshold")
			b, ok2 := r.median(metric, "direct")
			if ok1 && ok2 && b > 0 {
				q := a / b
				t.ok, t.pass = true, q >= min
				t.measured = fmt.Sprintf("%.2fx (%s vs %s Mbit/s)", q, num(a), num(b))
			}
		}
		ts = append(ts, t)
	}
	for _, c := range []struct {
		loss float64
		min  float64
	}{{0.001, 0.9}, {0.01, 0.8}, {0, 0.95}} {
		r := find(30*time.Millisecond, c.loss)
		l := lossPct(c.loss)
		ratio(r, wUp, c.min, fmt.Sprintf("30 ms, %s%% loss: 1-stream upload ≥ %.2fx direct", l, c.min))
		ratio(r, wDown, c.min, fmt.Sprintf("30 ms, %s%% loss: 1-stream download ≥ %.2fx direct", l, c.min))
	}
	for _, loss := range []float64{0, 0.001, 0.01} {
		r := find(30*time.Millisecond, loss)
		l := lossPct(loss)
		ratio(r, wUp4, 0.9, fmt.Sprintf("30 ms, %s%% loss: 4-stream upload ≥ 0.90x direct", l))
		ratio(r, wDown4, 0.9, fmt.Sprintf("30 ms, %s%% loss: 4-stream download ≥ 0.90x direct", l))
	}
	for _, s := range scs {
		r := res[s.spec]
		t := target{name: fmt.Sprintf("%s: round-trip p99 under a bulk download ≤ direct's", s.spec)}
		if r != nil {
			a, ok1 := r.median(wRTTp99, "threshold")
			b, ok2 := r.median(wRTTp99, "direct")
			if ok1 && ok2 {
				t.ok, t.pass = true, a <= b
				t.measured = fmt.Sprintf("%s vs %s ms", num(a), num(b))
			}
		}
		ts = append(ts, t)
	}
	for _, s := range scs {
		r := res[s.spec]
		t := target{name: fmt.Sprintf("%s: 2 competing flows within 20%% (slower ≥ 0.8x faster)", s.spec)}
		if r != nil {
			if q, ok := r.median(wFairRatio, "threshold"); ok {
				t.ok, t.pass = true, q >= 0.8
				t.measured = fmt.Sprintf("%.2f", q)
			}
		}
		ts = append(ts, t)
	}
	return ts
}

func lossPct(loss float64) string { return fmt.Sprint(loss * 100) }

func (w *wanBench) render() string {
	o, wo := w.o, w.w
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("## WAN benchmark\n\n")
	p("Command: `%s` (finished %s, took %s)\n\n", o.commandLine, time.Now().UTC().Format("2006-01-02 15:04 MST"), w.b.res.elapsed.Round(time.Second))
	p("Machine: %s; CPU pressure (PSI some avg60) %s at start, %s at end\n\n", w.b.res.machine, w.b.res.pressureStart, w.b.res.pressureEnd)
	if w.b.res.build != "" {
		p("threshold binary: %s\n\n", w.b.res.build)
	}
	p("Link: three network namespaces, server host %s ↔ middle ↔ home host %s. In the middle a userspace emulator (`bench -internal-wan-link`) bridges two veths with AF_PACKET sockets; each way it drops a frame with the scenario's loss probability, queues it behind a %s Mbit/s bottleneck (rate over whole Ethernet frames; tail drop when the queue holds more than %s at that rate, %.0f kB), then delays it by half the RTT. It runs one event loop per direction on an absolute schedule, with real-time priority, so that the busy machine does not show in the link's timing (its counters, per scenario below, say how late frames left). Offloads off on all veths; kernel TCP is BBR in both hosts, with `tcp_no_metrics_save=1`.\n\n",
		wanSrvIP, wanHomeIP, num(wo.rate/1e6), wo.queue, wo.rate*wo.queue.Seconds()/8/1e3)
	p("Paths: **direct** = kernel TCP from the server host to the backend on the home host, across the link; **threshold** = the user on the server host → `threshold server`'s public port (127.0.0.1 there) → WireGuard across the link → `threshold client` on the home host → backend (127.0.0.1 there). The user (load generator) and the backend run in the bench process, on sockets made in those namespaces.\n\n")
	p("Settings: %d run(s) per figure (median, with min–max); runs interleave scenarios and rotate the order of the paths; each bulk transfer runs %s, counted where it arrives (downloads by the user, uploads by the backend as they come in), its connections opened first and started together, then reset; %d streams for the aggregate, whose figure is their bytes over the time from the first start to the last end; 20 idle round trips, then round trips for %s on a second connection while a bulk download runs (after it has run %s); before each test the bench waits until the link is quiet. Mbit/s = 10^6 bit/s of payload.\n\n",
		o.runs, o.bulk, o.streams, o.bulk, wo.warm)

	// The table: one line per scenario and path, medians.
	p("### Summary (medians, Mbit/s unless noted)\n\n")
	p("| scenario | path | 1 stream up | 1 stream down | %d streams up | %d streams down | RTT p99 under load (ms) | competing flows slower/faster |\n|---|---|---|---|---|---|---|---|\n", o.streams, o.streams)
	for _, sc := range wo.scenarios {
		r := w.res[sc.spec]
		if r == nil {
			continue
		}
		for _, path := range o.paths {
			med := func(m string) string {
				v, ok := r.median(m, path)
				if !ok {
					return "—"
				}
				return num(v)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", sc.spec, path, med(wUp), med(wDown), med(wUp4), med(wDown4), med(wRTTp99), med(wFairRatio))
		}
	}
	p("\n")

	for _, sc := range wo.scenarios {
		r := w.res[sc.spec]
		if r == nil {
			continue
		}
		p("### %s\n\n", sc.name(wo.rate))
		p("| metric |")
		for _, path := range o.paths {
			p(" %s |", path)
		}
		for _, path := range o.paths[1:] {
			p(" %s/direct |", path)
		}
		p("\n|---|%s\n", strings.Repeat("---|", 2*len(o.paths)-1))
		for _, rw := range wanRows(o.streams) {
			if len(r.vals[rw.metric]) == 0 {
				continue
			}
			p("| %s |", rw.label)
			for _, path := range o.paths {
				p(" %s |", r.cell(rw.metric, path))
			}
			for _, path := range o.paths[1:] {
				if rw.metric == wRTTn {
					p(" — |")
					continue
				}
				p(" %s |", r.ratio(rw.metric, path, "direct"))
			}
			p("\n")
		}
		if t := w.link[sc.spec]; t != nil {
			rt := "with real-time priority"
			if t.realtime < t.runs {
				rt = fmt.Sprintf("with real-time priority in only %d of them", t.realtime)
			}
			if t.gcs > 0 {
				rt += fmt.Sprintf(", %d garbage collections", t.gcs)
			}
			p("\nThe emulator over this scenario's %d run(s) (%s, %.1f CPU s, %s): %s; %s.\n", t.runs, t.elapsed.Round(time.Second), t.cpu, rt,
				dirLine("server → home", t.atob), dirLine("home → server", t.btoa))
		}
		p("\n")
	}

	writeTargets(p, "Targets (threshold against direct, same run)", wanTargets(wo.scenarios, wo.rate, w.res), w.notes)
	return b.String()
}

// dirLine summarises one direction's emulator counters.
func dirLine(name string, s dirStats) string {
	pct := func(n int64) string {
		if s.Frames == 0 {
			return "0"
		}
		return fmt.Sprintf("%.3f%%", 100*float64(n)/float64(s.Frames))
	}
	l := fmt.Sprintf("%s %d frames, %s lost at random (%d), %s tail-dropped (%d), longest wait %.1f ms, sent late by p50 %.0f / p99 %.0f / max %.0f µs",
		name, s.Frames, pct(s.Lost), s.Lost, pct(s.QueueDrops), s.QueueDrops, s.MaxBacklogMs, s.LateP50us, s.LateP99us, s.LateMaxus)
	if bad := s.Overflow + s.Oversize + s.SendErrors + s.KernelDrops; bad != 0 {
		l += fmt.Sprintf(" — and %d overflowed, %d oversize, %d send errors, %d dropped by the kernel (each should be 0)", s.Overflow, s.Oversize, s.SendErrors, s.KernelDrops)
	}
	return l
}
