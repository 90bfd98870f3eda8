package main

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be the emulator child, as the bench
// binary is (startEmulator runs os.Executable()).
func TestMain(m *testing.M) {
	if len(os.Args) >= 2 && os.Args[1] == linkArg {
		os.Exit(runLink(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func TestParseScenarios(t *testing.T) {
	scs, err := parseScenarios(defaultScenarios)
	if err != nil {
		t.Fatal(err)
	}
	want := []scenario{{30 * time.Millisecond, 0, "30ms/0%"}, {30 * time.Millisecond, 0.001, "30ms/0.1%"},
		{30 * time.Millisecond, 0.01, "30ms/1%"}, {100 * time.Millisecond, 0.001, "100ms/0.1%"}}
	if len(scs) != len(want) {
		t.Fatalf("%v", scs)
	}
	for i := range want {
		if scs[i] != want[i] {
			t.Errorf("scenario %d: %+v, want %+v", i, scs[i], want[i])
		}
	}
	if got := scs[1].name(100e6); got != "30 ms RTT, 100 Mbit/s, 0.1% loss" {
		t.Errorf("name %q", got)
	}
	for _, bad := range []string{"", "30ms", "30ms/1", "x/1%", "30ms/-1%", "30ms/60%", "3s/1%", "30ms/1%,30ms/1%", "30ms/NaN%"} {
		if _, err := parseScenarios(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseWANOptions(t *testing.T) {
	o, err := parseOptions([]string{"-wan"})
	if err != nil {
		t.Fatal(err)
	}
	if o.wan == nil || o.runs != 3 || o.bulk != 8*time.Second || o.streams != 4 || len(o.wan.scenarios) != 4 ||
		strings.Join(o.paths, ",") != "direct,threshold" || strings.Join(o.tests, ",") != strings.Join(allWANTests, ",") ||
		o.wan.queue != 30*time.Millisecond || o.wan.rate != 100e6 {
		t.Errorf("defaults: %+v %+v", o, o.wan)
	}
	o, err = parseOptions([]string{"-wan", "-quick", "-runs", "2", "-paths", "threshold", "-tests", "fair,up", "-scenarios", "50ms/2%", "-link-rate", "20", "-queue", "100ms"})
	if err != nil {
		t.Fatal(err)
	}
	if o.runs != 2 || o.bulk != 2*time.Second || strings.Join(o.paths, ",") != "direct,threshold" ||
		strings.Join(o.tests, ",") != "up,fair" || o.wan.scenarios[0].loss != 0.02 || o.wan.rate != 20e6 || o.wan.queue != 100*time.Millisecond {
		t.Errorf("quick with flags: %+v %+v", o, o.wan)
	}
	// -before adds the earlier build as a path of its own, by default too.
	o, err = parseOptions([]string{"-wan", "-before", "/bin/true"})
	if err != nil || strings.Join(o.paths, ",") != "direct,threshold,before" {
		t.Errorf("-wan -before: paths %v, %v", o.paths, err)
	}
	// The loopback bench is unchanged without -wan.
	if o, err := parseOptions(nil); err != nil || o.wan != nil || o.runs != 5 || o.streams != 8 {
		t.Errorf("loopback defaults: %+v, %v", o, err)
	}
	for _, bad := range [][]string{
		{"-queue", "10ms"},                // WAN-only flag without -wan
		{"-wan", "-idle", "100"},          // loopback-only flag with -wan
		{"-wan", "-tests", "rate"},        // a loopback test
		{"-wan", "-paths", "stock"},       // not a WAN path
		{"-wan", "-paths", "before"},      // no -before build
		{"-wan", "-bulk", "100ms"},        // too short to leave slow start
		{"-wan", "-link-rate", "0"},       // no such link
		{"-wan", "-queue", "0s"},          // no queue
		{"-wan", "-scenarios", "30ms/x%"}, // bad scenario
		{"-wan", "-hold", "2h"},
	} {
		if _, err := parseOptions(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// fakeResults makes results for one scenario: threshold's figures are
// direct's times q.
func fakeResults(q, p99Threshold, fair float64) *results {
	r := newResults()
	for _, m := range []string{wUp, wDown, wUp4, wDown4} {
		r.add(m, "direct", 90)
		r.add(m, "threshold", 90*q)
	}
	r.add(wRTTp99, "direct", 40)
	r.add(wRTTp99, "threshold", p99Threshold)
	r.add(wFairRatio, "threshold", fair)
	return r
}

func TestWANTargets(t *testing.T) {
	scs, _ := parseScenarios(defaultScenarios)
	res := map[string]*results{
		"30ms/0%":    fakeResults(0.96, 40, 0.8),  // all pass, at the edges
		"30ms/0.1%":  fakeResults(0.89, 41, 0.79), // just short everywhere
		"30ms/1%":    fakeResults(0.85, 30, 0.9),  // 1 stream passes (0.8), 4 streams miss (0.9)
		"100ms/0.1%": fakeResults(0.5, 30, 0.9),   // only latency and fairness targets apply
	}
	got := map[string]string{}
	for _, tg := range wanTargets(scs, 100e6, res) {
		v := "not measured"
		if tg.ok {
			v = map[bool]string{true: "PASS", false: "MISS"}[tg.pass]
		}
		got[tg.name] = v
	}
	want := map[string]string{
		"30 ms, 0% loss: 1-stream upload ≥ 0.95x direct":                  "PASS",
		"30 ms, 0% loss: 1-stream download ≥ 0.95x direct":                "PASS",
		"30 ms, 0% loss: 4-stream upload ≥ 0.90x direct":                  "PASS",
		"30 ms, 0.1% loss: 1-stream upload ≥ 0.90x direct":                "MISS",
		"30 ms, 0.1% loss: 4-stream download ≥ 0.90x direct":              "MISS",
		"30 ms, 1% loss: 1-stream download ≥ 0.80x direct":                "PASS",
		"30 ms, 1% loss: 4-stream upload ≥ 0.90x direct":                  "MISS",
		"30ms/0%: round-trip p99 under a bulk download ≤ direct's":        "PASS",
		"30ms/0.1%: round-trip p99 under a bulk download ≤ direct's":      "MISS",
		"100ms/0.1%: round-trip p99 under a bulk download ≤ direct's":     "PASS",
		"30ms/0%: 2 competing flows within 20% (slower ≥ 0.8x faster)":    "PASS",
		"30ms/0.1%: 2 competing flows within 20% (slower ≥ 0.8x faster)":  "MISS",
		"100ms/0.1%: 2 competing flows within 20% (slower ≥ 0.8x faster)": "PASS",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: %q, want %s", name, got[name], w)
		}
	}
	if n := len(got); n != 20 {
		t.Errorf("%d targets, want 20 (12 throughput, 4 latency, 4 fairness)", n)
	}
	// Another link rate is not the link: its throughput targets
	// are not measured, and neither is a scenario that was not run.
	for _, tg := range wanTargets(scs[3:], 50e6, map[string]*results{"100ms/0.1%": res["100ms/0.1%"]}) {
		if strings.HasPrefix(tg.name, "30 ms") && tg.ok {
			t.Errorf("%s measured without its scenario", tg.name)
		}
	}
}

func TestAggregateNeverExceedsTheWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// Two 1 s transfers of 10 MB, the second starting 1 s later: 20 MB in
	// 2 s, not 20 MB in 1 s.
	got := aggregate([]transfer{{bytes: 10e6, start: t0, elapsed: time.Second}, {bytes: 10e6, start: t0.Add(time.Second), elapsed: time.Second}})
	if got.bytes != 20e6 || got.elapsed != 2*time.Second || !got.start.Equal(t0) {
		t.Errorf("%+v", got)
	}
	if m := mbit(got); m != 80 {
		t.Errorf("%.1f Mbit/s, want 80", m)
	}
}

func TestUploadCounted(t *testing.T) {
	b, err := startBackend()
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	ctr := b.counter(7)
	c, err := dial(b.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tr, sent, err := uploadCountedSent(c, 7, ctr.Load, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if tr.bytes <= 0 || tr.elapsed < 200*time.Millisecond || tr.bytes > sent {
		t.Errorf("%+v of %d sent", tr, sent)
	}
	// The count goes on with what was still on its way, to exactly what
	// was sent: it never counts the header. (A write cut by the deadline
	// may take part of its buffer, so only the sum is known.)
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for ctr.Load() < sent && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := ctr.Load(); n != sent {
		t.Errorf("counted %d after %d at the end of the window; want the %d bytes sent", n, tr.bytes, sent)
	}
	// An id nobody asked for is refused.
	c2, err := dial(b.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte{modeCount, 0, 0, 0, 0, 0, 0, 0, 99, 'x'})
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Closed (EOF, or a reset for the unread byte), not left hanging.
	if _, err := c2.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("unknown id: read %v, want the backend to close", err)
	}
}

func TestNetHostZeroIsOwnNamespace(t *testing.T) {
	var h netHost
	if got := h.command("/bin/x", "a"); strings.Join(got, " ") != "/bin/x a" {
		t.Errorf("%q", got)
	}
	if got := (netHost{"ns1"}).command("/bin/x", "a"); strings.Join(got, " ") != "ip netns exec ns1 /bin/x a" {
		t.Errorf("%q", got)
	}
	if err := (netHost{"thrwan-no-such-namespace"}).do(func() error { return nil }); err == nil {
		t.Error("no error for a namespace that does not exist")
	}
}

// TestWANLink builds the real topology and emulator (root only) and checks
// what can be checked without timing a busy machine: frames cross, the
// delay is never short, the counters add up, and everything is removed.
func TestWANLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces (the WAN benchmark's link)")
	}
	for _, tool := range []string{"ip", "ethtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	// A namespace of a bench that is gone is removed; a live one is not.
	const stale = nsPrefix + "999999999-srv"
	if _, err := runCmd("ip", "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	// Other dead runs' namespaces may be removed too (a machine that ran a
	// killed bench before); ours must be among them.
	removed, err := removeStale()
	if err != nil || !slices.Contains(removed, stale) {
		runCmd("ip", "netns", "del", stale)
		t.Fatalf("removeStale: %v, %v", removed, err)
	}

	topo, err := newTopology()
	if err != nil {
		t.Fatal(err)
	}
	defer topo.close()
	if removed, _ := removeStale(); len(removed) != 0 {
		t.Errorf("removeStale removed a live run's namespaces: %v", removed)
	}
	ln, err := topo.home.listen("tcp", wanHomeIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	b := newBackend(ln)
	defer b.close()
	p := linkParams{Rate: 100e6, Delay: 20 * time.Millisecond, Queue: 30 * time.Millisecond}
	emu, err := startEmulator(topo.mid.ns, midSrvDev, midHomeDev, p, 1, t.TempDir()+"/emulator.log")
	if err != nil {
		t.Fatal(err)
	}
	defer emu.kill()
	addr := ln.Addr().String()
	if err := ready(topo.srv.dial, addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	l, err := pingPong(topo.srv.dial, addr, 1, 10, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l.p50 < 40e3 {
		t.Errorf("round trip p50 %.0f µs, shorter than the 40 ms the link delays it", l.p50)
	}
	tr, err := download(topo.srv.dial, addr, 300*time.Millisecond, 1<<30)
	if err != nil || tr.bytes == 0 {
		t.Fatalf("download: %+v, %v", tr, err)
	}
	// Nothing reaches the home host's loopback from the server host: only
	// its link address is reachable, through the emulator.
	if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Error("the home host's backend is reachable from the bench's own namespace")
	}
	st, err := emu.stop()
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]dirStats{"server→home": st.AtoB, "home→server": st.BtoA} {
		if d.Frames == 0 || d.Delivered+d.Lost+d.QueueDrops+d.Overflow+d.Oversize+d.SendErrors > d.Frames || d.Lost != 0 || d.Oversize != 0 || d.SendErrors != 0 {
			t.Errorf("%s: %+v", name, d)
		}
	}
	topo.close()
	out, _ := runCmd("ip", "netns", "list")
	if strings.Contains(out, topo.srv.ns) || strings.Contains(out, topo.mid.ns) || strings.Contains(out, topo.home.ns) {
		t.Errorf("namespaces left after close: %s", out)
	}
}
