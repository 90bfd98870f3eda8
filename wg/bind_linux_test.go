package wg

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

func openBind(t *testing.T) (*udpBind, []conn.ReceiveFunc, uint16) {
	t.Helper()
	b := newBind().(*udpBind)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, fns, port
}

// receiver reads from fn in the background, so that tests can bound their
// waits; it hands out copies of what it read.
type received struct {
	pkts [][]byte
	eps  []conn.Endpoint
	err  error
}

func receiveOnce(fn conn.ReceiveFunc) received {
	// Buffers as wireguard-go hands them over: one packet each.
	bufs := make([][]byte, batchSize)
	for i := range bufs {
		bufs[i] = make([]byte, device.MaxMessageSize)
	}
	sizes := make([]int, batchSize)
	eps := make([]conn.Endpoint, batchSize)
	n, err := fn(bufs, sizes, eps)
	var r received
	r.err = err
	for i := range n {
		if sizes[i] > 0 {
			r.pkts = append(r.pkts, bytes.Clone(bufs[i][:sizes[i]]))
			r.eps = append(r.eps, eps[i])
		}
	}
	return r
}

// receiveAll reads until want packets came or the deadline passed.
func receiveAll(t *testing.T, fn conn.ReceiveFunc, want int) received {
	t.Helper()
	done := make(chan received, 1)
	go func() {
		var all received
		for len(all.pkts) < want {
			r := receiveOnce(fn)
			all.pkts = append(all.pkts, r.pkts...)
			all.eps = append(all.eps, r.eps...)
			if r.err != nil {
				all.err = r.err
				break
			}
		}
		done <- all
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("received fewer than %d packets in 10 s", want)
		return received{}
	}
}

func packets(n, size int, tag byte) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		for j := range out[i] {
			out[i][j] = tag + byte(i) + byte(j*7)
		}
	}
	return out
}

func TestBindBatchRoundTrip(t *testing.T) {
	a, _, _ := openBind(t)
	b, bfns, bport := openBind(t)
	for _, family := range []string{"127.0.0.1", "::1"} {
		t.Run(family, func(t *testing.T) {
			ep, err := a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr(family), bport).String())
			if err != nil {
				t.Fatal(err)
			}
			fn := bfns[0]
			if family == "::1" {
				fn = bfns[1]
			}
			// A full batch of equal packets and a shorter last one (one
			// GSO send where the kernel has it), then mixed sizes.
			batch := append(packets(batchSize-1, 1452, 1), make([]byte, 100))
			mixed := [][]byte{make([]byte, 60), make([]byte, 1452), make([]byte, 1452), make([]byte, 3), make([]byte, 1452)}
			for i, p := range mixed {
				p[0] = byte(i)
			}
			if err := a.Send(batch, ep); err != nil {
				t.Fatal(err)
			}
			r := receiveAll(t, fn, len(batch))
			if r.err != nil || len(r.pkts) != len(batch) {
				t.Fatalf("got %d packets, err %v", len(r.pkts), r.err)
			}
			for i := range batch {
				if !bytes.Equal(r.pkts[i], batch[i]) {
					t.Fatalf("packet %d differs (len %d, want %d)", i, len(r.pkts[i]), len(batch[i]))
				}
			}
			if err := a.Send(mixed, ep); err != nil {
				t.Fatal(err)
			}
			r2 := receiveAll(t, fn, len(mixed))
			for i := range mixed {
				if !bytes.Equal(r2.pkts[i], mixed[i]) {
					t.Fatalf("mixed packet %d differs", i)
				}
			}
			// Every packet from one source carries the same endpoint:
			// nothing is allocated per datagram.
			first := r.eps[0].(*endpoint)
			for _, e := range append(r.eps, r2.eps...) {
				if e != conn.Endpoint(first) {
					t.Fatal("a new endpoint for a source already seen")
				}
			}
			if got := first.DstIP(); got != netip.MustParseAddr(family) {
				t.Errorf("source address %s", got)
			}
			if got := first.SrcIP(); got != netip.MustParseAddr(family) {
				t.Errorf("local address %s (from the packet info)", got)
			}
			first.ClearSrc()
			if first.SrcIP().IsValid() || first.SrcToString() != "" {
				t.Error("ClearSrc kept the source")
			}
			// Replies go back to the endpoint the packet came from.
			if err := b.Send(mixed[:1], first); err != nil {
				t.Fatal(err)
			}
		})
	}
	st := b.Stats()
	if st.RcvBuf == 0 || st.SndBuf == 0 || st.RxDropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestBindNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's sync.Pool drops entries on purpose: allocation counts are only meaningful without -race")
	}
	a, _, _ := openBind(t)
	_, bfns, bport := openBind(t)
	ep, _ := a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), bport).String())
	batch := packets(batchSize, 1400, 3)
	bufs := make([][]byte, batchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16)
	}
	sizes := make([]int, batchSize)
	eps := make([]conn.Endpoint, batchSize)
	// The first round fills the endpoint cache and the send pool.
	round := func() {
		if err := a.Send(batch, ep); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(batch); {
			n, err := bfns[0](bufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if sizes[i] > 0 {
					got++
				}
			}
		}
	}
	round()
	if allocs := testing.AllocsPerRun(20, round); allocs > 0 {
		t.Errorf("%.1f allocations per batch of %d packets sent and received", allocs, len(batch))
	}
}

func TestBindCountsReceiveBufferDrops(t *testing.T) {
	a, _, _ := openBind(t)
	b, bfns, bport := openBind(t)
	// Shrink B's receive buffer so that a burst overflows it.
	if err := b.v4.rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4096)
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
	}); err != nil {
		t.Fatal(err)
	}
	ep, _ := a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), bport).String())
	// Single datagrams (no GSO) so that each overflows on its own.
	a.v4.txOffload.Store(false)
	burst := packets(batchSize, 1400, 5)
	for range 4 {
		if err := a.Send(burst, ep); err != nil {
			t.Fatal(err)
		}
	}
	// Drain what fitted, then one more datagram: the kernel stamps the
	// drop count on datagrams queued after the drops.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			r := receiveOnce(bfns[0])
			if r.err != nil {
				return
			}
			for _, p := range r.pkts {
				if len(p) == 7 {
					return
				}
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for b.Stats().RxDropped == 0 && time.Now().Before(deadline) {
		if err := a.Send([][]byte{make([]byte, 7)}, ep); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-drained
	if b.Stats().RxDropped == 0 {
		t.Fatal("receive buffer overflow not counted")
	}
}

func TestBindLifecycle(t *testing.T) {
	b, fns, port := openBind(t)
	if len(fns) != 2 || port == 0 {
		t.Fatalf("%d receive functions, port %d", len(fns), port)
	}
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Errorf("second Open: %v", err)
	}
	if err := b.Send([][]byte{{1}}, fakeEndpoint{}); !errors.Is(err, conn.ErrWrongEndpointType) {
		t.Errorf("foreign endpoint: %v", err)
	}
	if _, err := b.ParseEndpoint("not an address"); err == nil {
		t.Error("bad endpoint parsed")
	}
	if err := b.SetMark(0); err != nil {
		t.Errorf("SetMark: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- receiveOnce(fns[0]).err }()
	time.Sleep(20 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("receive after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("receive did not return after Close")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ep, _ := b.ParseEndpoint("127.0.0.1:9")
	if err := b.Send([][]byte{{1}}, ep); err == nil {
		t.Error("Send on a closed bind succeeded")
	}
	// Reopen on the same port, as wireguard-go does when it changes.
	if _, p, err := b.Open(port); err != nil || p != port {
		t.Fatalf("reopen: port %d, %v", p, err)
	}
}

type fakeEndpoint struct{ conn.Endpoint }
