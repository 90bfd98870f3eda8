package control

import (
	"net/netip"
	"time"
)

// Diagnoses of registered clients, for the server's log and GET /clients:
// a client whose config names it otherwise than its registration (from
// the Hello it sends, forward/hello.go), and a key that completes
// WireGuard handshakes but sends no heartbeats.

const (
	// silentAfterHandshake is how long after a handshake a client's
	// first heartbeat may take (they come every second) before the
	// server says it has none.
	silentAfterHandshake = 10 * time.Second
	// silentWarnEvery bounds that line per client.
	silentWarnEvery = 5 * time.Minute
	// diagnoseEvery is how often the WireGuard counters are read for it.
	diagnoseEvery = 2 * time.Second
)

// diagState is a client's diagnostic state, guarded by Plane.mu.
type diagState struct {
	reported     string    // the ClientId the client gives itself
	loggedName   string    // the last mismatching name logged
	silentWarned time.Time // when the heartbeat-less handshake was last logged
}

// HeardName records the name a client gives itself in its Hello, from a
// tunnel address (authenticated, as for Heard). A name that differs from
// the registered one is logged once.
func (p *Plane) HeardName(from netip.Addr, name string) {
	if CheckClientID(name) != nil {
		return // not a name a config could hold; not ours to print
	}
	p.mu.Lock()
	c := p.byAddr[from.Unmap()]
	if c == nil {
		p.mu.Unlock()
		return
	}
	c.diag.reported = name
	logIt := name != c.id && name != c.diag.loggedName
	if logIt {
		c.diag.loggedName = name
	}
	id := c.id
	p.mu.Unlock()
	if logIt {
		p.log.Warn("client calls itself by another name than it is registered under: its ClientId in its client.json differs, so the two sides' logs name it differently; set that ClientId to the registered one (or register the client under its own name)",
			"client", id, "client_says", name, "public_key", c.key.String())
	}
}

// diagnose looks for clients whose handshakes succeed while no heartbeat
// follows. It reads the device's counters, so it runs every
// diagnoseEvery, not with every check.
func (p *Plane) diagnose() {
	stats := p.opts.Device.Stats()
	now := p.now()
	type silent struct {
		id, key string
		hs      time.Time
	}
	var found []silent
	p.mu.Lock()
	for _, c := range p.clients {
		hs := stats[c.key].LastHandshake
		if hs.IsZero() || now.Sub(hs) < silentAfterHandshake || now.Sub(hs) > silentWarnEvery {
			continue
		}
		if heard := c.heard.Load(); heard != 0 && time.Unix(0, heard).After(hs) {
			continue
		}
		if !c.diag.silentWarned.IsZero() && now.Sub(c.diag.silentWarned) < silentWarnEvery {
			continue
		}
		c.diag.silentWarned = now
		found = append(found, silent{c.id, c.key.String(), hs})
	}
	p.mu.Unlock()
	for _, s := range found {
		p.log.Warn("client completes WireGuard handshakes but sends no heartbeats, so it is not judged connected and gets no connections: "+
			"what holds its key is probably not a threshold client (a plain WireGuard peer, say) or one too old for this server; check what runs with public_key (below)",
			"client", s.id, "public_key", s.key, "last_handshake", s.hs.UTC().Format(time.RFC3339), "since", now.Sub(s.hs).Round(time.Second).String())
	}
}
