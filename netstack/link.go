package netstack

import (
	"context"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// link is the stack's link endpoint: the queue of outbound packets that
// Stack.Read hands to wireguard-go, and the dispatcher that Stack.Write
// delivers inbound packets to. Unlike gVisor's channel.Endpoint it
//   - holds each packet by reference (IncRef) instead of cloning it;
//   - takes a whole batch from TCP under one lock and one wake-up, and
//     gives Read as many as it asks for in one go;
//   - makes a sender wait while the queue is full, instead of dropping
//     the packet (which TCP would see as a loss, halve its window for and
//     retransmit): a full queue only means wireguard-go is behind.
type link struct {
	mtu      uint32
	offload  bool
	maxPkts  int // queue bounds: packets and bytes
	maxBytes int

	mu         sync.Mutex
	q          []*stack.PacketBuffer // FIFO: q[head:]
	head       int
	bytes      int
	closed     bool
	dispatcher stack.NetworkDispatcher
	readable   chan struct{} // signalled (capacity 1) when q becomes non-empty
	space      *sync.Cond    // broadcast when q shrinks or the link closes
}

// queueBytesMax bounds the bytes waiting for wireguard-go: at 64 KiB per
// GSO packet a packet count alone would allow far too much.
const queueBytesMax = 4 << 20

func newLink(queueLen, mtu int, offload bool) *link {
	l := &link{mtu: uint32(mtu), offload: offload, maxPkts: queueLen, maxBytes: queueBytesMax, readable: make(chan struct{}, 1)}
	l.space = sync.NewCond(&l.mu)
	return l
}

var _ stack.LinkEndpoint = (*link)(nil)
var _ stack.GSOEndpoint = (*link)(nil)

func (l *link) MTU() uint32                           { return l.mtu }
func (l *link) SetMTU(mtu uint32)                     { l.mtu = mtu }
func (*link) MaxHeaderLength() uint16                 { return 0 }
func (*link) LinkAddress() tcpip.LinkAddress          { return "" }
func (*link) SetLinkAddress(tcpip.LinkAddress)        {}
func (*link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (*link) AddHeader(*stack.PacketBuffer)           {}
func (*link) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (*link) SetOnCloseAction(func())                 {}
func (*link) Wait()                                   {}
func (l *link) GSOMaxSize() uint32                    { return gsoMaxSize }

func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	if l.offload {
		return stack.CapabilityRXChecksumOffload | stack.CapabilityTXChecksumOffload
	}
	return 0
}

func (l *link) SupportedGSO() stack.SupportedGSO {
	if l.offload {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

func (l *link) IsAttached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher != nil
}

func (l *link) dispatcherNow() stack.NetworkDispatcher {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher
}

// WritePackets queues pkts for Read, waiting while the queue is full. It
// fails only once the link is closed.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	l.mu.Lock()
	for _, pkt := range pkts.AsSlice() {
		if !l.enqueueLocked(pkt) {
			break
		}
		n++
	}
	closed := l.closed
	l.mu.Unlock()
	if n > 0 {
		l.wake()
	}
	if n == 0 && closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	return n, nil
}

// writePacket is WritePackets for one packet, without the list.
func (l *link) writePacket(pkt *stack.PacketBuffer) tcpip.Error {
	l.mu.Lock()
	ok := l.enqueueLocked(pkt)
	l.mu.Unlock()
	if !ok {
		return &tcpip.ErrClosedForSend{}
	}
	l.wake()
	return nil
}

// enqueueLocked queues pkt, waiting while the queue is full; false once
// the link is closed.
func (l *link) enqueueLocked(pkt *stack.PacketBuffer) bool {
	size := pkt.Size()
	// A packet always fits an empty queue, whatever its size.
	for !l.closed && len(l.q)-l.head > 0 && (len(l.q)-l.head >= l.maxPkts || l.bytes+size > l.maxBytes) {
		l.wake() // the reader must know of what is queued
		l.space.Wait()
	}
	if l.closed {
		return false
	}
	pkt.IncRef()
	l.q = append(l.q, pkt)
	l.bytes += size
	return true
}

// linkQDisc is the NIC's queueing discipline: each packet the stack sends
// goes to the link as it is. gVisor's default wraps every packet in a
// PacketBufferList, an allocation per packet, only for the link to take it
// out again; the queue and its back-pressure are the link's.
type linkQDisc struct{ l *link }

func (q linkQDisc) WritePacket(pkt *stack.PacketBuffer) tcpip.Error { return q.l.writePacket(pkt) }

// Close implements stack.QueueingDiscipline; the Stack closes the link.
func (linkQDisc) Close() {}

func (l *link) wake() {
	select {
	case l.readable <- struct{}{}:
	default:
	}
}

// pop takes the oldest packet (the caller owns the reference), or nil.
func (l *link) pop() *stack.PacketBuffer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.popLocked()
}

func (l *link) popLocked() *stack.PacketBuffer {
	if l.head == len(l.q) {
		return nil
	}
	pkt := l.q[l.head]
	l.q[l.head] = nil
	l.head++
	l.bytes -= pkt.Size()
	if l.head == len(l.q) {
		l.q, l.head = l.q[:0], 0
	} else if l.head > 1024 && l.head*2 > len(l.q) {
		// Keep the backing array from creeping forward forever.
		n := copy(l.q, l.q[l.head:])
		clear(l.q[n:])
		l.q, l.head = l.q[:n], 0
	}
	l.space.Broadcast()
	return pkt
}

// popWait blocks for a packet until ctx ends (then nil).
func (l *link) popWait(ctx context.Context) *stack.PacketBuffer {
	for {
		if pkt := l.pop(); pkt != nil {
			return pkt
		}
		select {
		case <-l.readable:
		case <-ctx.Done():
			return nil
		}
	}
}

// Close drops what is queued and releases waiting senders. Idempotent.
func (l *link) Close() {
	l.mu.Lock()
	l.closed = true
	for pkt := l.popLocked(); pkt != nil; pkt = l.popLocked() {
		pkt.DecRef()
	}
	l.space.Broadcast()
	l.mu.Unlock()
}
