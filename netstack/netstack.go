// Package netstack runs a userspace TCP/IP stack (gVisor's tcpip) and exposes
// its link layer as a wireguard-go tun.Device, so that a WireGuard device can
// carry the stack's packets without any kernel interface.
//
// The link endpoint hands packets to wireguard-go in batches: one blocking
// read, then everything already queued up to the caller's batch size. The
// stock wireguard-go netstack hands over one packet per call in lockstep,
// which was measured here to be the throughput bottleneck.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const nicID = 1

// BatchSize is the most packets handed to wireguard-go in one Read.
const BatchSize = 128

// Options configures a Stack. Zero values take the defaults below.
type Options struct {
	// Addresses are the stack's own addresses inside the tunnel.
	Addresses []netip.Addr
	// MTU of the tunnel interface; 1420 (WireGuard's default) when zero.
	MTU int
	// QueueLen bounds the outbound packets waiting for wireguard-go (as
	// does a 4 MiB bound on their bytes); while it is full, senders wait
	// (back-pressure, not drops). 4096 by default.
	QueueLen int
	// TCPSendBufferMax and TCPReceiveBufferMax cap the per-connection
	// buffers; buffers start small and auto-tune up to these, so idle
	// connections stay cheap. 16 MiB each by default: a 100 Mbit/s path
	// at 100 ms holds 1.25 MB, and under loss both ends keep a window of
	// holes on top of that (out of order, SACKed), which the 4 MiB of
	// before capped at 30 ms and 1% loss.
	TCPSendBufferMax    int
	TCPReceiveBufferMax int
	// CongestionControl is "bbr" (the default: paced, and it keeps its
	// rate under random loss; ours, in third_party/gvisor), "reno" or
	// "cubic" (gVisor's).
	CongestionControl string
	// DisableOffload turns off segmentation and receive offloads and
	// checksum skipping (see offload.go); for measurements.
	DisableOffload bool
	// DelayedACK is how long a connection may hold the ACK of less than a
	// full segment of data, so that the reply carries it (a request and
	// its response then cost two segments instead of four); 2 ms by
	// default, at most 10 ms; negative acknowledges at once (gVisor's
	// own behaviour). Full segments are always acknowledged at once.
	DelayedACK time.Duration
}

const (
	defaultMTU        = 1420
	defaultQueueLen   = 4096
	defaultTCPBufMax  = 16 << 20
	tcpBufMin         = 4 << 10
	tcpBufDefault     = 64 << 10
	timeWaitTimeout   = 5 * time.Second
	defaultDelayedACK = 2 * time.Millisecond
	// maxDelayedACK keeps a held ACK inside the peer's allowance for one
	// in its tail loss probe (10 ms in our gVisor copy, rack_fast.go).
	maxDelayedACK = 10 * time.Millisecond
)

func (o *Options) fillDefaults() {
	if o.MTU == 0 {
		o.MTU = defaultMTU
	}
	if o.QueueLen == 0 {
		o.QueueLen = defaultQueueLen
	}
	if o.TCPSendBufferMax == 0 {
		o.TCPSendBufferMax = defaultTCPBufMax
	}
	if o.TCPReceiveBufferMax == 0 {
		o.TCPReceiveBufferMax = defaultTCPBufMax
	}
	if o.CongestionControl == "" {
		o.CongestionControl = "bbr"
	}
	if o.DelayedACK == 0 {
		o.DelayedACK = defaultDelayedACK
	}
}

func (o *Options) validate() error {
	var errs []error
	if len(o.Addresses) == 0 {
		errs = append(errs, errors.New("netstack: at least one address is required"))
	}
	for _, a := range o.Addresses {
		if !a.IsValid() || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("netstack: invalid address %q", a))
		}
	}
	if o.MTU < 1280 || o.MTU > 65535 {
		errs = append(errs, fmt.Errorf("netstack: MTU %d out of range 1280-65535", o.MTU))
	}
	if o.QueueLen < 1 {
		errs = append(errs, fmt.Errorf("netstack: QueueLen %d must be positive", o.QueueLen))
	}
	if o.TCPSendBufferMax < tcpBufDefault || o.TCPReceiveBufferMax < tcpBufDefault {
		errs = append(errs, fmt.Errorf("netstack: TCP buffer maxima must be at least %d bytes", tcpBufDefault))
	}
	if o.DelayedACK > maxDelayedACK {
		errs = append(errs, fmt.Errorf("netstack: DelayedACK %v is over %v", o.DelayedACK, maxDelayedACK))
	}
	switch o.CongestionControl {
	case "bbr", "reno", "cubic":
	default:
		errs = append(errs, fmt.Errorf("netstack: unknown congestion control %q (want bbr, reno or cubic)", o.CongestionControl))
	}
	return errors.Join(errs...)
}

// Stack is a gVisor network stack whose link layer is a tun.Device.
// Hand the Stack to wireguard-go as its TUN; dial and listen through it.
type Stack struct {
	stack  *stack.Stack
	ep     *link
	events chan tun.Event
	mtu    int

	seg segmenter // used by Read only: wireguard-go reads from one goroutine

	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
}

var _ tun.Device = (*Stack)(nil)

// New builds a stack owning the given addresses, with default routes for
// each address family it has.
func New(opts Options) (*Stack, error) {
	opts.fillDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &Stack{
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
			HandleLocal:        true,
		}),
		ep:     newLink(opts.QueueLen, opts.MTU, !opts.DisableOffload),
		events: make(chan tun.Event, 1),
		mtu:    opts.MTU,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.configure(opts); err != nil {
		s.stack.Close()
		s.cancel()
		return nil, err
	}
	s.events <- tun.EventUp
	return s, nil
}

func (s *Stack) configure(opts Options) error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	cc := tcpip.CongestionControlOption(opts.CongestionControl)
	sendRange := tcpip.TCPSendBufferSizeRangeOption{Min: tcpBufMin, Default: tcpBufDefault, Max: opts.TCPSendBufferMax}
	recvRange := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpBufMin, Default: tcpBufDefault, Max: opts.TCPReceiveBufferMax}
	// The server opens every tunneled connection to one port of a client and
	// closes first, so its ends pile up in TIME-WAIT: at 60 s (the default)
	// it ran out of ephemeral ports above ~800 new connections a second.
	// The tunnel neither reorders much nor delays for long, so TIME-WAIT
	// can be short and its ports reused.
	// No TCP timestamps: 12 bytes of every segment (1% of the tunnel's
	// rate on a WAN link) for what WireGuard already gives. Its replay
	// window drops every duplicate and every packet older than a few
	// thousand, so no segment from before a sequence wrap can arrive
	// (PAWS); RACK, BBR and the RTO take their RTT from send times. Every
	// connection of ours is between two of these stacks, so none offers
	// them.
	timestamps := tcpip.TCPTimestampsEnabled(false)
	timeWaitReuse := tcpip.TCPTimeWaitReuseGlobal
	timeWait := tcpip.TCPTimeWaitTimeoutOption(timeWaitTimeout)
	delayedACK := tcpip.TCPDelayedACK(max(opts.DelayedACK, 0))
	for name, opt := range map[string]tcpip.SettableTransportProtocolOption{
		"SACK": &sack, "receive buffer moderation": &moderate, "congestion control": &cc,
		"send buffer range": &sendRange, "receive buffer range": &recvRange,
		"TIME-WAIT reuse": &timeWaitReuse, "TIME-WAIT timeout": &timeWait, "timestamps": &timestamps,
		"delayed ACK": &delayedACK,
	} {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("netstack: setting TCP %s: %s", name, err)
		}
	}
	if err := s.stack.CreateNICWithOptions(nicID, s.ep, stack.NICOptions{QDisc: linkQDisc{s.ep}}); err != nil {
		return fmt.Errorf("netstack: creating NIC: %s", err)
	}
	var has4, has6 bool
	for _, a := range opts.Addresses {
		proto := ipv6.ProtocolNumber
		if a.Is4() {
			proto, has4 = ipv4.ProtocolNumber, true
		} else {
			has6 = true
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: adding address %s: %s", a, err)
		}
	}
	if has4 {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if has6 {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	return nil
}

// Read implements tun.Device: it blocks for one outbound packet, then drains
// whatever else is already queued, up to len(bufs). Large (GSO) packets are
// cut into MTU-sized segments here, carried over to the next Read if the
// batch is full.
func (s *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		if s.seg.active {
			sizes[n] = s.seg.emit(bufs[n][offset:])
			n++
			continue
		}
		var pkt *stack.PacketBuffer
		if n == 0 {
			if pkt = s.ep.popWait(s.ctx); pkt == nil {
				return 0, os.ErrClosed
			}
		} else if pkt = s.ep.pop(); pkt == nil {
			break
		}
		if pkt.GSOOptions.Type == stack.GSONone || pkt.Size() <= s.mtu {
			sizes[n] = copyPacket(bufs[n][offset:], pkt)
			n++
		} else {
			// A packet load refuses (gVisor's TCP builds none) is dropped;
			// that would only cost a retransmission.
			s.seg.load(pkt)
		}
		pkt.DecRef()
	}
	return n, nil
}

// copyPacket copies pkt into dst, view by view (AsSlices would allocate).
func copyPacket(dst []byte, pkt *stack.PacketBuffer) int {
	vl, skip := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n += copy(dst[n:], b[skip:])
		skip = 0
	}
	return n
}

// Write implements tun.Device: it injects a batch of decrypted packets
// into the stack, coalescing TCP segments of a flow where it can.
func (s *Stack) Write(bufs [][]byte, offset int) (int, error) {
	// wireguard-go's batches are at most BatchSize packets; the array
	// stays on this goroutine's stack (deliver keeps no reference).
	var arr [BatchSize]*stack.PacketBuffer
	pkts := arr[:0]
	defer func() {
		for _, p := range pkts {
			p.DecRef()
		}
	}()
	for i, b := range bufs {
		packet := b[offset:]
		if len(packet) == 0 {
			continue
		}
		var proto tcpip.NetworkProtocolNumber
		switch packet[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			s.ep.deliver(pkts)
			return i, syscall.EAFNOSUPPORT
		}
		pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(packet)})
		pkb.NetworkProtocolNumber = proto
		pkts = append(pkts, pkb)
	}
	s.ep.deliver(pkts)
	return len(bufs), nil
}

// BatchSize implements tun.Device.
func (s *Stack) BatchSize() int { return BatchSize }

// MTU implements tun.Device.
func (s *Stack) MTU() (int, error) { return s.mtu, nil }

// Name implements tun.Device.
func (s *Stack) Name() (string, error) { return "netstack", nil }

// File implements tun.Device; there is no file behind a userspace stack.
func (s *Stack) File() *os.File { return nil }

// Events implements tun.Device.
func (s *Stack) Events() <-chan tun.Event { return s.events }

// Close tears the stack down; every connection on it fails. It is
// idempotent, as wireguard-go closes its TUN and so does the owner.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		// First release senders waiting for room in the link's queue: they
		// hold endpoint locks that closing the stack needs.
		s.ep.Close()
		s.stack.RemoveNIC(nicID)
		s.stack.Close()
		s.stack.Wait()
		close(s.events)
	})
	return nil
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv6.ProtocolNumber
	if ap.Addr().Is4() {
		proto = ipv4.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, proto
}

// DialTCP opens a TCP connection through the stack. A peer that never
// answers makes it wait for ctx, so callers should always bound ctx.
func (s *Stack) DialTCP(ctx context.Context, to netip.AddrPort) (*TCPConn, error) {
	fa, proto := fullAddr(to)
	return s.dialTCP(ctx, fa, proto)
}

// ListenTCP listens on the stack; it accepts *TCPConn. Use the unspecified
// address of a family to accept on all of the stack's addresses of that
// family.
func (s *Stack) ListenTCP(at netip.AddrPort) (net.Listener, error) {
	fa, proto := fullAddr(at)
	if at.Addr().IsUnspecified() {
		fa.Addr = tcpip.Address{}
	}
	return s.listenTCP(fa, proto)
}

// ListenUDP opens an unconnected UDP socket on the stack.
func (s *Stack) ListenUDP(at netip.AddrPort) (*gonet.UDPConn, error) {
	fa, proto := fullAddr(at)
	if at.Addr().IsUnspecified() {
		fa.Addr = tcpip.Address{}
	}
	return gonet.DialUDP(s.stack, &fa, nil, proto)
}

// DialUDP opens a UDP socket on the stack connected to a peer.
func (s *Stack) DialUDP(to netip.AddrPort) (*gonet.UDPConn, error) {
	fa, proto := fullAddr(to)
	return gonet.DialUDP(s.stack, nil, &fa, proto)
}

// Stats are the stack's counters (retransmissions, drops...), for
// diagnostics and benchmarks.
func (s *Stack) Stats() tcpip.Stats { return s.stack.Stats() }
