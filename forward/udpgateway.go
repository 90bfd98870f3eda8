package forward

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The UDP side of the Gateway: one public socket per UDP tunnel, and for
// each public source (IP and port, and the address it wrote to) a session
// on the client that was active when it began. Datagrams travel as frames
// on one socket in the tunnel per tunnel (udpproto.go).
//
// Idle sessions cost no goroutine: each listener has three, whatever its
// number of sessions (one reads the public socket, one the tunnel socket,
// one expires idle sessions), and a session is a small struct in two maps.

// PacketListenFunc opens a public UDP socket.
type PacketListenFunc func(ctx context.Context, network, address string) (net.PacketConn, error)

// UDPObserver meters one UDP tunnel. Its methods are called from the
// tunnel's relaying goroutines, so they must be cheap.
type UDPObserver interface {
	// In and Out report one datagram's payload bytes, from the public user
	// into the tunnel and back to them.
	In(bytes int)
	Out(bytes int)
	SessionStarted()
	SessionEnded()
	// Refused reports a new source refused, with a Reject* reason.
	Refused(reason string)
	// Dropped reports a datagram dropped, with a Drop* reason.
	Dropped(reason string)
	// Fragmented reports a datagram that was larger than the tunnel MTU
	// allows, and so was fragmented inside the tunnel.
	Fragmented()
}

// Reasons specific to UDP sessions and datagrams.
const (
	// RejectSessionCap: the tunnel has UdpMaxSessions live sessions (or the
	// client has as many as it allows).
	RejectSessionCap = "session_cap"

	// DropOversized: a datagram too large for UDP once framed.
	DropOversized = "oversized"
	// DropSendFailed: a datagram the tunnel's or the public socket refused.
	DropSendFailed = "send_failed"
)

// UDPRejectReasons and UDPDropReasons list the reasons, for metrics that
// show each at 0.
var (
	UDPRejectReasons = []string{RejectSessionCap, RejectNoClient, RejectUnknownService, RejectBackendUnreachable, RejectClientRefused}
	UDPDropReasons   = []string{DropOversized, DropSendFailed}
)

// DefaultTunnelMTU is the tunnel interface's MTU when GatewayConfig has none.
const DefaultTunnelMTU = 1420

type noUDPObserver struct{}

func (noUDPObserver) In(int)          {}
func (noUDPObserver) Out(int)         {}
func (noUDPObserver) SessionStarted() {}
func (noUDPObserver) SessionEnded()   {}
func (noUDPObserver) Refused(string)  {}
func (noUDPObserver) Dropped(string)  {}
func (noUDPObserver) Fragmented()     {}

// udpKey is a public session: the user's address, and the address they
// wrote to (a socket bound to every address serves several).
type udpKey struct {
	src netip.AddrPort // as the socket reported it (IPv4-mapped on a dual-stack socket)
	dst netip.Addr
}

// serverSession is one public source's session: small, and no goroutine.
type serverSession struct {
	id     uint32
	key    udpKey
	client string
	peer   netip.AddrPort // the client's UDP connector: replies must come from it
	to     net.Addr       // the same, as WriteTo wants it
	hdr    []byte         // the data frame header, written in front of each datagram
	oob    []byte         // the control message that sends replies from key.dst
	idle   time.Duration
	last   atomic.Int64 // unix nanos of the last datagram either way
	dir    atomic.Pointer[Directory]
	ended  atomic.Bool
}

func (s *serverSession) touch(now int64) {
	if s.last.Load() != now {
		s.last.Store(now)
	}
}

// udpListener is one UDP tunnel's public socket and its sessions.
type udpListener struct {
	g      *Gateway
	key    string
	pub    *publicUDP
	tun    net.PacketConn
	tunnel atomic.Pointer[Tunnel]
	obs    UDPObserver
	log    *slog.Logger
	// Refusals come per datagram: they are logged at most every
	// refusalLogEvery, and counted always.
	refusedLog quietLog
	// unfragmented is the largest frame that crosses the tunnel whole.
	unfragmented int

	mu     sync.RWMutex
	bySrc  map[udpKey]*serverSession
	byID   map[uint32]*serverSession
	nextID uint32
	closed bool

	done      chan struct{}
	closeOnce sync.Once
}

// openUDP opens a UDP tunnel's public socket and its socket in the tunnel;
// nothing is served until start.
func (g *Gateway) openUDP(t Tunnel) (*udpListener, error) {
	pc, err := g.cfg.ListenPacket(g.life.ctx, "udp", t.ListenAddr())
	if err != nil {
		return nil, err
	}
	tun, err := g.cfg.TunnelPacket()
	if err != nil {
		pc.Close()
		return nil, err
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		// As much as the kernel allows an unprivileged process: bursts
		// from many users arrive faster than one goroutine relays them.
		_ = uc.SetReadBuffer(udpSocketBuffer)
		_ = uc.SetWriteBuffer(udpSocketBuffer)
	}
	l := &udpListener{
		g:     g,
		key:   t.ListenKey(),
		pub:   newPublicUDP(pc),
		tun:   tun,
		obs:   noUDPObserver{},
		log:   g.log.With("tunnel", t.ListenKey()),
		bySrc: make(map[udpKey]*serverSession),
		byID:  make(map[uint32]*serverSession),
		// IDs start anywhere, so a restarted server's sessions do not
		// match those a client still holds from before.
		nextID: rand.Uint32(),
		done:   make(chan struct{}),
		// The tunnel addresses are IPv6: 40 bytes of IP header, 8 of UDP.
		unfragmented: g.cfg.TunnelMTU - 48,
	}
	l.tunnel.Store(&t)
	return l, nil
}

// udpSocketBuffer is the buffer size asked for, each way, of a UDP
// tunnel's public socket (the kernel caps it at net.core.rmem_max and
// wmem_max).
const udpSocketBuffer = 1 << 20

// UDPTunnelSocketBuffer is the buffer size, each way, of the sockets that
// carry UDP frames inside the tunnel (the server's per tunnel, the
// client's one). Deep buffers only add delay once the relay falls behind:
// a relay should drop then, not queue. Measured on two busy cores, 4 MiB
// made a standing queue of 47-95 ms (p50 round trip at 10,000 datagrams/s
// of 256 bytes) where 256 KiB had 1.1-1.4 ms; but 212 KiB (the stack's
// default) lost 0.08-0.73% of 1,452-byte datagrams at 5,000/s in 5 of 6
// runs (a scheduling hiccup overflows it), 512 KiB and 1 MiB none in 6
// runs each, with the same round trips.
const UDPTunnelSocketBuffer = 512 << 10

// start serves the listener with three goroutines the Gateway's Close
// waits for; it reports false (and closes l) if the Gateway is stopping.
func (l *udpListener) start() bool {
	if l.g.cfg.ObserveUDP != nil {
		if o := l.g.cfg.ObserveUDP(*l.tunnel.Load()); o != nil {
			l.obs = o
		}
	}
	for _, run := range []func(){l.readPublic, l.readTunnel, l.sweep} {
		if !l.g.life.enter() {
			l.close(false)
			return false
		}
		go func() {
			defer l.g.life.leave()
			run()
		}()
	}
	return true
}

// close stops the listener and ends its sessions, telling their clients
// if notify is set.
func (l *udpListener) close(notify bool) int {
	n := 0
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		sessions := make([]*serverSession, 0, len(l.byID))
		for _, s := range l.byID {
			sessions = append(sessions, s)
		}
		clear(l.bySrc)
		clear(l.byID)
		l.mu.Unlock()
		close(l.done)
		l.pub.close()
		for _, s := range sessions {
			if l.finish(s, notify) {
				n++
			}
		}
		// A writer blocked on a full tunnel send buffer wakes up now.
		_ = l.tun.SetWriteDeadline(time.Now())
		l.tun.Close()
	})
	return n
}

func (l *udpListener) count() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.byID)
}

// readPublic relays the users' datagrams into the tunnel. The payload is
// read behind room for the frame header, which is then written in front of
// it: no copy of the payload.
func (l *udpListener) readPublic() {
	buf := make([]byte, udpMaxDataHeader+udpMaxPayload6+1)
	oob := make([]byte, oobSize)
	var backoff time.Duration
	for {
		n, src, dst, err := l.pub.read(buf[udpMaxDataHeader:], oob)
		if err != nil {
			if !l.readFailed(&backoff, "public", err) {
				return
			}
			continue
		}
		backoff = 0
		l.fromUser(buf, n, udpKey{src: src, dst: dst})
	}
}

func (l *udpListener) stopped() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// fromUser relays one datagram, whose payload is buf[udpMaxDataHeader:][:n].
func (l *udpListener) fromUser(buf []byte, n int, key udpKey) {
	l.mu.RLock()
	s := l.bySrc[key]
	l.mu.RUnlock()
	dir := l.g.cfg.Directory()
	if s != nil && !l.current(s, dir) {
		l.end(s, true)
		l.log.Debug("UDP session moves: its client is gone", "from", key.src, "client", s.client)
		s = nil
	}
	if s == nil {
		var reason string
		if s, reason = l.begin(key, dir); s == nil {
			if reason != "" {
				l.obs.Refused(reason)
				l.refusedLog.do(func(more int) {
					l.log.Warn("UDP session refused", "from", key.src, "reason", reason, "clients", l.tunnel.Load().Clients(), "refused_since_last_line", more)
				})
			}
			return
		}
	}
	start := udpMaxDataHeader - len(s.hdr)
	copy(buf[start:], s.hdr)
	frame := buf[start : udpMaxDataHeader+n]
	if len(frame) > udpMaxFrame {
		l.obs.Dropped(DropOversized)
		return
	}
	if len(frame) > l.unfragmented {
		l.obs.Fragmented()
	}
	s.touch(time.Now().UnixNano())
	if _, err := l.tun.WriteTo(frame, s.to); err != nil {
		if !l.stopped() {
			l.obs.Dropped(DropSendFailed)
			l.log.Debug("UDP datagram not sent into the tunnel", "from", key.src, "err", err)
		}
		return
	}
	l.obs.In(n)
}

// current reports whether s may go on with its client: the client is still
// registered under the same address and connected, or lost but with no
// other connected client to move to (a short outage then does not cut
// the session). Checked again only when a new Directory is published.
func (l *udpListener) current(s *serverSession, dir *Directory) bool {
	if s.dir.Load() == dir {
		return true
	}
	p, ok := dir.Peer(s.client)
	if !ok || netip.AddrPortFrom(p.UDPConnector.Addr().Unmap(), p.UDPConnector.Port()) != s.peer {
		return false
	}
	if !p.Connected {
		if c := dir.Connected(l.tunnel.Load().Clients()); len(c) > 0 {
			return false
		}
	}
	s.dir.Store(dir)
	return true
}

// begin starts a session for a new source on the tunnel's active client.
// It returns the reason when it refuses ("" if the listener is closing).
func (l *udpListener) begin(key udpKey, dir *Directory) (*serverSession, string) {
	t := l.tunnel.Load()
	peers := dir.Connected(t.Clients())
	if len(peers) == 0 {
		return nil, RejectNoClient
	}
	p := peers[0]
	peer := netip.AddrPortFrom(p.UDPConnector.Addr().Unmap(), p.UDPConnector.Port())
	s := &serverSession{
		key:    key,
		client: p.ID,
		peer:   peer,
		to:     net.UDPAddrFromAddrPort(peer),
		oob:    l.pub.sourceOOB(key.dst),
		idle:   t.udpIdle(),
	}
	s.dir.Store(dir)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ""
	}
	if len(l.byID) >= t.UdpMaxSessions {
		l.mu.Unlock()
		return nil, RejectSessionCap
	}
	for {
		l.nextID++
		if _, used := l.byID[l.nextID]; !used {
			break
		}
	}
	s.id = l.nextID
	hdr, err := dataHeader(udpSession{
		id:      s.id,
		idle:    s.idle,
		service: []byte(t.BackEndService),
		src:     netip.AddrPortFrom(key.src.Addr().Unmap(), key.src.Port()),
		dst:     netip.AddrPortFrom(key.dst.Unmap(), l.pub.local.Port()),
		proxy:   t.udpProxy(),
	})
	if err != nil {
		// A checked tunnel always makes a header; refuse rather than relay
		// something the client cannot read.
		l.mu.Unlock()
		l.log.Error("building a UDP frame header", "err", err)
		return nil, RejectNoClient
	}
	s.hdr = hdr
	s.touch(time.Now().UnixNano())
	l.bySrc[key] = s
	l.byID[s.id] = s
	l.mu.Unlock()
	l.obs.SessionStarted()
	l.log.Debug("UDP session started", "from", key.src, "client", p.ID, "session", s.id)
	return s, ""
}

// end removes s and finishes it; it reports whether s was live.
func (l *udpListener) end(s *serverSession, notify bool) bool {
	l.mu.Lock()
	if l.bySrc[s.key] == s {
		delete(l.bySrc, s.key)
	}
	if l.byID[s.id] == s {
		delete(l.byID, s.id)
	}
	l.mu.Unlock()
	return l.finish(s, notify)
}

// finish counts s ended, once, and tells its client if notify is set.
func (l *udpListener) finish(s *serverSession, notify bool) bool {
	if !s.ended.CompareAndSwap(false, true) {
		return false
	}
	l.obs.SessionEnded()
	if notify {
		// Best effort: the client's own idle timer ends the session if
		// this is lost.
		_, _ = l.tun.WriteTo(shortFrame(frameClose, s.id), s.to)
	}
	return true
}

// readTunnel relays the clients' frames: replies back to their users from
// the public socket, refusals and drop notices to the metrics.
// readFailed handles a failed read of the socket named which: false if
// the listener is done; else it waits a growing pause and returns true.
// Errors here are transient (ICMP errors reported on the socket, no
// buffers), so it backs off a little instead of spinning.
func (l *udpListener) readFailed(backoff *time.Duration, which string, err error) bool {
	if l.stopped() || errors.Is(err, net.ErrClosed) {
		return false
	}
	*backoff = min(max(2**backoff, time.Millisecond), 100*time.Millisecond)
	l.log.Debug("reading the "+which+" UDP socket", "err", err)
	select {
	case <-time.After(*backoff):
		return true
	case <-l.done:
		return false
	}
}

func (l *udpListener) readTunnel() {
	buf := make([]byte, 1<<16)
	var backoff time.Duration
	for {
		n, from, err := l.tun.ReadFrom(buf)
		if err != nil {
			if !l.readFailed(&backoff, "tunnel", err) {
				return
			}
			continue
		}
		backoff = 0
		typ, id, rest, err := parseShort(buf[:n])
		if err != nil {
			continue
		}
		l.mu.RLock()
		s := l.byID[id]
		l.mu.RUnlock()
		// WireGuard authenticates the source address: only the session's
		// own client can answer for it.
		if s == nil || udpAddrPort(from) != s.peer {
			continue
		}
		switch typ {
		case frameReply:
			if n > l.unfragmented {
				l.obs.Fragmented()
			}
			s.touch(time.Now().UnixNano())
			if err := l.pub.write(rest, s.key.src, s.oob); err != nil {
				if errors.Is(err, syscall.EMSGSIZE) {
					l.obs.Dropped(DropOversized)
				} else if !l.stopped() {
					l.obs.Dropped(DropSendFailed)
					l.log.Debug("UDP reply not sent", "to", s.key.src, "err", err)
				}
				continue
			}
			l.obs.Out(len(rest))
		case frameRefused:
			reason := RejectBackendUnreachable
			if len(rest) > 0 {
				switch rest[0] {
				case udpRefuseUnknownService:
					reason = RejectUnknownService
				case udpRefuseSessionCap:
					reason = RejectSessionCap
				case udpRefuseRefused:
					reason = RejectClientRefused
				}
			}
			if l.end(s, false) {
				l.obs.Refused(reason)
				l.g.noteRefusal(*l.tunnel.Load(), s.client, reason, nil)
				l.refusedLog.do(func(more int) {
					l.log.Warn("UDP session refused by the client", "from", s.key.src, "client", s.client, "reason", reason, "refused_since_last_line", more)
				})
			}
		case frameTooBig:
			l.obs.Dropped(DropOversized)
		}
	}
}

// sweep ends idle sessions, checking a few times per idle period.
func (l *udpListener) sweep() {
	for {
		idle := l.tunnel.Load().udpIdle()
		every := min(max(idle/8, 100*time.Millisecond), time.Second)
		select {
		case <-l.done:
			return
		case <-time.After(every):
		}
		l.expire(time.Now())
	}
}

// expire ends the sessions idle for longer than their idle time.
func (l *udpListener) expire(now time.Time) int {
	var idle []*serverSession
	l.mu.RLock()
	for _, s := range l.byID {
		if now.UnixNano()-s.last.Load() >= int64(s.idle) {
			idle = append(idle, s)
		}
	}
	l.mu.RUnlock()
	n := 0
	for _, s := range idle {
		if l.end(s, true) {
			n++
			l.log.Debug("UDP session idle: ended", "from", s.key.src, "client", s.client, "session", s.id)
		}
	}
	return n
}

// closeClient ends the sessions of a client.
func (l *udpListener) closeClient(id string) int {
	var victims []*serverSession
	l.mu.RLock()
	for _, s := range l.byID {
		if s.client == id {
			victims = append(victims, s)
		}
	}
	l.mu.RUnlock()
	n := 0
	for _, s := range victims {
		if l.end(s, false) {
			n++
		}
	}
	return n
}

func udpAddrPort(a net.Addr) netip.AddrPort {
	ap := addrPortOf(a)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// refusalLogEvery spaces the log lines about refused datagrams.
const refusalLogEvery = 10 * time.Second

// quietLog runs a log call at most once per refusalLogEvery, telling it how
// many were skipped since the last one: a flood of refused datagrams must
// not become a flood of log lines.
type quietLog struct {
	next    atomic.Int64 // unix nanos before which nothing is logged
	skipped atomic.Int64
}

func (q *quietLog) do(log func(skipped int)) {
	now := time.Now().UnixNano()
	next := q.next.Load()
	if now < next || !q.next.CompareAndSwap(next, now+int64(refusalLogEvery)) {
		q.skipped.Add(1)
		return
	}
	log(int(q.skipped.Swap(0)))
}
