package forward

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Refusals seen from the automation's side. A connection the client
// refuses (an unknown service, a service it cannot reach, its PROXY
// policy), or that no client can take, is logged on the server with what
// to check, at most a few lines per tunnel (a burst, then one every 10 s
// with the count held back), and the last one of each tunnel is kept for
// GET /tunnels (Tunnel.LastRefusal*). Only refusals pay for this: nothing
// here runs for a connection that is served.

// refusals holds the last refusal of each tunnel, by RouteKey.
type refusals struct {
	mu sync.Mutex
	m  map[string]*refusal
}

type refusal struct {
	reason, text string
	at           time.Time
	log          *throttle
}

// refused records that a connection of t was refused for reason (a
// Reject* reason), by client (empty if none took it), and logs it
// through the tunnel's throttle.
func (g *Gateway) refused(t Tunnel, client, reason string, err error) {
	key, text, lg := g.noteRefusal(t, client, reason, err)
	if lg == nil {
		return
	}
	args := []any{"tunnel", key, "reason", reason}
	if client != "" {
		args = append(args, "client", client)
	}
	lg.log(g.log, slog.LevelInfo, "connection refused: "+text, args...)
}

// noteRefusal records a refusal for GET /tunnels only (for refusals
// that have a log line of their own), and returns the tunnel's key, the sentence
// and the tunnel's log throttle; nil for a tunnel that is gone.
func (g *Gateway) noteRefusal(t Tunnel, client, reason string, err error) (string, string, *throttle) {
	text := refusalText(t, client, reason, err)
	key := t.RouteKey()
	g.refusals.mu.Lock()
	if g.refusals.m == nil {
		g.refusals.m = make(map[string]*refusal)
	}
	r := g.refusals.m[key]
	if r == nil {
		if !g.hasRoute(key) {
			g.refusals.mu.Unlock()
			return key, text, nil // removed meanwhile
		}
		g.refusals.pruneLocked(g)
		r = &refusal{log: newThrottle()}
		g.refusals.m[key] = r
	}
	r.reason, r.text, r.at = reason, text, time.Now().UTC()
	lg := r.log
	g.refusals.mu.Unlock()
	return key, text, lg
}

// pruneLocked forgets tunnels that are gone, once there are many of
// them; r.mu is held.
func (r *refusals) pruneLocked(g *Gateway) {
	if len(r.m) < 64 {
		return
	}
	for key := range r.m {
		if !g.hasRoute(key) {
			delete(r.m, key)
		}
	}
}

// fill sets the LastRefusal fields of t from what was recorded.
func (r *refusals) fill(t *Tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rf := r.m[t.RouteKey()]; rf != nil {
		at := rf.at
		t.LastRefusalReason, t.LastRefusal, t.LastRefusalAt = rf.reason, rf.text, &at
	}
}

// refusalText says, in a sentence, why and what to check.
func refusalText(t Tunnel, client, reason string, err error) string {
	svc := t.BackEndService
	switch reason {
	case RejectUnknownService:
		return fmt.Sprintf("client %q has no service %q: add it to ServiceToLocalAddrMap in that client's config, or correct the tunnel's BackEndService", client, svc)
	case RejectBackendUnreachable:
		return fmt.Sprintf("client %q could not connect to its service %q: check that the service runs at the address its ServiceToLocalAddrMap gives", client, svc)
	case RejectClientRefused:
		return fmt.Sprintf("client %q refused it by its PROXY policy: the tunnel's HaProxyProxyProtocol and the ProxyProtocol of %q in the client's ServiceToLocalAddrMap disagree, or the source address is not public and not in the client's ProxySourceAllowCIDRs; the client's log says which", client, svc)
	case RejectNoClient:
		s := fmt.Sprintf("no client of the tunnel (%s) is connected or answering", strings.Join(t.Clients(), ", "))
		if err != nil {
			s += ": " + err.Error()
		}
		return s
	case RejectSessionCap:
		return fmt.Sprintf("client %q holds as many UDP sessions as it allows", client)
	}
	if err != nil {
		return reason + ": " + err.Error()
	}
	return reason
}
