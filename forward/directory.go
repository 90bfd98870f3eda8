package forward

import "net/netip"

// Peer is one registered client, as the forwarders see it.
type Peer struct {
	ID string
	// Addr is the client's tunnel address. WireGuard authenticates the
	// source address of every packet, so a connection from Addr is the
	// client's.
	Addr netip.Addr
	// Connector is where the Gateway opens the client's tunneled
	// connections.
	Connector netip.AddrPort
	// UDPConnector is where the Gateway sends the client's UDP frames.
	UDPConnector netip.AddrPort
	// Connected: the client answers heartbeats. Only connected clients are
	// offered new connections.
	Connected bool
	// Socks5 lets the client use SOCKS5 egress.
	Socks5 bool
}

// Directory is an immutable snapshot of the registered clients. The
// control plane publishes a new one whenever a client is registered,
// removed or changes state; forwarders read the newest for each new
// connection, so they never call back into the control plane.
type Directory struct {
	byID   map[string]Peer
	byAddr map[netip.Addr]string
}

// NewDirectory returns a Directory of peers. Later peers replace earlier
// ones with the same ID or address.
func NewDirectory(peers ...Peer) *Directory {
	d := &Directory{byID: make(map[string]Peer, len(peers)), byAddr: make(map[netip.Addr]string, len(peers))}
	for _, p := range peers {
		p.Addr = p.Addr.Unmap()
		if old, ok := d.byID[p.ID]; ok {
			delete(d.byAddr, old.Addr)
		}
		d.byID[p.ID] = p
		if p.Addr.IsValid() {
			d.byAddr[p.Addr] = p.ID
		}
	}
	return d
}

// Peer looks a client up by ID. A nil Directory holds nobody.
func (d *Directory) Peer(id string) (Peer, bool) {
	if d == nil {
		return Peer{}, false
	}
	p, ok := d.byID[id]
	return p, ok
}

// ByAddr looks a client up by its tunnel address.
func (d *Directory) ByAddr(a netip.Addr) (Peer, bool) {
	if d == nil {
		return Peer{}, false
	}
	id, ok := d.byAddr[a.Unmap()]
	if !ok {
		return Peer{}, false
	}
	return d.byID[id], true
}

// Connected lists the connected clients among ids, in their order.
func (d *Directory) Connected(ids []string) []Peer {
	var out []Peer
	for _, id := range ids {
		if p, ok := d.Peer(id); ok && p.Connected {
			out = append(out, p)
		}
	}
	return out
}

// Active is the client a tunnel's new connections go to now: the first
// connected one in its list, or "" when none is.
func (d *Directory) Active(t Tunnel) string {
	if c := d.Connected(t.Clients()); len(c) > 0 {
		return c[0].ID
	}
	return ""
}
