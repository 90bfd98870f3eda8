package netstack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkStackToStack measures TCP through two stacks linked directly,
// without WireGuard: the ceiling of the netstack part of the data path.
func BenchmarkStackToStack(b *testing.B) {
	t := &testing.T{}
	a, bs, _ := pair(t)
	ln, err := bs.ListenTCP(netip.MustParseAddrPort("[::]:80"))
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, c)
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("[fd00::2]:80"))
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	st := a.stack.Stats().TCP
	b.ReportMetric(float64(st.Retransmits.Value()), "retransmits")
	b.ReportMetric(float64(a.stack.Stats().NICs.TxPacketsDroppedNoBufferSpace.Value()), "txdrops")
	c.Close()
	a.Close()
	bs.Close()
}
