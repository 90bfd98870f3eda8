package netstack

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// tcpPacket is what the segment-size tests read from an IP packet.
type tcpPacket struct {
	ipLen      int // the whole packet
	payload    int // TCP payload bytes
	tcpOptions []byte
	fragment   bool
}

func parseTCP(p []byte) (tcpPacket, bool) {
	var hdr int
	var frag bool
	switch p[0] >> 4 {
	case 4:
		hdr = int(p[0]&0xf) * 4
		ff := binary.BigEndian.Uint16(p[6:8])
		frag = ff&0x2000 != 0 || ff&0x1fff != 0
		if p[9] != 6 {
			return tcpPacket{fragment: frag}, frag
		}
	case 6:
		hdr = 40
		if p[6] == 44 {
			return tcpPacket{fragment: true}, true
		}
		if p[6] != 6 {
			return tcpPacket{}, false
		}
	default:
		return tcpPacket{}, false
	}
	tcp := p[hdr:]
	off := int(tcp[12]>>4) * 4
	return tcpPacket{ipLen: len(p), payload: len(tcp) - off, tcpOptions: tcp[20:off], fragment: frag}, true
}

// hasOption reports whether TCP options hold an option of this kind
// (5: SACK).
func hasOption(opts []byte, kind byte) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			return false
		case 1:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 {
			return false
		}
		if opts[i] == kind {
			return true
		}
		i += int(opts[i+1])
	}
	return false
}

// Data both ways over a lossy link, so that each end holds out-of-order
// data while it sends and its data segments carry SACK blocks: every
// byte arrives without a stall (the deadline), and no packet exceeds the
// MTU or is fragmented. Two changes that made TCP segments fuller (data
// segments sized without room for SACK blocks, and no TCP timestamps)
// were dropped after this test stalled with them (see BENCHMARKS.md).
func TestDataBothWaysUnderLoss(t *testing.T) {
	var mu sync.Mutex
	var over, frags, data, sackACKs int
	link := &wanLink{delay: 2 * time.Millisecond, loss: 0.02, rate: 100e6 / 8, queue: 20 * time.Millisecond, seed: 3,
		inspect: func(p []byte) {
			tp, ok := parseTCP(p)
			if !ok {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case tp.fragment:
				frags++
			case tp.ipLen > defaultMTU:
				over++
			}
			if tp.payload > 0 {
				data++
			}
			if tp.payload == 0 && hasOption(tp.tcpOptions, 5) {
				sackACKs++
			}
		}}
	a, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
	if err != nil {
		t.Fatal(err)
	}
	link.start(t, a, b)
	ln, err := b.ListenTCP(netip.MustParseAddrPort("0.0.0.0:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 2 << 20
	errs := make(chan error, 4)
	both := func(c interface {
		io.ReadWriteCloser
		CloseWrite() error
	}) {
		go func() {
			_, err := c.Write(make([]byte, size))
			if err == nil {
				err = c.CloseWrite()
			}
			errs <- err
		}()
		go func() {
			n, err := io.Copy(io.Discard, c)
			if err == nil && n != size {
				err = io.ErrUnexpectedEOF
			}
			errs <- err
		}()
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errs <- err
			errs <- err
			return
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		both(c.(*TCPConn))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("192.0.2.2:80"))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	both(c)
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("data segments %d, over the MTU %d, fragments %d, pure ACKs with SACK blocks %d", data, over, frags, sackACKs)
	if over > 0 || frags > 0 {
		t.Errorf("%d packets over the MTU and %d fragments; want none", over, frags)
	}
	if data == 0 || sackACKs == 0 {
		t.Errorf("%d data segments, %d ACKs with SACK blocks: the test did not load both ways with losses", data, sackACKs)
	}
}
