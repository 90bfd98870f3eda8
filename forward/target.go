package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// The target side of the Gateway: a public connection, once matched to a
// tunnel (gateway.go), goes one way from here: failover dial to the
// tunnel's clients, link request, status, join. What the gateway knows of
// the clients is the newest Directory the control plane published; it
// never calls back into the control plane.

// failoverDialTimeout bounds a dial to a client when another client could
// take the connection instead: a live client answers well within it.
const failoverDialTimeout = 2 * time.Second

// forward hands a routed public connection to the tunnel's client. It
// reports whether the connection was joined: then the join, not the
// caller, calls ended (which ends the session and its admission) once the
// connection is over, and the handling goroutine is free to end while the
// connection lives on (its stack grew while it dialled through the tunnel).
func (g *Gateway) forward(s *session, public net.Conn, t Tunnel, ended func()) bool {
	log := g.log.With("tunnel", t.RouteKey(), "from", addrString(public.RemoteAddr()))
	up, peer, err := g.dial(t)
	if err != nil {
		g.logNoClient.log(log, slog.LevelInfo, "connection refused: no client reachable", "clients", t.Clients(), "err", err)
		g.cfg.Rejected(RejectNoClient)
		g.noteRefusal(t, "", RejectNoClient, err) // logged above
		s.close()
		return false
	}
	s.setClient(peer.ID)
	if !s.add(up) {
		return false
	}
	// A client removed or rotated while it was being dialled: its sessions
	// were closed before this one was tagged with it.
	if now, ok := g.cfg.Directory().Peer(peer.ID); !ok || now.Addr != peer.Addr || !now.Connected {
		s.close()
		return false
	}
	log = log.With("client", peer.ID)
	req := Request{
		Service:              t.BackEndService,
		Source:               addrPortOf(public.RemoteAddr()),
		Destination:          addrPortOf(public.LocalAddr()),
		BackendProxyProtocol: t.backendProxyVersion(),
	}
	_ = up.SetWriteDeadline(time.Now().Add(g.cfg.DialTimeout))
	if err := WriteRequest(up, req); err != nil {
		log.Info("connection refused: sending request to client", "err", err)
		g.cfg.Rejected(RejectNoClient)
		s.close()
		return false
	}
	_ = up.SetWriteDeadline(time.Time{})
	var m Meter
	var obs ConnObserver
	if g.cfg.Observe != nil {
		obs = g.cfg.Observe(t, peer.ID)
		m = Meter{AToB: obs.In, BToA: obs.Out}
	}
	release := g.life.hold()
	j := joinThen(public, &statusConn{Conn: up}, g.cfg.Timeouts, m, g.life.poll, func(res Joined) {
		defer release()
		defer ended()
		switch {
		case errors.Is(res.Err, ErrUnknownService):
			g.cfg.Rejected(RejectUnknownService)
			g.refused(t, peer.ID, RejectUnknownService, res.Err)
		case errors.Is(res.Err, ErrBackendUnreachable):
			g.cfg.Rejected(RejectBackendUnreachable)
			g.refused(t, peer.ID, RejectBackendUnreachable, res.Err)
		case errors.Is(res.Err, ErrRefused):
			g.cfg.Rejected(RejectClientRefused)
			g.refused(t, peer.ID, RejectClientRefused, res.Err)
		}
		log.Debug("connection done", "bytes_in", res.AToB, "bytes_out", res.BToA, "err", res.Err)
		if obs != nil {
			obs.Done()
		}
	})
	// The session closes the connection through the join (joinThen).
	s.add(j)
	return true
}

// dial reaches the first connected client of t that answers.
func (g *Gateway) dial(t Tunnel) (net.Conn, Peer, error) {
	candidates := g.cfg.Directory().Connected(t.Clients())
	if len(candidates) == 0 {
		return nil, Peer{}, fmt.Errorf("none of %v is connected", t.Clients())
	}
	var errs []error
	for i, p := range candidates {
		timeout := g.cfg.DialTimeout
		if i < len(candidates)-1 {
			timeout = min(timeout, failoverDialTimeout)
		}
		ctx, cancel := context.WithTimeout(g.life.ctx, timeout)
		up, err := g.cfg.Dial(ctx, p.Connector)
		cancel()
		if err == nil {
			return up, p, nil
		}
		errs = append(errs, fmt.Errorf("client %q: %w", p.ID, err))
		if g.life.ctx.Err() != nil {
			break
		}
	}
	return nil, Peer{}, errors.Join(errs...)
}
