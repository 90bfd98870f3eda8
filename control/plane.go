package control

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thresholdtunnel/threshold/forward"
)

// Device is the WireGuard device as the control plane drives it: one peer
// per registered client. Package server adapts a wg.Device to it.
type Device interface {
	// ParseKey reads a public key as wg(8) prints it.
	ParseKey(s string) (Key, error)
	// Addr is the tunnel address that belongs to a key.
	Addr(k Key) netip.Addr
	// AddPeer lets the holder of k into the tunnel, with Addr(k) as its
	// only allowed IP. An error wrapping ErrConflict means another peer
	// holds that address already.
	AddPeer(k Key) error
	RemovePeer(k Key) error
	// Stats reports each peer's WireGuard counters.
	Stats() map[Key]PeerStats
}

// PeerStats is what WireGuard reports for a peer.
type PeerStats struct {
	LastHandshake    time.Time // zero if never
	RxBytes, TxBytes uint64
}

// Gateway is the public side as the control plane changes it
// (forward.Gateway).
type Gateway interface {
	Prepare([]forward.Tunnel) (*forward.Change, error)
	Tunnels() []forward.Tunnel
	CloseClient(clientID string) int
}

// Egress is SOCKS5 egress as the control plane sees it (forward.Egress).
type Egress interface {
	CloseClient(clientID string) int
}

// Options configures a Plane.
type Options struct {
	Device  Device  // required
	Gateway Gateway // required
	Egress  Egress  // optional
	// Store keeps clients and tunnels across restarts; nil keeps nothing.
	Store Store
	// Publish is given every new Directory of the clients, which the
	// forwarders read for each new connection. Required.
	Publish func(*forward.Directory)
	// ServerKey is the server's own public key, refused as a client's.
	ServerKey Key
	// Bootstrap registers clients when the Store holds no state yet (the
	// server config's Clients). Once there is state it is authoritative,
	// and entries that differ from it are only logged.
	Bootstrap []Registration
	// HeartbeatTimeout: a client is connected while its last heartbeat is
	// younger than this; DefaultHeartbeatTimeout if zero.
	HeartbeatTimeout time.Duration
	Logger           *slog.Logger // required
	// Now is the clock; time.Now if nil (tests give their own, before
	// the Plane starts watching).
	Now func() time.Time
}

// How a client is judged connected: it pings the server through the tunnel
// every second; the server calls it connected while the last ping is
// younger than the heartbeat timeout. A lost client is therefore noticed
// within the timeout plus one check.
const (
	DefaultHeartbeatTimeout = 3 * time.Second
	checkInterval           = 250 * time.Millisecond
)

// Plane is the server's control plane, the one owner of client state: the
// registered clients and their liveness, the tunnel list, and their
// persistence. Every change is all or nothing: what can be undone (a new
// peer, new listeners) is done first, then the change is saved, and only
// then is anything cut (connections of a removed tunnel or client, a
// rotated key's peer). A change that cannot be saved is undone and closes
// nothing. Readers get an immutable Directory, published on each change.
type Plane struct {
	opts Options
	log  *slog.Logger

	opMu sync.Mutex // serializes changes

	mu      sync.Mutex // guards the maps and each client's state fields
	clients map[string]*client
	byAddr  map[netip.Addr]*client

	stop chan struct{}
	done chan struct{}
	once sync.Once
	now  func() time.Time // Options.Now
}

type client struct {
	id    string
	key   Key
	addr  netip.Addr
	socks bool
	heard atomic.Int64 // unix nanos of the last heartbeat; 0 if none
	// state and lastState are guarded by Plane.mu.
	state, lastState State
	// SOCKS5 egress payload bytes, kept across key rotations.
	egressSent, egressReceived *atomic.Uint64
	diag                       diagState // diagnose.go
}

// New validates opts, registers the saved (or bootstrap) clients and puts
// the saved tunnels in force, then starts watching heartbeats. Nothing it
// did is left running if it fails.
func New(opts Options) (_ *Plane, err error) {
	var errs []error
	if opts.Device == nil {
		errs = append(errs, errors.New("control: Options.Device is required"))
	}
	if opts.Gateway == nil {
		errs = append(errs, errors.New("control: Options.Gateway is required"))
	}
	if opts.Publish == nil {
		errs = append(errs, errors.New("control: Options.Publish is required"))
	}
	if opts.Logger == nil {
		errs = append(errs, errors.New("control: Options.Logger is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if opts.HeartbeatTimeout <= 0 {
		opts.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Plane{
		opts:    opts,
		log:     opts.Logger,
		clients: make(map[string]*client),
		byAddr:  make(map[netip.Addr]*client),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		now:     opts.Now,
	}
	if err := p.restore(); err != nil {
		p.mu.Lock()
		for _, c := range p.clients {
			p.opts.Device.RemovePeer(c.key)
		}
		p.mu.Unlock()
		return nil, err
	}
	go p.watch()
	return p, nil
}

func (p *Plane) restore() error {
	saved, found := Saved{}, false
	if p.opts.Store != nil {
		var err error
		if saved, found, err = p.opts.Store.Load(); err != nil {
			return err
		}
	}
	regs := p.opts.Bootstrap
	if found {
		p.log.Info("restoring state", "clients", len(saved.Clients), "tunnels", len(saved.Tunnels))
		regs = saved.Clients
		p.warnIgnoredBootstrap(saved.Clients)
	}
	for i, r := range regs {
		c, err := p.newClient(r.ClientId, r)
		if err != nil {
			return fmt.Errorf("registering client %d (%q): %w", i, r.ClientId, err)
		}
		if err := p.opts.Device.AddPeer(c.key); err != nil {
			return fmt.Errorf("registering client %q: %w", c.id, err)
		}
		p.mu.Lock()
		p.add(c)
		p.mu.Unlock()
	}
	p.mu.Lock()
	p.publish()
	p.mu.Unlock()
	if len(saved.Tunnels) > 0 {
		change, err := p.opts.Gateway.Prepare(saved.Tunnels)
		if err != nil {
			return fmt.Errorf("restoring tunnels: %w", p.changeError(err))
		}
		if err := change.Commit(); err != nil {
			return fmt.Errorf("restoring tunnels: %w", err)
		}
	}
	if !found && p.opts.Store != nil {
		// The first start: keep the bootstrap clients as the state.
		return p.save(p.registrations(nil), nil)
	}
	return nil
}

// warnIgnoredBootstrap logs the config Clients entries the saved state
// does not hold as written.
func (p *Plane) warnIgnoredBootstrap(saved []Registration) {
	byID := make(map[string]Registration, len(saved))
	for _, r := range saved {
		byID[r.ClientId] = r
	}
	for _, b := range p.opts.Bootstrap {
		s, ok := byID[b.ClientId]
		switch {
		case !ok:
			p.log.Warn("config Clients entry is not in the saved state and is ignored: the state is authoritative; register the client through the API", "client", b.ClientId)
		case !sameRegistration(p.opts.Device, b, s):
			p.log.Warn("config Clients entry differs from the saved state and is ignored: the state is authoritative; change the client through the API", "client", b.ClientId)
		}
	}
}

func sameRegistration(d Device, a, b Registration) bool {
	k1, err1 := d.ParseKey(a.PublicKey)
	k2, err2 := d.ParseKey(b.PublicKey)
	return err1 == nil && err2 == nil && k1 == k2 && a.Socks5() == b.Socks5()
}

// newClient checks a registration and makes the client it stands for.
func (p *Plane) newClient(id string, r Registration) (*client, error) {
	probs := NewProblems(ErrInvalid, "client registration")
	key := p.checkRegistration(id, r, probs)
	if err := probs.Err(); err != nil {
		return nil, err
	}
	return &client{id: id, key: key, addr: p.opts.Device.Addr(key), socks: r.Socks5(),
		state: ClientUnknown, lastState: ClientUnknown,
		egressSent: new(atomic.Uint64), egressReceived: new(atomic.Uint64)}, nil
}

// checkRegistration reports the problems of a registration and returns
// its key.
func (p *Plane) checkRegistration(id string, r Registration, probs *Problems) Key {
	if err := CheckClientID(id); err != nil {
		probs.Addf("ClientId", "%v", err)
	} else if r.ClientId != "" && r.ClientId != id {
		probs.Addf("ClientId", "%q in the body differs from %q in the path", r.ClientId, id)
	}
	key, err := p.opts.Device.ParseKey(r.PublicKey)
	if err != nil {
		probs.Addf("PublicKey", "%v", err)
	} else if key == p.opts.ServerKey {
		probs.Addf("PublicKey", "is the server's own key")
	}
	return key
}

// add puts c in the maps; p.mu is held.
func (p *Plane) add(c *client) {
	p.clients[c.id] = c
	p.byAddr[c.addr] = c
}

// publish gives the forwarders a new Directory; p.mu is held, so
// Directories are published in the order the changes were made.
func (p *Plane) publish() {
	peers := make([]forward.Peer, 0, len(p.clients))
	for _, c := range p.clients {
		peers = append(peers, forward.Peer{
			ID:           c.id,
			Addr:         c.addr,
			Connector:    netip.AddrPortFrom(c.addr, forward.ConnectorPort),
			UDPConnector: netip.AddrPortFrom(c.addr, forward.UDPConnectorPort),
			Connected:    c.state == ClientConnected,
			Socks5:       c.socks,
		})
	}
	p.opts.Publish(forward.NewDirectory(peers...))
}

// registrations lists the clients as saved, with change applied to the
// map first (nil: as they are), sorted by ID.
func (p *Plane) registrations(change func(map[string]Registration)) []Registration {
	p.mu.Lock()
	m := make(map[string]Registration, len(p.clients)+1)
	for id, c := range p.clients {
		socks := c.socks
		m[id] = Registration{ClientId: id, PublicKey: c.key.String(), Socks5Enabled: &socks}
	}
	p.mu.Unlock()
	if change != nil {
		change(m)
	}
	out := make([]Registration, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Registration) int { return strings.Compare(a.ClientId, b.ClientId) })
	return out
}

// save stores clients and tunnels; tunnels nil means those in force.
func (p *Plane) save(regs []Registration, tunnels []forward.Tunnel) error {
	if p.opts.Store == nil {
		return nil
	}
	if tunnels == nil {
		tunnels = p.opts.Gateway.Tunnels()
	}
	return p.opts.Store.Save(Saved{Clients: regs, Tunnels: tunnels})
}

// changeError turns what forward.Gateway.Prepare refused into Problems.
func (p *Plane) changeError(err error) error {
	switch {
	case errors.Is(err, forward.ErrInvalid):
		probs := NewProblems(ErrInvalid, "tunnel list")
		probs.AddErr(err)
		return probs
	case errors.Is(err, forward.ErrListen):
		probs := NewProblems(ErrConflict, "tunnel list")
		probs.AddErr(err)
		return probs
	}
	return err
}

// Tunnels returns the tunnels in force, each with its active client.
func (p *Plane) Tunnels() []forward.Tunnel { return p.opts.Gateway.Tunnels() }

// SetTunnels replaces the whole tunnel list, all or nothing: it is
// checked, its new listeners are opened, it is saved, and only then put in
// force. It returns the list as applied, defaults filled in.
func (p *Plane) SetTunnels(ts []forward.Tunnel) ([]forward.Tunnel, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	probs := NewProblems(ErrInvalid, "tunnel list")
	if len(ts) > forward.MaxTunnels {
		forward.CheckTunnels(ts, probs) // says only that, without a copy
		return nil, probs
	}
	ts = slices.Clone(ts)
	p.checkTunnels(ts, probs)
	if err := probs.Err(); err != nil {
		return nil, err
	}
	change, err := p.opts.Gateway.Prepare(ts)
	if err != nil {
		return nil, p.changeError(err)
	}
	if err := p.save(p.registrations(nil), change.Tunnels()); err != nil {
		change.Abort()
		return nil, fmt.Errorf("%w; nothing was changed", err)
	}
	if err := change.Commit(); err != nil {
		// Only a gateway shutting down refuses; put the saved state back.
		if undoErr := p.save(p.registrations(nil), nil); undoErr != nil {
			p.log.Error("restoring the saved tunnels after a refused change", "err", undoErr)
		}
		return nil, err
	}
	return p.Tunnels(), nil
}

// CheckTunnels reports to probs every problem of a tunnel list that
// SetTunnels would refuse without opening anything, and changes nothing:
// for the management API, which checks what it could decode of a body
// with JSON problems so that all are reported at once.
func (p *Plane) CheckTunnels(ts []forward.Tunnel, probs *Problems) {
	if len(ts) <= forward.MaxTunnels {
		ts = slices.Clone(ts)
	}
	p.checkTunnels(ts, probs)
}

// checkTunnels normalizes ts in place and reports its problems: fields,
// routes claimed twice, unregistered clients.
func (p *Plane) checkTunnels(ts []forward.Tunnel, probs *Problems) {
	forward.CheckTunnels(ts, probs)
	if len(ts) > forward.MaxTunnels {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, t := range ts {
		for _, id := range t.Clients() {
			if id != "" && p.clients[id] == nil {
				probs.Addf("tunnels["+strconv.Itoa(i)+"]", "client %q is not registered", id)
			}
		}
	}
}

// CheckClient reports to probs every problem of a registration that
// PutClient would refuse before changing anything, and changes nothing.
func (p *Plane) CheckClient(id string, reg Registration, probs *Problems) {
	p.checkRegistration(id, reg, probs)
}

// Clients reports every registered client.
func (p *Plane) Clients() map[string]ClientStatus {
	stats := p.opts.Device.Stats()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]ClientStatus, len(p.clients))
	for id, c := range p.clients {
		out[id] = c.status(stats[c.key])
	}
	return out
}

// c.status needs Plane.mu held.
func (c *client) status(st PeerStats) ClientStatus {
	cs := ClientStatus{
		CurrentState:        c.state,
		LastState:           c.lastState,
		PublicKey:           c.key.String(),
		TunnelAddress:       c.addr.String(),
		BytesIn:             st.RxBytes,
		BytesOut:            st.TxBytes,
		Socks5Enabled:       c.socks,
		Socks5BytesSent:     c.egressSent.Load(),
		Socks5BytesReceived: c.egressReceived.Load(),
	}
	if c.diag.reported != c.id {
		cs.ReportedClientId = c.diag.reported
	}
	if !st.LastHandshake.IsZero() {
		t := st.LastHandshake.UTC()
		cs.LastHandshake = &t
	}
	return cs
}

// PutClient registers a client, rotates its key or changes its SOCKS5
// setting, and saves the change. A rotation replaces the peer and closes
// the client's connections; disabling SOCKS5 closes its egress sessions;
// other clients are untouched. A change that cannot be saved closes
// nothing.
func (p *Plane) PutClient(id string, reg Registration) (ClientStatus, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c, err := p.newClient(id, reg)
	if err != nil {
		return ClientStatus{}, err
	}
	p.mu.Lock()
	old := p.clients[id]
	for otherID, other := range p.clients {
		if otherID != id && other.key == c.key {
			p.mu.Unlock()
			return ClientStatus{}, fmt.Errorf("%w: PublicKey already belongs to client %q", ErrConflict, otherID)
		}
	}
	p.mu.Unlock()
	saved := p.registrations(func(m map[string]Registration) {
		socks := c.socks
		m[id] = Registration{ClientId: id, PublicKey: c.key.String(), Socks5Enabled: &socks}
	})

	if old != nil && old.key == c.key {
		p.mu.Lock()
		same := old.socks == c.socks
		p.mu.Unlock()
		if !same {
			if err := p.save(saved, nil); err != nil {
				return ClientStatus{}, fmt.Errorf("%w; nothing was changed", err)
			}
			p.mu.Lock()
			old.socks = c.socks
			p.publish()
			p.mu.Unlock()
			if !c.socks && p.opts.Egress != nil {
				p.opts.Egress.CloseClient(id)
			}
			p.log.Info("client SOCKS5 setting changed", "client", id, "socks5_enabled", c.socks)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return old.status(PeerStats{}), nil
	}

	if err := p.opts.Device.AddPeer(c.key); err != nil {
		return ClientStatus{}, err
	}
	if err := p.save(saved, nil); err != nil {
		if undoErr := p.opts.Device.RemovePeer(c.key); undoErr != nil {
			p.log.Error("undoing a client change that could not be saved", "client", id, "err", undoErr)
		}
		return ClientStatus{}, fmt.Errorf("%w; nothing was changed", err)
	}
	p.mu.Lock()
	if old != nil {
		c.egressSent, c.egressReceived = old.egressSent, old.egressReceived
		delete(p.byAddr, old.addr)
	}
	p.add(c)
	p.publish()
	st := c.status(PeerStats{})
	p.mu.Unlock()
	if old == nil {
		p.log.Info("client registered", "client", id, "tunnel_address", c.addr)
		return st, nil
	}
	if err := p.opts.Device.RemovePeer(old.key); err != nil {
		p.log.Warn("removing the rotated key's peer", "client", id, "err", err)
	}
	p.closeSessions(id)
	p.log.Info("client key rotated", "client", id, "tunnel_address", c.addr)
	return st, nil
}

func (p *Plane) closeSessions(id string) {
	p.opts.Gateway.CloseClient(id)
	if p.opts.Egress != nil {
		p.opts.Egress.CloseClient(id)
	}
}

// DeleteClient removes a client that no tunnel uses, and closes its
// connections once the change is saved.
func (p *Plane) DeleteClient(id string) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	c := p.clients[id]
	p.mu.Unlock()
	if c == nil {
		return fmt.Errorf("client %q: %w", id, ErrNotFound)
	}
	probs := NewProblems(ErrConflict, "client removal")
	for i, t := range p.opts.Gateway.Tunnels() {
		if slices.Contains(t.Clients(), id) {
			probs.Add(fmt.Sprintf("client %q is used by tunnels[%d] (%s); change that tunnel first", id, i, t.RouteKey()))
		}
	}
	if err := probs.Err(); err != nil {
		return err
	}
	if err := p.save(p.registrations(func(m map[string]Registration) { delete(m, id) }), nil); err != nil {
		return fmt.Errorf("%w; the client was kept", err)
	}
	p.mu.Lock()
	delete(p.clients, id)
	delete(p.byAddr, c.addr)
	p.publish()
	p.mu.Unlock()
	if err := p.opts.Device.RemovePeer(c.key); err != nil {
		p.log.Warn("removing the client's peer", "client", id, "err", err)
	}
	p.closeSessions(id)
	p.log.Info("client removed", "client", id)
	return nil
}

// EgressCounters are the SOCKS5 egress byte counters of a client (sent by
// the client, received from destinations); nil for an unknown client.
func (p *Plane) EgressCounters(id string) (sent, received *atomic.Uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.clients[id]; c != nil {
		return c.egressSent, c.egressReceived
	}
	return nil, nil
}

// Heard records a heartbeat from a tunnel address. WireGuard
// authenticates the address, so it stands for the client it belongs to.
func (p *Plane) Heard(from netip.Addr) {
	p.mu.Lock()
	c := p.byAddr[from.Unmap()]
	p.mu.Unlock()
	if c != nil {
		c.heard.Store(p.now().UnixNano())
	}
}

// watch judges the clients' states from their heartbeats until Close.
func (p *Plane) watch() {
	defer close(p.done)
	t := time.NewTicker(checkInterval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.check()
			if n%int(diagnoseEvery/checkInterval) == 0 {
				p.diagnose()
			}
		}
	}
}

// check moves each client to the state its heartbeats say, and publishes a
// new Directory if any moved.
func (p *Plane) check() {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := false
	for _, c := range p.clients {
		want := c.state
		heard := c.heard.Load()
		switch {
		case heard != 0 && now.Sub(time.Unix(0, heard)) < p.opts.HeartbeatTimeout:
			want = ClientConnected
		case c.state == ClientConnected:
			want = ClientDisconnected
		}
		if want != c.state {
			c.lastState, c.state = c.state, want
			changed = true
			p.log.Info("client state changed", "client", c.id, "state", string(want))
		}
	}
	if changed {
		p.publish()
	}
}

// Close stops watching heartbeats. It is idempotent; registered peers and
// tunnels stay as they are (their owners close them).
func (p *Plane) Close() error {
	p.once.Do(func() { close(p.stop) })
	<-p.done
	return nil
}
