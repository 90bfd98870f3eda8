//go:build inproc

package main

// threshold's data path in process, for profiling with the Go tools: a
// server and a client built by server.New and client.New (the constructors
// cmd/threshold runs), linked over loopback UDP, in front of the bench's
// backend.
// It is built only with -tags inproc (it uses the internal packages' APIs,
// which move faster than the binary's), and even then the benchmarks run
// only with -bench and the idle-memory test only with BENCH_IDLE_HEAP set.
//
//	go test -tags inproc ./bench -run '^$' -bench InProc -benchtime 3s -cpuprofile /tmp/cpu.out
//	go tool pprof -top /tmp/cpu.out
//	BENCH_IDLE_HEAP=/tmp/heap.out go test -tags inproc ./bench -run InProcIdleHeap -v
//	go tool pprof -sample_index=inuse_space -top /tmp/heap.out

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/keyfile"
	"github.com/thresholdtunnel/threshold/netstack"
	"github.com/thresholdtunnel/threshold/server"
	"github.com/thresholdtunnel/threshold/wg"
)

type inproc struct {
	backend    *backend
	public     string
	closers    []func()
	srvStack   *netstack.Stack
	cliStack   *netstack.Stack
	clientAddr netip.Addr
}

func (p *inproc) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

// newInproc runs a server and a client through the same constructors as
// cmd/threshold (server.New, client.New), minus the processes.
func newInproc(tb testing.TB) *inproc {
	tb.Helper()
	p := &inproc{}
	tb.Cleanup(p.close)
	log := slog.New(slog.DiscardHandler)
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	var err error
	p.backend, err = startBackend()
	must(err)
	p.closers = append(p.closers, p.backend.close)
	dir := tb.TempDir()
	clientKey, err := keyfile.Load(filepath.Join(dir, "client.key"), log)
	must(err)
	udpPort, err := freePort("udp")
	must(err)
	mgmtPort, err := freePort("tcp")
	must(err)
	publicPort, err := freePort("tcp")
	must(err)
	ctx, cancel := context.WithCancel(context.Background())
	p.closers = append(p.closers, cancel)

	srv, err := server.New(server.Config{
		TunnelControlPort: udpPort, ManagementPort: mgmtPort, PrivateKeyFile: filepath.Join(dir, "server.key"),
		Clients: []control.Registration{{ClientId: "bench", PublicKey: clientKey.PublicKey().String()}},
	}, log)
	must(err)
	p.closers = append(p.closers, func() { srv.Close() })
	go srv.Run(ctx)
	cli, err := client.New(ctx, client.Config{
		ClientId: "bench", ServerHost: "127.0.0.1", ServerTunnelControlPort: udpPort,
		ServerPublicKey: srv.PublicKey().String(), PrivateKeyFile: filepath.Join(dir, "client.key"),
		ServiceToLocalAddrMap: map[string]client.Service{"bench": client.Addr(p.backend.addr())},
	}, log)
	must(err)
	p.closers = append(p.closers, func() { cli.Close() })
	go cli.Run(ctx)
	p.srvStack, p.cliStack, p.clientAddr = srv.Stack(), cli.Stack(), wg.ClientAddr(clientKey.PublicKey())
	for deadline := time.Now().Add(20 * time.Second); srv.Control().Clients()["bench"].CurrentState != control.ClientConnected; {
		if time.Now().After(deadline) {
			tb.Fatal("the client did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err = srv.Control().SetTunnels([]forward.Tunnel{{ListenAddress: "127.0.0.1", ListenPort: publicPort, BackEndService: "bench", ClientId: "bench"}})
	must(err)
	p.public = net.JoinHostPort("127.0.0.1", strconv.Itoa(publicPort))
	must(ready(dial, p.public, 20*time.Second))
	return p
}

const chunk = 64 << 10

// cpuMeter reports the process's CPU time per GB moved (both tunnel ends,
// and the bench's own client and backend, which cost the same whatever the
// tunnel does).
type cpuMeter struct{ t0 time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() *cpuMeter { return &cpuMeter{t0: processCPU()} }

func (m *cpuMeter) report(b *testing.B, bytes int64) {
	b.ReportMetric((processCPU()-m.t0).Seconds()/(float64(bytes)/1e9), "cpu-s/GB")
}

func BenchmarkInProcUpload(b *testing.B) {
	p := newInproc(b)
	c, err := dial(p.public)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{modeSink})
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	cpu := startCPU()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	var n [8]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b, int64(b.N)*chunk)
	for name, st := range map[string]*netstack.Stack{"server": p.srvStack, "client": p.cliStack} {
		s := st.Stats()
		b.Logf("%s: segments sent %d, retransmits %d, fast retransmits %d, timeouts %d, tx drops %d", name,
			s.TCP.SegmentsSent.Value(), s.TCP.Retransmits.Value(), s.TCP.FastRetransmit.Value(), s.TCP.Timeouts.Value(), s.NICs.TxPacketsDroppedNoBufferSpace.Value())
	}
	if got := binary.BigEndian.Uint64(n[:]); got != uint64(b.N)*chunk {
		b.Fatalf("backend got %d bytes, want %d", got, b.N*chunk)
	}
}

func BenchmarkInProcDownload(b *testing.B) {
	p := newInproc(b)
	c, err := dial(p.public)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{modeSource})
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	cpu := startCPU()
	for range b.N {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu.report(b, int64(b.N)*chunk)
}

// BenchmarkInProcTunnelOnly sends from the server's netstack straight to a
// listener on the client's netstack: WireGuard and the two stacks alone,
// without the kernel sockets and forward's copies at either end.
func BenchmarkInProcTunnelOnly(b *testing.B) {
	p := newInproc(b)
	ln, err := p.cliStack.ListenTCP(netip.AddrPortFrom(p.clientAddr, 4001))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := p.srvStack.DialTCP(ctx, netip.AddrPortFrom(p.clientAddr, 4001))
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	cpu := startCPU()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if n := <-got; n != int64(b.N)*chunk {
		b.Fatalf("received %d bytes, want %d", n, b.N*chunk)
	}
	b.StopTimer()
	cpu.report(b, int64(b.N)*chunk)
	c.Close()
}

func BenchmarkInProcShortConn(b *testing.B) {
	p := newInproc(b)
	b.SetParallelism(16) // 32 workers on 2 CPUs, as the bench
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := shortConn(dial, p.public); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkInProcPingPong(b *testing.B) {
	p := newInproc(b)
	c, err := dial(p.public)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64)
	msg[0] = modeEcho
	resp := make([]byte, 64)
	b.ResetTimer()
	for range b.N {
		c.Write(msg)
		if _, err := io.ReadFull(c, resp); err != nil {
			b.Fatal(err)
		}
	}
}

// TestInProcIdleHeap opens BENCH_IDLE_CONNS (1000) idle connections through
// the in-process path and writes a heap profile to BENCH_IDLE_HEAP. The
// figures cover both tunnel ends and the bench's own ends, so read the
// profile by function.
func TestInProcIdleHeap(t *testing.T) {
	out := os.Getenv("BENCH_IDLE_HEAP")
	if out == "" {
		t.Skip("set BENCH_IDLE_HEAP=FILE to run")
	}
	// Sample finely: a connection's pieces are small.
	defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1024
	n := 1000
	if s := os.Getenv("BENCH_IDLE_CONNS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	p := newInproc(t)
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()
	set := &idleSet{}
	defer set.close()
	set.open(p.public, n, 32, time.Minute)
	if set.errs > 0 {
		t.Fatalf("%d failed: %v", set.errs, set.firstErr)
	}
	// Joins stop copying after a moment of quiet (forward.Join).
	time.Sleep(3 * time.Second)
	anon0, _ := statusBytes(os.Getpid(), "RssAnon")
	runtime.GC()
	runtime.ReadMemStats(&m1)
	// What the process holds beyond its live heap: garbage of the opening
	// burst, freed but still resident until the runtime returns it.
	debug.FreeOSMemory()
	anon1, _ := statusBytes(os.Getpid(), "RssAnon")
	t.Logf("RssAnon %.1f MB; %.1f MB after a GC returning free memory to the OS", float64(anon0)/1e6, float64(anon1)/1e6)
	g1 := runtime.NumGoroutine()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
	per := func(a, b uint64) string { return fmt.Sprintf("%.1f KiB", float64(int64(b)-int64(a))/float64(n)/1024) }
	t.Logf("%d idle connections: per connection heap in use %s, stacks %s, goroutines %.1f (bench ends included)",
		n, per(m0.HeapInuse, m1.HeapInuse), per(m0.StackInuse, m1.StackInuse), float64(g1-g0)/float64(n))
}
