package control

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/forward"
)

// ---- fakes ----

// fakeDevice stands in for the WireGuard device.
type fakeDevice struct {
	mu      sync.Mutex
	peers   map[Key]bool
	failAdd error
	stats   map[Key]PeerStats
}

func (d *fakeDevice) ParseKey(s string) (Key, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		return Key{}, errors.New("not a key")
	}
	return Key(b), nil
}

func (d *fakeDevice) Addr(k Key) netip.Addr {
	a := [16]byte{0: 0xfd}
	copy(a[8:], k[:8])
	return netip.AddrFrom16(a)
}

func (d *fakeDevice) AddPeer(k Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failAdd != nil {
		return d.failAdd
	}
	d.peers[k] = true
	return nil
}

func (d *fakeDevice) RemovePeer(k Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.peers, k)
	return nil
}

func (d *fakeDevice) Stats() map[Key]PeerStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.stats)
}

func (d *fakeDevice) has(k Key) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.peers[k]
}

// memStore keeps the state in memory and fails saves on demand.
type memStore struct {
	mu       sync.Mutex
	saved    Saved
	found    bool
	failSave bool
	saves    int
}

func (s *memStore) Load() (Saved, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saved, s.found, nil
}

func (s *memStore) Save(st Saved) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failSave {
		return errors.New("disk full")
	}
	s.saves++
	s.saved, s.found = st, true
	return nil
}

func (s *memStore) setFail(fail bool) {
	s.mu.Lock()
	s.failSave = fail
	s.mu.Unlock()
}

func (s *memStore) state() Saved {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saved
}

// fakeEgress counts CloseClient calls.
type fakeEgress struct {
	mu     sync.Mutex
	closed map[string]int
}

func (e *fakeEgress) CloseClient(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed[id]++
	return 0
}

func (e *fakeEgress) closes(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed[id]
}

// memNet gives a real forward.Gateway in-memory public listeners (some
// addresses can be made busy) and clients whose connectors echo.
type memNet struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	busy      map[string]bool
}

type memListener struct {
	addr   string
	ch     chan net.Conn
	done   chan struct{}
	once   sync.Once
	closed bool
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

func (n *memNet) listen(_ context.Context, _, address string) (net.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.busy[address] {
		return nil, fmt.Errorf("listen tcp %s: bind: address already in use", address)
	}
	l := &memListener{addr: address, ch: make(chan net.Conn), done: make(chan struct{})}
	n.listeners[address] = l
	return l, nil
}

// open reports whether a listener for address is open.
func (n *memNet) open(address string) bool {
	n.mu.Lock()
	l := n.listeners[address]
	n.mu.Unlock()
	if l == nil {
		return false
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// connect opens a public connection to address.
func (n *memNet) connect(t *testing.T, address string) net.Conn {
	t.Helper()
	n.mu.Lock()
	l := n.listeners[address]
	n.mu.Unlock()
	if l == nil {
		t.Fatalf("no listener on %s", address)
	}
	user, srv := pipe()
	select {
	case l.ch <- srv:
	case <-l.done:
		t.Fatalf("listener on %s is closed", address)
	case <-time.After(5 * time.Second):
		t.Fatal("listener does not accept")
	}
	t.Cleanup(func() { user.Close() })
	return user
}

// pipe is net.Pipe with TCP addresses, as the gateway wants to see.
func pipe() (net.Conn, net.Conn) {
	a, b := net.Pipe()
	addr := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4000}
	return addrConn{a, addr}, addrConn{b, addr}
}

type addrConn struct {
	net.Conn
	addr net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.addr }
func (c addrConn) RemoteAddr() net.Addr { return c.addr }

// dial reaches a client's connector: it answers the link request with OK
// and echoes.
func (n *memNet) dial(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
	near, far := pipe()
	go func() {
		defer far.Close()
		pc, _, err := forward.ReadRequest(far, 5*time.Second)
		if err != nil {
			return
		}
		if _, err := far.Write([]byte{byte(forward.StatusOK)}); err != nil {
			return
		}
		io.Copy(far, pc)
	}()
	return near, nil
}

type harness struct {
	t      *testing.T
	p      *Plane
	dev    *fakeDevice
	store  *memStore
	egress *fakeEgress
	net    *memNet
	gw     *forward.Gateway
	dir    func() *forward.Directory
	logs   *bytes.Buffer
	now    time.Time
	nowMu  sync.Mutex
}

func newHarness(t *testing.T, store *memStore, bootstrap ...Registration) *harness {
	t.Helper()
	h := &harness{t: t, dev: &fakeDevice{peers: map[Key]bool{}}, store: store, egress: &fakeEgress{closed: map[string]int{}},
		net: &memNet{listeners: map[string]*memListener{}, busy: map[string]bool{}}, logs: &bytes.Buffer{}, now: time.Unix(1e9, 0)}
	var dir struct {
		sync.Mutex
		d *forward.Directory
	}
	h.dir = func() *forward.Directory { dir.Lock(); defer dir.Unlock(); return dir.d }
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: h.logs}, nil))
	var err error
	h.gw, err = forward.NewGateway(forward.GatewayConfig{Directory: h.dir, Dial: h.net.dial, Listen: h.net.listen, Logger: log,
		// UDP tunnels listen on the kernel's loopback; their frames leave
		// from loopback sockets in place of the tunnel.
		TunnelPacket: func() (net.PacketConn, error) { return net.ListenPacket("udp", "127.0.0.1:0") }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.gw.Close() })
	h.p, err = New(Options{
		Device: h.dev, Gateway: h.gw, Egress: h.egress, Store: store,
		Publish:   func(d *forward.Directory) { dir.Lock(); dir.d = d; dir.Unlock() },
		ServerKey: key(0xee), Bootstrap: bootstrap, Logger: log, Now: h.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.p.Close() })
	return h
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (h *harness) clock() time.Time {
	h.nowMu.Lock()
	defer h.nowMu.Unlock()
	return h.now
}

func (h *harness) advance(d time.Duration) {
	h.nowMu.Lock()
	h.now = h.now.Add(d)
	h.nowMu.Unlock()
}

// connected makes a client connected, as a heartbeat would.
func (h *harness) connected(id string) {
	h.t.Helper()
	p, ok := h.dir().Peer(id)
	if !ok {
		h.t.Fatalf("client %s is not in the directory", id)
	}
	h.p.Heard(p.Addr)
	h.p.check()
	if p, _ := h.dir().Peer(id); !p.Connected {
		h.t.Fatalf("client %s did not become connected", id)
	}
}

func key(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

func reg(id string, b byte) Registration {
	return Registration{ClientId: id, PublicKey: key(b).String()}
}

func tunnel(port int, clients ...string) forward.Tunnel {
	t := forward.Tunnel{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web"}
	if len(clients) == 1 {
		t.ClientId = clients[0]
	} else {
		t.ClientIds = clients
	}
	return t
}

// echo checks that c still carries bytes both ways.
func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("writing %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo of %q: got %q, %v", msg, buf, err)
	}
}

// closed checks that c was closed by the far side.
func closed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("connection still open (read: %v)", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ---- tests ----

func TestSetTunnelsSaveFailureClosesNothing(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1))
	h.connected("a")
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(80, "a")}); err != nil {
		t.Fatal(err)
	}
	live := h.net.connect(t, "127.0.0.1:80")
	echo(t, live, "before")

	store.setFail(true)
	saves := store.saves
	_, err := h.p.SetTunnels([]forward.Tunnel{tunnel(81, "a")}) // would remove :80
	if err == nil || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("SetTunnels with a failing store = %v", err)
	}
	if got := h.p.Tunnels(); len(got) != 1 || got[0].ListenPort != 80 {
		t.Errorf("tunnels in force after a refused change: %+v", got)
	}
	if h.net.open("127.0.0.1:81") {
		t.Error("the refused change left its new listener open")
	}
	if !h.net.open("127.0.0.1:80") {
		t.Error("the refused change closed the old listener")
	}
	echo(t, live, "after") // the live connection was not cut
	if store.saves != saves {
		t.Error("something was saved")
	}

	store.setFail(false)
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(81, "a")}); err != nil {
		t.Fatal(err)
	}
	closed(t, live) // now the removed tunnel's connection is cut
	if st := store.state(); len(st.Tunnels) != 1 || st.Tunnels[0].ListenPort != 81 {
		t.Errorf("saved tunnels %+v", st.Tunnels)
	}
}

func TestSetTunnelsListenFailureChangesNothing(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1))
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(80, "a")}); err != nil {
		t.Fatal(err)
	}
	saves := store.saves
	h.net.busy["127.0.0.1:82"] = true
	h.net.busy["127.0.0.1:83"] = true
	_, err := h.p.SetTunnels([]forward.Tunnel{tunnel(81, "a"), tunnel(82, "a"), tunnel(83, "a")})
	var pe *Problems
	if !errors.Is(err, ErrConflict) || !errors.As(err, &pe) || len(pe.Lines()) != 2 {
		t.Fatalf("SetTunnels onto busy ports = %v, want a conflict naming both", err)
	}
	if !strings.Contains(pe.Lines()[0], ":82") || !strings.Contains(pe.Lines()[1], ":83") {
		t.Errorf("problems %q", pe.Lines())
	}
	if store.saves != saves || h.net.open("127.0.0.1:81") || !h.net.open("127.0.0.1:80") {
		t.Error("a change refused for a busy port changed something")
	}
}

func TestSetTunnelsListsEveryProblem(t *testing.T) {
	h := newHarness(t, &memStore{}, reg("a", 1))
	_, err := h.p.SetTunnels([]forward.Tunnel{
		tunnel(0, "a"),
		tunnel(80, "ghost"),
		tunnel(81, "a", "phantom"),
	})
	var pe *Problems
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &pe) {
		t.Fatalf("SetTunnels = %v, want invalid", err)
	}
	want := []string{"tunnels[0].ListenPort", `tunnels[1]: client "ghost"`, `tunnels[2]: client "phantom"`}
	if len(pe.Lines()) != len(want) {
		t.Fatalf("problems %q, want %d", pe.Lines(), len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(pe.Lines()[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, pe.Lines()[i], w)
		}
	}
}

// Issue 15's list of 340,000 empty tunnels is one problem; a list of
// MaxTunnels bad ones is 20 problems and a count.
func TestSetTunnelsHugeList(t *testing.T) {
	h := newHarness(t, &memStore{}, reg("a", 1))
	_, err := h.p.SetTunnels(make([]forward.Tunnel, 340_000))
	var pe *Problems
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &pe) || pe.Len() != 1 || !strings.Contains(pe.Lines()[0], "at most 10000") {
		t.Fatalf("SetTunnels(340,000 tunnels) = %v", err)
	}
	bad := make([]forward.Tunnel, forward.MaxTunnels)
	for i := range bad {
		bad[i] = tunnel(0, "ghost")
	}
	_, err = h.p.SetTunnels(bad)
	if !errors.As(err, &pe) || len(pe.Lines()) != MaxProblems+1 || pe.Len() != 3*forward.MaxTunnels-1 || len(err.Error()) > 4096 {
		t.Fatalf("SetTunnels(%d bad tunnels): %d lines, Len %d, %d bytes", forward.MaxTunnels, len(pe.Lines()), pe.Len(), len(err.Error()))
	}
	if len(h.p.Tunnels()) != 0 {
		t.Fatal("a refused list changed the tunnels")
	}
}

func TestPutClientSaveFailureUndoes(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store)
	store.setFail(true)
	if _, err := h.p.PutClient("b", reg("", 2)); err == nil || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("PutClient with a failing store = %v", err)
	}
	if h.dev.has(key(2)) {
		t.Error("the refused registration left its peer in the device")
	}
	if _, ok := h.p.Clients()["b"]; ok {
		t.Error("the refused client is registered")
	}
	if _, ok := h.dir().Peer("b"); ok {
		t.Error("the refused client was published")
	}
	store.setFail(false)
	st, err := h.p.PutClient("b", reg("b", 2))
	if err != nil {
		t.Fatal(err)
	}
	if st.CurrentState != ClientUnknown || st.PublicKey != key(2).String() || !h.dev.has(key(2)) {
		t.Errorf("registered: %+v", st)
	}
	if saved := store.state().Clients; len(saved) != 1 || saved[0].ClientId != "b" {
		t.Errorf("saved clients %+v", saved)
	}
}

func TestPutClientRefusesBadRegistrations(t *testing.T) {
	h := newHarness(t, &memStore{}, reg("a", 1))
	cases := []struct {
		id   string
		r    Registration
		kind error
		want []string
	}{
		{"has space", Registration{PublicKey: "nope"}, ErrInvalid, []string{"ClientId", "PublicKey"}},
		{"b", Registration{ClientId: "c", PublicKey: key(3).String()}, ErrInvalid, []string{"differs"}},
		{"b", Registration{PublicKey: key(0xee).String()}, ErrInvalid, []string{"server's own key"}},
		{"b", Registration{PublicKey: key(1).String()}, ErrConflict, []string{`client "a"`}},
	}
	for _, tc := range cases {
		_, err := h.p.PutClient(tc.id, tc.r)
		if !errors.Is(err, tc.kind) {
			t.Errorf("%s %+v: %v, want %v", tc.id, tc.r, err, tc.kind)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %s", tc.id, err, w)
			}
		}
	}
	if n := len(h.p.Clients()); n != 1 {
		t.Errorf("%d clients after refused registrations", n)
	}
}

func TestKeyRotation(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1), reg("b", 9))
	h.connected("a")
	h.connected("b")
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(80, "a"), tunnel(81, "b")}); err != nil {
		t.Fatal(err)
	}
	liveA := h.net.connect(t, "127.0.0.1:80")
	echo(t, liveA, "a")
	liveB := h.net.connect(t, "127.0.0.1:81")
	echo(t, liveB, "b")
	sent, _ := h.p.EgressCounters("a")
	sent.Add(42)
	oldAddr, _ := h.dir().Peer("a")

	// A rotation that cannot be saved changes nothing.
	store.setFail(true)
	if _, err := h.p.PutClient("a", reg("a", 2)); err == nil {
		t.Fatal("rotation with a failing store succeeded")
	}
	if !h.dev.has(key(1)) || h.dev.has(key(2)) {
		t.Error("a refused rotation changed the device's peers")
	}
	echo(t, liveA, "still a")
	if p, _ := h.dir().Peer("a"); p.Addr != oldAddr.Addr || !p.Connected {
		t.Errorf("a refused rotation changed the published client: %+v", p)
	}
	if h.egress.closes("a") != 0 {
		t.Error("a refused rotation closed egress sessions")
	}

	store.setFail(false)
	st, err := h.p.PutClient("a", reg("a", 2))
	if err != nil {
		t.Fatal(err)
	}
	if h.dev.has(key(1)) || !h.dev.has(key(2)) {
		t.Error("after the rotation the device should hold only the new key")
	}
	closed(t, liveA)
	echo(t, liveB, "b untouched")
	if h.egress.closes("a") != 1 || h.egress.closes("b") != 0 {
		t.Errorf("egress closes: a %d, b %d", h.egress.closes("a"), h.egress.closes("b"))
	}
	if st.Socks5BytesSent != 42 {
		t.Errorf("egress counter after the rotation: %d, want 42 (kept)", st.Socks5BytesSent)
	}
	p, _ := h.dir().Peer("a")
	if p.Addr == oldAddr.Addr || p.Addr != h.dev.Addr(key(2)) || p.Connected {
		t.Errorf("published after rotation: %+v (the new key has not been heard from)", p)
	}
	if _, ok := h.dir().ByAddr(oldAddr.Addr); ok {
		t.Error("the old tunnel address still names a client")
	}
	if saved := store.state().Clients; len(saved) != 2 || saved[0].PublicKey != key(2).String() {
		t.Errorf("saved %+v", saved)
	}
}

func TestSocks5ToggleAllOrNothing(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1))
	off := false
	store.setFail(true)
	if _, err := h.p.PutClient("a", Registration{PublicKey: key(1).String(), Socks5Enabled: &off}); err == nil {
		t.Fatal("toggle with a failing store succeeded")
	}
	if p, _ := h.dir().Peer("a"); !p.Socks5 || h.egress.closes("a") != 0 {
		t.Errorf("a refused toggle took effect: %+v, %d closes", p, h.egress.closes("a"))
	}
	store.setFail(false)
	st, err := h.p.PutClient("a", Registration{PublicKey: key(1).String(), Socks5Enabled: &off})
	if err != nil || st.Socks5Enabled {
		t.Fatalf("toggle: %+v, %v", st, err)
	}
	if p, _ := h.dir().Peer("a"); p.Socks5 || h.egress.closes("a") != 1 {
		t.Errorf("after disabling: %+v, %d closes", p, h.egress.closes("a"))
	}
	if s := store.state().Clients[0].Socks5Enabled; s == nil || *s {
		t.Error("the toggle was not saved")
	}
}

func TestDeleteClient(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1), reg("b", 2))
	h.connected("a")
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(80, "b", "a")}); err != nil {
		t.Fatal(err)
	}
	live := h.net.connect(t, "127.0.0.1:80") // b is not connected: goes to a
	echo(t, live, "via a")

	err := h.p.DeleteClient("a")
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "tunnels[0]") {
		t.Fatalf("deleting a client in use = %v", err)
	}
	if err := h.p.DeleteClient("nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting an unknown client = %v", err)
	}
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(80, "b")}); err != nil {
		t.Fatal(err)
	}
	echo(t, live, "tunnel changed, connection kept")

	store.setFail(true)
	if err := h.p.DeleteClient("a"); err == nil || !strings.Contains(err.Error(), "kept") {
		t.Fatalf("delete with a failing store = %v", err)
	}
	if !h.dev.has(key(1)) {
		t.Error("a refused delete removed the peer")
	}
	echo(t, live, "refused delete, connection kept")

	store.setFail(false)
	if err := h.p.DeleteClient("a"); err != nil {
		t.Fatal(err)
	}
	if h.dev.has(key(1)) {
		t.Error("the peer stayed")
	}
	if _, ok := h.dir().Peer("a"); ok {
		t.Error("the deleted client is still published")
	}
	closed(t, live)
	if saved := store.state().Clients; len(saved) != 1 || saved[0].ClientId != "b" {
		t.Errorf("saved %+v", saved)
	}
}

func TestLiveness(t *testing.T) {
	h := newHarness(t, &memStore{}, reg("a", 1))
	p, _ := h.dir().Peer("a")
	if p.Connected || h.p.Clients()["a"].CurrentState != ClientUnknown {
		t.Fatal("a client never heard from is connected")
	}
	h.p.Heard(netip.MustParseAddr("fd00::dead")) // nobody's address: ignored
	h.p.Heard(p.Addr)
	h.p.check()
	st := h.p.Clients()["a"]
	if p, _ := h.dir().Peer("a"); !p.Connected || st.CurrentState != ClientConnected || st.LastState != ClientUnknown {
		t.Fatalf("after a heartbeat: %+v, %+v", p, st)
	}
	var tn []forward.Tunnel
	var err error
	if tn, err = h.p.SetTunnels([]forward.Tunnel{tunnel(80, "a")}); err != nil || tn[0].ActiveClientId != "a" {
		t.Fatalf("active client: %+v, %v", tn, err)
	}
	h.advance(DefaultHeartbeatTimeout - time.Millisecond)
	h.p.check()
	if p, _ := h.dir().Peer("a"); !p.Connected {
		t.Fatal("disconnected before the timeout")
	}
	h.advance(2 * time.Millisecond)
	h.p.check()
	st = h.p.Clients()["a"]
	if p, _ := h.dir().Peer("a"); p.Connected || st.CurrentState != ClientDisconnected || st.LastState != ClientConnected {
		t.Fatalf("after the timeout: %+v, %+v", p, st)
	}
	if tn := h.p.Tunnels(); tn[0].ActiveClientId != "" {
		t.Errorf("active client of a tunnel whose client is gone: %q", tn[0].ActiveClientId)
	}
	if !strings.Contains(h.logs.String(), "state=ClientDisconnected") {
		t.Error("the state change was not logged")
	}
}

func TestRestoreAndBootstrap(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1))
	if saved := store.state(); !store.found || len(saved.Clients) != 1 {
		t.Fatalf("first start did not save the bootstrap clients: %+v", saved)
	}
	if _, err := h.p.PutClient("a", reg("a", 2)); err != nil { // rotated through the API
		t.Fatal(err)
	}
	if _, err := h.p.SetTunnels([]forward.Tunnel{tunnel(80, "a")}); err != nil {
		t.Fatal(err)
	}
	h.p.Close()
	h.gw.Close()

	// A restart with the same bootstrap: the state wins, both differences are logged.
	h2 := newHarness(t, store, reg("a", 1), reg("c", 3))
	if cs := h2.p.Clients(); len(cs) != 1 || cs["a"].PublicKey != key(2).String() {
		t.Errorf("restored clients %+v", cs)
	}
	if !h2.dev.has(key(2)) || h2.dev.has(key(1)) || h2.dev.has(key(3)) {
		t.Error("restored device peers are not the saved ones")
	}
	if tn := h2.p.Tunnels(); len(tn) != 1 || tn[0].ListenPort != 80 || !h2.net.open("127.0.0.1:80") {
		t.Errorf("restored tunnels %+v", tn)
	}
	logs := h2.logs.String()
	for _, w := range []string{"differs from the saved state and is ignored", "is not in the saved state and is ignored"} {
		i := strings.Index(logs, w)
		if i < 0 {
			t.Errorf("log lacks %q:\n%s", w, logs)
			continue
		}
		line, _, _ := strings.Cut(logs[i:], "\n")
		if want := map[bool]string{true: "client=a", false: "client=c"}[strings.HasPrefix(w, "differs")]; !strings.Contains(line, want) {
			t.Errorf("%q names the wrong client: %s", w, line)
		}
	}
}

func TestRestoreFailureLeavesNothing(t *testing.T) {
	store := &memStore{found: true, saved: Saved{Version: 1, Clients: []Registration{reg("a", 1)}, Tunnels: []forward.Tunnel{tunnel(80, "a")}}}
	dev := &fakeDevice{peers: map[Key]bool{}}
	n := &memNet{listeners: map[string]*memListener{}, busy: map[string]bool{"127.0.0.1:80": true}}
	log := slog.New(slog.DiscardHandler)
	gw, err := forward.NewGateway(forward.GatewayConfig{Directory: func() *forward.Directory { return nil }, Dial: n.dial, Listen: n.listen, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	_, err = New(Options{Device: dev, Gateway: gw, Store: store, Publish: func(*forward.Directory) {}, Logger: log})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "restoring tunnels") {
		t.Fatalf("New with a saved port busy = %v", err)
	}
	if len(dev.peers) != 0 {
		t.Error("a failed New left peers in the device")
	}
}

func TestNewRequires(t *testing.T) {
	_, err := New(Options{})
	for _, w := range []string{"Device", "Gateway", "Publish", "Logger"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("New(Options{}) = %v, want %s named", err, w)
		}
	}
}

func TestProblemsBounded(t *testing.T) {
	p := NewProblems(ErrInvalid, "tunnel list")
	for i := range 340000 {
		p.Addf(fmt.Sprintf("tunnels[%d].ListenPort", i), "%d is not a port number", 0)
	}
	lines := p.Lines()
	if len(lines) != MaxProblems+1 || lines[MaxProblems] != fmt.Sprintf("and %d more", 340000-MaxProblems) {
		t.Fatalf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
	if p.Len() != 340000 || len(p.Error()) > 4096 {
		t.Errorf("Len %d, Error %d bytes", p.Len(), len(p.Error()))
	}
	if !errors.Is(p, ErrInvalid) || p.Title() != "invalid tunnel list" {
		t.Errorf("kind %v, title %q", p.Unwrap(), p.Title())
	}
	c := NewProblems(ErrConflict, "tunnel list")
	c.AddErr(errors.Join(errors.New("one"), errors.Join(errors.New("two"), errors.New("three"))))
	c.AddErr(p)
	if got := c.Lines(); len(got) != MaxProblems+1 || got[0] != "one" || got[2] != "three" || c.Len() != 340003 {
		t.Errorf("AddErr: %d lines %q..., Len %d", len(got), got[:3], c.Len())
	}
	if c.Title() != "tunnel list: conflict" {
		t.Errorf("title %q", c.Title())
	}
	if NewProblems(nil, "x").Err() != nil {
		t.Error("no problems is an error")
	}
}
