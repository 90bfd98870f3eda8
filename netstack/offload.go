package netstack

import (
	"encoding/binary"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
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

// link is a channel endpoint that also keeps the stack's dispatcher, for GRO.
type link struct {
	*channel.Endpoint
	offload bool

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
}

func newLink(queueLen, mtu int, offload bool) *link {
	l := &link{Endpoint: channel.New(queueLen, uint32(mtu), ""), offload: offload}
	if offload {
		l.LinkEPCapabilities = stack.CapabilityRXChecksumOffload | stack.CapabilityTXChecksumOffload
	}
	return l
}

func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
	l.Endpoint.Attach(d)
}

func (l *link) GSOMaxSize() uint32 { return gsoMaxSize }

func (l *link) SupportedGSO() stack.SupportedGSO {
	if l.offload {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

func (l *link) dispatcherNow() stack.NetworkDispatcher {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher
}

// groPool holds GRO state for concurrent Write calls (one per WireGuard
// peer); each Write flushes before it returns its GRO to the pool.
var groPool = sync.Pool{New: func() any {
	g := new(gro.GRO)
	g.Init(true)
	return g
}}

// segmenter cuts one GSO packet into MTU-sized TCP segments across Read calls.
type segmenter struct {
	scratch []byte // the flattened packet: IP header, TCP header, payload
	ipLen   int
	tcpLen  int
	mss     int
	payload int
	next    int // offset in the payload of the next segment
	v6      bool
	active  bool
}

// load flattens pkt and prepares its segments; pkt may be released after.
// It reports false, preparing nothing, for a packet it cannot cut.
func (g *segmenter) load(pkt *stack.PacketBuffer) bool {
	size := pkt.Size()
	if cap(g.scratch) < size {
		g.scratch = make([]byte, size)
	}
	g.scratch = g.scratch[:size]
	copyPacket(g.scratch, pkt)
	opts := pkt.GSOOptions
	g.v6 = opts.Type == stack.GSOTCPv6
	g.ipLen = int(opts.L3HdrLen)
	g.mss = int(opts.MSS)
	if (opts.Type != stack.GSOTCPv4 && opts.Type != stack.GSOTCPv6) || g.mss <= 0 || g.ipLen+header.TCPMinimumSize > size {
		return false
	}
	g.tcpLen = int(header.TCP(g.scratch[g.ipLen:]).DataOffset())
	if g.tcpLen < header.TCPMinimumSize || g.ipLen+g.tcpLen > size {
		return false
	}
	g.payload = size - g.ipLen - g.tcpLen
	g.next = 0
	g.active = g.payload > 0
	return g.active
}

// emit writes the next segment into dst and returns its length.
func (g *segmenter) emit(dst []byte) int {
	hdrLen := g.ipLen + g.tcpLen
	seg := min(g.mss, g.payload-g.next)
	first, last := g.next == 0, g.next+seg >= g.payload
	n := copy(dst, g.scratch[:hdrLen])
	n += copy(dst[n:], g.scratch[hdrLen+g.next:hdrLen+g.next+seg])
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
		g.active = false
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
