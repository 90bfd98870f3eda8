package wg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// The UDP bind: wireguard-go's network side, our own (its StdNetBind was
// read for what it has to do). What it does differently:
//
//   - Receiving resets only the message headers the last call used, and
//     sending only those it fills: StdNetBind clears all 128 per call,
//     which alone was 2.4% of the tunnel's CPU.
//   - Nothing is allocated per packet: an endpoint is reused for as long
//     as datagrams keep coming from the same address (StdNetBind allocates
//     one per datagram), and the headers, iovecs and control buffers live
//     in the socket's receive state or a pool of send states.
//   - UDP GSO sends a run of equal-sized packets as one datagram by
//     pointing one iovec at each packet, so the kernel gathers them
//     (StdNetBind copies them into the first packet's buffer).
//   - Socket buffers are raised as far as an unprivileged process may
//     (the sysctl maxima), beyond that only where the FORCE options are
//     permitted, and overflow drops of the receive buffer are counted
//     (SO_RXQ_OVFL) and reported by Stats.
//
// Like StdNetBind it binds one IPv4 and one IPv6 socket to the same port,
// keeps the local address a peer's datagrams arrived at (so replies leave
// from it on a multi-homed host) and reads batches with recvmmsg, using
// UDP GRO where the kernel has it.

const (
	batchSize = conn.IdealBatchSize
	// socketBufferSize is what the sockets ask for; the kernel caps it at
	// net.core.{r,w}mem_max unless SO_*BUFFORCE is permitted.
	socketBufferSize = 7 << 20
	// gsoMaxSegments is the kernel's limit of segments per UDP GSO send
	// (UDP_MAX_SEGMENTS) and per GRO datagram.
	gsoMaxSegments = 64
	// Largest UDP payloads, beyond which a send fails with EMSGSIZE.
	maxPayload4 = 1<<16 - 1 - 20 - 8
	maxPayload6 = 1<<16 - 1 - 8
	// oobSize holds the control messages of one datagram: the packet info
	// (IPV6_PKTINFO is the larger), the GRO segment size and the drop
	// counter on receive; the packet info and the GSO size on send.
	oobSize = 128
	// endpointCacheSize slots keep the endpoints of recent sources.
	endpointCacheSize = 256
)

// BindStats are counters of the UDP sockets.
type BindStats struct {
	// RxDropped counts datagrams the kernel dropped because a socket's
	// receive buffer was full (SO_RXQ_OVFL), over both sockets.
	RxDropped uint64
	// RcvBuf and SndBuf are the buffer sizes the kernel granted (the
	// larger of the two sockets'), as getsockopt reports them.
	RcvBuf, SndBuf int
	// TxOffload and RxOffload tell whether UDP GSO and GRO are in use on
	// some socket.
	TxOffload, RxOffload bool
}

// udpBind implements conn.Bind on Linux.
type udpBind struct {
	mu     sync.Mutex
	v4, v6 *udpSocket
	mark   uint32
	// dropsBefore keeps the drop counts of sockets closed by a reopen, so
	// that RxDropped never goes backwards.
	dropsBefore uint64
}

var _ conn.Bind = (*udpBind)(nil)

func newBind() conn.Bind { return &udpBind{} }

type udpSocket struct {
	conn      *net.UDPConn
	rc        syscall.RawConn
	is6       bool
	txOffload atomic.Bool // cleared when the kernel refuses GSO (EIO)
	rxOffload bool
	rcvBuf    int
	sndBuf    int
	drops     atomic.Uint64 // the latest SO_RXQ_OVFL value seen
	recv      recvState     // used by the socket's one receive goroutine
	sends     sync.Pool     // of *sendState
}

// endpoint is a peer's address and the local address its datagrams came
// to. It is never changed once handed out, except that ClearSrc marks the
// source as forgotten (wireguard-go calls it from its senders while the
// receive side may hand the same endpoint out again).
type endpoint struct {
	dst     netip.AddrPort
	src     netip.Addr // invalid: let the kernel choose
	ifindex int32
	cleared atomic.Bool
}

var _ conn.Endpoint = (*endpoint)(nil)

func (e *endpoint) ClearSrc()                   { e.cleared.Store(true) }
func (e *endpoint) dstAddrPort() netip.AddrPort { return e.dst }
func (e *endpoint) DstIP() netip.Addr           { return e.dst.Addr() }
func (e *endpoint) DstToString() string         { return e.dst.String() }
func (e *endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

func (e *endpoint) SrcIP() netip.Addr {
	if e.cleared.Load() {
		return netip.Addr{}
	}
	return e.src
}

func (e *endpoint) SrcToString() string {
	if src := e.SrcIP(); src.IsValid() {
		return src.String()
	}
	return ""
}

// source is the local address to send from, if there is one.
func (e *endpoint) source() (netip.Addr, int32, bool) {
	if !e.src.IsValid() || e.cleared.Load() {
		return netip.Addr{}, 0, false
	}
	return e.src, e.ifindex, true
}

func (*udpBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &endpoint{dst: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

func (*udpBind) BatchSize() int { return batchSize }

func (b *udpBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	// Both families on one port; with port 0, retry if the port the IPv4
	// socket got is taken for IPv6.
	for tries := 0; ; tries++ {
		v4, p, err := listenUDP("udp4", int(port))
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, err
		}
		v6, p6, err := listenUDP("udp6", p)
		if port == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			v4.close()
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			v4.close()
			return nil, 0, err
		}
		if v4 == nil && v6 == nil {
			return nil, 0, syscall.EAFNOSUPPORT
		}
		if v4 == nil {
			p = p6
		}
		b.v4, b.v6 = v4, v6
		var fns []conn.ReceiveFunc
		for _, s := range []*udpSocket{v4, v6} {
			if s == nil {
				continue
			}
			if b.mark != 0 {
				s.setMark(b.mark)
			}
			fns = append(fns, s.receive)
		}
		return fns, uint16(p), nil
	}
}

func (b *udpBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, s := range []**udpSocket{&b.v4, &b.v6} {
		if *s != nil {
			b.dropsBefore += (*s).drops.Load()
			errs = append(errs, (*s).close())
			*s = nil
		}
	}
	return errors.Join(errs...)
}

func (b *udpBind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	for _, s := range []*udpSocket{b.v4, b.v6} {
		if s != nil {
			if err := s.setMark(mark); err != nil {
				return err
			}
		}
	}
	return nil
}

// Stats reports the sockets' counters and settings.
func (b *udpBind) Stats() BindStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BindStats{RxDropped: b.dropsBefore}
	for _, s := range []*udpSocket{b.v4, b.v6} {
		if s == nil {
			continue
		}
		st.RxDropped += s.drops.Load()
		st.RcvBuf = max(st.RcvBuf, s.rcvBuf)
		st.SndBuf = max(st.SndBuf, s.sndBuf)
		st.TxOffload = st.TxOffload || s.txOffload.Load()
		st.RxOffload = st.RxOffload || s.rxOffload
	}
	return st
}

func (b *udpBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	s := b.v4
	if e.dst.Addr().Is6() {
		s = b.v6
	}
	b.mu.Unlock()
	if s == nil {
		return syscall.EAFNOSUPPORT
	}
	return s.send(bufs, e)
}

// listenUDP opens one socket of network ("udp4" or "udp6") on port; a
// family the host lacks yields a nil socket and EAFNOSUPPORT.
func listenUDP(network string, port int) (*udpSocket, int, error) {
	s := &udpSocket{is6: network == "udp6"}
	s.recv.init()
	s.sends.New = func() any { return newSendState() }
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = s.setup(int(fd)) })
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), network, ":"+strconv.Itoa(port))
	if err != nil {
		return nil, 0, err
	}
	s.conn = pc.(*net.UDPConn)
	if s.rc, err = s.conn.SyscallConn(); err != nil {
		s.conn.Close()
		return nil, 0, err
	}
	var got int
	_ = s.rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		s.txOffload.Store(err == nil)
		gro, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO)
		s.rxOffload = err == nil && gro == 1
		s.rcvBuf, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		s.sndBuf, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	if s.rxOffload {
		s.recv.gro = make([][]byte, groReads(batchSize))
		for i := range s.recv.gro {
			s.recv.gro[i] = make([]byte, maxPayload6)
		}
	}
	got = s.conn.LocalAddr().(*net.UDPAddr).Port
	return s, got, nil
}

// setup sets the socket options before bind: buffers, packet info, the
// drop counter and GRO. Only the packet info (needed to reply from the
// right address) and IPV6_V6ONLY are required.
func (s *udpSocket) setup(fd int) error {
	for _, o := range []struct{ normal, force int }{
		{unix.SO_RCVBUF, unix.SO_RCVBUFFORCE}, {unix.SO_SNDBUF, unix.SO_SNDBUFFORCE},
	} {
		// Up to net.core.*mem_max for anyone; beyond it only with
		// CAP_NET_ADMIN, where the FORCE variant is permitted (EPERM
		// otherwise, which leaves the first setting in place).
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.normal, socketBufferSize)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.force, socketBufferSize)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	var err error
	if s.is6 {
		if err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		}
	} else {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	}
	if err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	// GRO is best effort: older kernels lack it (and the getsockopt to
	// read it back, before 5.12), and then datagrams come one by one.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	return nil
}

func (s *udpSocket) close() error {
	if s == nil {
		return nil
	}
	return s.conn.Close()
}

func (s *udpSocket) setMark(mark uint32) error {
	var serr error
	err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	})
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("setting SO_MARK: %w", err)
	}
	return nil
}

// --- receiving ---

// recvState is the receive side of one socket: one goroutine (wireguard-go's
// receive routine for this ReceiveFunc) uses it.
type recvState struct {
	hdrs  [batchSize]unix.Mmsghdr
	iovs  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	oobs  [batchSize][oobSize]byte
	// Per datagram as parsed from its header: length, GRO segment size and
	// source.
	lens, gso [batchSize]int
	eps       [batchSize]*endpoint
	// gro are the buffers GRO reads land in: a coalesced datagram holds up
	// to gsoMaxSegments packets, more than one of wireguard-go's buffers
	// (one packet each, third_party/wireguard-changes) can take; each
	// packet is copied out into one of those, as it would be when split
	// in place. Allocated when the socket has GRO, touched only when used.
	gro   [][]byte
	cache [endpointCacheSize]*endpoint
	// readFn is the recvmmsg call for RawConn.Read, made once so that no
	// closure is allocated per call; want is its argument, got and err
	// its results. It is a raw syscall, as is sendmmsg below: both are
	// MSG_DONTWAIT and never block, and a plain one tells the runtime
	// that the goroutine may be gone a while, so that sysmon, polling
	// every 20 us, takes its P away from a batch call that lasts longer
	// and wakes another thread to run it: on the loopback bench a third
	// of the processes' context switches, and 13-14% of their CPU per GB
	// (BENCHMARKS.md, optimisation log).
	readFn    func(fd uintptr) bool
	want, got int
	err       error
}

func (r *recvState) init() {
	r.readFn = func(fd uintptr) bool {
		for {
			m, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.want), unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case 0:
				r.got, r.err = int(m), nil
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			default:
				r.got, r.err = 0, os.NewSyscallError("recvmmsg", e)
				return true
			}
		}
	}
}

// groReads is how many datagrams a GRO read asks for: each may hold up to
// gsoMaxSegments packets, and all of them must fit the caller's buffers.
func groReads(bufs int) int { return max(1, bufs/gsoMaxSegments) }

func (s *udpSocket) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	r := &s.recv
	n := len(bufs)
	want := n
	if s.rxOffload {
		want = min(groReads(n), len(r.gro))
	}
	for i := range want {
		into := bufs[i]
		if s.rxOffload {
			into = r.gro[i]
		}
		h := &r.hdrs[i].Hdr
		r.iovs[i].Base = unsafe.SliceData(into)
		r.iovs[i].SetLen(len(into))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Control = &r.oobs[i][0]
		h.SetControllen(oobSize)
		h.Flags = 0
		r.hdrs[i].Len = 0
	}
	r.want = want
	if err := s.rc.Read(r.readFn); err != nil {
		return 0, err
	}
	if r.err != nil {
		return 0, r.err
	}
	got := r.got
	// Parse every datagram's header first: a GRO split below may overwrite
	// the buffers but never the headers.
	for i := range got {
		h := &r.hdrs[i].Hdr
		r.lens[i] = int(r.hdrs[i].Len)
		var src netip.Addr
		var ifindex int32
		r.gso[i] = 0
		oob := r.oobs[i][:h.Controllen]
		for len(oob) >= unix.SizeofCmsghdr {
			hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
			if err != nil {
				break
			}
			oob = rest
			switch {
			case hdr.Level == unix.IPPROTO_IP && hdr.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
				info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
				src, ifindex = netip.AddrFrom4(info.Spec_dst), info.Ifindex
			case hdr.Level == unix.IPPROTO_IPV6 && hdr.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
				info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
				src, ifindex = netip.AddrFrom16(info.Addr), int32(info.Ifindex)
			case hdr.Level == unix.IPPROTO_UDP && hdr.Type == unix.UDP_GRO && len(data) >= 2:
				r.gso[i] = int(*(*uint16)(unsafe.Pointer(&data[0])))
			case hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
				// The socket's drop count when this datagram was queued.
				if d := uint64(*(*uint32)(unsafe.Pointer(&data[0]))); d > s.drops.Load() {
					s.drops.Store(d)
				}
			}
		}
		r.eps[i] = r.endpoint(&r.names[i], h.Namelen, src, ifindex)
	}
	if !s.rxOffload {
		for i := range got {
			sizes[i] = r.lens[i]
			eps[i] = r.eps[i]
		}
		return got, nil
	}
	// Split coalesced datagrams into one packet per buffer. groReads keeps
	// the packets of all datagrams within len(bufs).
	out := 0
	for i := range got {
		src := r.gro[i][:r.lens[i]]
		seg := r.gso[i]
		if seg <= 0 || seg > len(src) {
			seg = max(len(src), 1)
		}
		for off := 0; off < len(src) || off == 0; off += seg {
			if out == n {
				// Only a kernel breaking its own segment limit gets here.
				return out, nil
			}
			end := min(off+seg, len(src))
			if end-off > len(bufs[out]) {
				continue // larger than any packet of ours: dropped
			}
			sizes[out] = copy(bufs[out], src[off:end])
			eps[out] = r.eps[i]
			out++
		}
	}
	return out, nil
}

// endpoint returns the cached endpoint for a source, or a new one.
func (r *recvState) endpoint(name *unix.RawSockaddrInet6, namelen uint32, src netip.Addr, ifindex int32) *endpoint {
	var dst netip.AddrPort
	switch name.Family {
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&name.Port))
		dst = netip.AddrPortFrom(netip.AddrFrom16(name.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	}
	a := dst.Addr().As16()
	h := uint32(dst.Port())
	for k := 0; k < 16; k += 4 {
		h = h*0x9e3779b1 ^ uint32(a[k])<<24 ^ uint32(a[k+1])<<16 ^ uint32(a[k+2])<<8 ^ uint32(a[k+3])
	}
	slot := &r.cache[h%endpointCacheSize]
	if e := *slot; e != nil && e.dst == dst && e.src == src && e.ifindex == ifindex && !e.cleared.Load() {
		return e
	}
	e := &endpoint{dst: dst, src: src, ifindex: ifindex}
	*slot = e
	return e
}

// --- sending ---

// sendState holds the headers of one Send call.
type sendState struct {
	hdrs [batchSize]unix.Mmsghdr
	iovs [batchSize]unix.Iovec
	oobs [batchSize][oobSize]byte
	name unix.RawSockaddrInet6
	// writeFn is the sendmmsg call for RawConn.Write, made once (see
	// recvState.readFn); pending are the messages not sent yet, err its
	// result.
	writeFn func(fd uintptr) bool
	pending []unix.Mmsghdr
	err     error
}

func newSendState() *sendState {
	st := new(sendState)
	st.writeFn = func(fd uintptr) bool {
		for len(st.pending) > 0 {
			m, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&st.pending[0])), uintptr(len(st.pending)), unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case 0:
				st.pending = st.pending[m:]
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				st.err = os.NewSyscallError("sendmmsg", e)
				return true
			}
		}
		return true
	}
	return st
}

func (s *udpSocket) send(bufs [][]byte, e *endpoint) error {
	if len(bufs) == 0 {
		return nil
	}
	if len(bufs) > batchSize {
		return fmt.Errorf("wg: %d packets exceed the batch size %d", len(bufs), batchSize)
	}
	st := s.sends.Get().(*sendState)
	defer s.sends.Put(st)
	namelen := st.setName(e.dst, s.is6)
	src, ifindex, hasSrc := e.source()
	offload := s.txOffload.Load()
	for {
		n := st.fill(bufs, offload, s.is6, namelen, src, ifindex, hasSrc)
		err := s.sendmmsg(st, n)
		if err != nil && offload && errors.Is(err, unix.EIO) {
			// The kernel refuses GSO here (no checksum offload on the
			// device): send packet by packet from now on.
			s.txOffload.Store(false)
			offload = false
			continue
		}
		return err
	}
}

func (st *sendState) setName(dst netip.AddrPort, is6 bool) uint32 {
	port := dst.Port()
	if is6 {
		st.name = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.Addr().As16()}
		p := (*[2]byte)(unsafe.Pointer(&st.name.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return unix.SizeofSockaddrInet6
	}
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&st.name))
	*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.Addr().Unmap().As4()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return unix.SizeofSockaddrInet4
}

// fill builds the message headers for bufs and returns how many it used.
// With offload, each run of packets of one size (the last may be shorter)
// becomes one GSO datagram whose iovecs point at the packets.
func (st *sendState) fill(bufs [][]byte, offload, is6 bool, namelen uint32, src netip.Addr, ifindex int32, hasSrc bool) int {
	maxLen := maxPayload4
	if is6 {
		maxLen = maxPayload6
	}
	n := 0
	for i := 0; i < len(bufs); {
		first := i
		size, total := len(bufs[i]), len(bufs[i])
		st.iovs[i].Base = unsafe.SliceData(bufs[i])
		st.iovs[i].SetLen(len(bufs[i]))
		i++
		for offload && i < len(bufs) && i-first < gsoMaxSegments && len(bufs[i]) <= size && total+len(bufs[i]) <= maxLen {
			st.iovs[i].Base = unsafe.SliceData(bufs[i])
			st.iovs[i].SetLen(len(bufs[i]))
			total += len(bufs[i])
			i++
			if len(bufs[i-1]) < size {
				break // a shorter packet ends a GSO datagram
			}
		}
		h := &st.hdrs[n].Hdr
		h.Name = (*byte)(unsafe.Pointer(&st.name))
		h.Namelen = namelen
		h.Iov = &st.iovs[first]
		h.SetIovlen(i - first)
		oob := st.oobs[n][:0]
		if hasSrc {
			oob = appendPktinfo(oob, src, ifindex, is6)
		}
		if i-first > 1 {
			oob = appendGSO(oob, size)
		}
		if len(oob) > 0 {
			h.Control = &st.oobs[n][0]
		} else {
			h.Control = nil
		}
		h.SetControllen(len(oob))
		h.Flags = 0
		st.hdrs[n].Len = 0
		n++
	}
	return n
}

func cmsg(oob []byte, level, typ, dataLen int) ([]byte, []byte) {
	start := len(oob)
	space := unix.CmsgSpace(dataLen)
	oob = oob[:start+space]
	clear(oob[start:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[start]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(dataLen))
	return oob, oob[start+unix.CmsgLen(0) : start+unix.CmsgLen(dataLen)]
}

func appendPktinfo(oob []byte, src netip.Addr, ifindex int32, is6 bool) []byte {
	var data []byte
	if is6 {
		oob, data = cmsg(oob, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unix.SizeofInet6Pktinfo)
		info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
		info.Addr, info.Ifindex = src.As16(), uint32(ifindex)
		return oob
	}
	oob, data = cmsg(oob, unix.IPPROTO_IP, unix.IP_PKTINFO, unix.SizeofInet4Pktinfo)
	info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
	info.Spec_dst, info.Ifindex = src.Unmap().As4(), ifindex
	return oob
}

func appendGSO(oob []byte, size int) []byte {
	oob, data := cmsg(oob, unix.IPPROTO_UDP, unix.UDP_SEGMENT, 2)
	*(*uint16)(unsafe.Pointer(&data[0])) = uint16(size)
	return oob
}

// sendmmsg sends the first n messages of st, waiting for room in the
// socket buffer.
func (s *udpSocket) sendmmsg(st *sendState, n int) error {
	st.pending, st.err = st.hdrs[:n], nil
	err := s.rc.Write(st.writeFn)
	st.pending = nil
	if err != nil {
		return err
	}
	return st.err
}
