package netstack

import (
	"encoding/binary"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Offloads. Most of the stack's cost is per packet, so the link endpoint
// lets TCP build segments of up to 64 KiB (host GSO) and cuts them to the
// tunnel's MTU only when handing them to wireguard-go; in the other
// direction, the packets of one wireguard-go batch are coalesced (gVisor's
// GRO) before TCP sees them. Checksums inside the tunnel are neither
// computed nor verified: WireGuard's AEAD already rejects any packet that
// was altered, so they would only cost a pass over every byte.
const gsoMaxSize = 1<<16 - 1

// groPool holds GRO state for concurrent Write calls (one per WireGuard
// peer); each Write flushes before it returns its GRO to the pool.
var groPool = sync.Pool{New: func() any {
	g := new(gro.GRO)
	g.Init(true)
	return g
}}

// segmenter cuts one GSO packet into MTU-sized TCP segments across Read
// calls, copying each segment's payload straight from the packet's views
// into wireguard-go's buffer: only the headers are copied aside, so each
// byte is copied once on its way out.
type segmenter struct {
	pkt     *stack.PacketBuffer // held (a reference of ours) while active
	views   [][]byte            // pkt's views
	hdr     [maxHeaders]byte    // IP header, TCP header
	ipLen   int
	tcpLen  int
	mss     int
	payload int
	next    int // offset in the payload of the next segment
	view    int // views[view][off] is the payload byte at next
	off     int
	v6      bool
	active  bool
}

// maxHeaders bounds the IP and TCP headers of a GSO packet: gVisor's TCP
// sends no IP options or extension headers, and TCP options are at most
// 40 bytes.
const maxHeaders = header.IPv6MinimumSize + header.TCPHeaderMaximumSize

// load prepares pkt's segments, taking a reference to pkt until the last
// one is emitted; the caller keeps its own. It reports false, preparing
// nothing, for a packet it cannot cut.
func (g *segmenter) load(pkt *stack.PacketBuffer) bool {
	g.release()
	size := pkt.Size()
	opts := pkt.GSOOptions
	g.v6 = opts.Type == stack.GSOTCPv6
	g.ipLen = int(opts.L3HdrLen)
	g.mss = int(opts.MSS)
	if (opts.Type != stack.GSOTCPv4 && opts.Type != stack.GSOTCPv6) || g.mss <= 0 || g.ipLen+header.TCPMinimumSize > size || g.ipLen+header.TCPMinimumSize > maxHeaders {
		return false
	}
	g.views = appendSlices(g.views[:0], pkt)
	// Headers first: the IP header and the TCP header's fixed part, to
	// learn the TCP header's length, then the rest of it.
	if copyFrom(g.views, 0, g.hdr[:g.ipLen+header.TCPMinimumSize]) < g.ipLen+header.TCPMinimumSize {
		g.dropViews()
		return false
	}
	g.tcpLen = int(header.TCP(g.hdr[g.ipLen:]).DataOffset())
	hdrLen := g.ipLen + g.tcpLen
	if g.tcpLen < header.TCPMinimumSize || hdrLen > size || hdrLen > maxHeaders {
		g.dropViews()
		return false
	}
	copyFrom(g.views, 0, g.hdr[:hdrLen])
	g.payload = size - hdrLen
	g.next = 0
	// Find the payload's first byte in the views.
	g.view, g.off = 0, hdrLen
	for g.view < len(g.views) && g.off >= len(g.views[g.view]) {
		g.off -= len(g.views[g.view])
		g.view++
	}
	g.active = g.payload > 0
	if !g.active {
		g.dropViews()
		return false
	}
	pkt.IncRef()
	g.pkt = pkt
	return true
}

// copyFrom copies the first len(dst) bytes of views into dst, starting
// skip bytes in; it returns how many it copied.
func copyFrom(views [][]byte, skip int, dst []byte) int {
	n := 0
	for _, v := range views {
		if skip >= len(v) {
			skip -= len(v)
			continue
		}
		n += copy(dst[n:], v[skip:])
		skip = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

// release drops the packet, if any.
func (g *segmenter) release() {
	if g.pkt != nil {
		g.pkt.DecRef()
		g.pkt = nil
	}
	g.dropViews()
	g.active = false
}

// dropViews forgets pkt's views, keeping the slice's array for the next
// packet (a GSO packet has a few dozen views: AsSlices would allocate a
// slice for each one).
func (g *segmenter) dropViews() {
	clear(g.views)
	g.views = g.views[:0]
}

// appendSlices appends pkt's bytes to dst as slices of its views: what
// PacketBuffer.AsSlices returns, without a new slice per packet.
func appendSlices(dst [][]byte, pkt *stack.PacketBuffer) [][]byte {
	vl, skip := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		dst = append(dst, b[skip:])
		skip = 0
	}
	return dst
}

// emit writes the next segment into dst and returns its length.
func (g *segmenter) emit(dst []byte) int {
	hdrLen := g.ipLen + g.tcpLen
	seg := min(g.mss, g.payload-g.next)
	first, last := g.next == 0, g.next+seg >= g.payload
	n := copy(dst, g.hdr[:hdrLen])
	for want := n + seg; n < want; {
		v := g.views[g.view][g.off:]
		c := copy(dst[n:want], v)
		n += c
		if g.off += c; g.off == len(g.views[g.view]) {
			g.view, g.off = g.view+1, 0
		}
	}
	ip, tcp := dst[:g.ipLen], header.TCP(dst[g.ipLen:hdrLen])
	if g.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(g.tcpLen+seg))
	} else {
		h := header.IPv4(ip)
		h.SetTotalLength(uint16(n))
		h.SetID(h.ID() + uint16(g.next/g.mss))
		h.SetChecksum(0)
		h.SetChecksum(^h.CalculateChecksum())
	}
	tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(g.next))
	flags := tcp.Flags()
	if !last {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if !first {
		flags &^= header.TCPFlagCwr
	}
	tcp.SetFlags(uint8(flags))
	g.next += seg
	if g.next >= g.payload {
		g.release()
	}
	return n
}

// deliver hands one batch of inbound packets to the stack through GRO.
func (l *link) deliver(pkts []*stack.PacketBuffer) {
	d := l.dispatcherNow()
	if d == nil {
		return
	}
	if !l.offload {
		for _, p := range pkts {
			d.DeliverNetworkPacket(p.NetworkProtocolNumber, p)
		}
		return
	}
	g := groPool.Get().(*gro.GRO)
	g.Dispatcher = d
	for _, p := range pkts {
		p.RXChecksumValidated = true
		g.Enqueue(p)
	}
	g.Flush()
	g.Dispatcher = nil
	groPool.Put(g)
}
