package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// The status endpoint: GET /status on StatusListenAddress, a loopback
// address, answers the client's state as JSON, for threshold status and
// for monitoring. It is read-only and has no authentication: what it
// shows (public keys, server addresses, service addresses) is meant for
// the machine's own users.

// Status is what GET /status answers.
type Status struct {
	ClientId      string
	PublicKey     string
	TunnelAddress string
	StartedAt     time.Time
	// Servers are in the order of the config, which is SOCKS5's order.
	Servers  []ServerStatus
	Services []ServiceStatus
	Socks5   *Socks5Status `json:",omitempty"` // nil when SOCKS5 is off
}

// ServerStatus is the client's view of one server.
type ServerStatus struct {
	ServerHost              string
	ServerTunnelControlPort int
	ServerPublicKey         string
	// Endpoint is the address the server's name resolved to; empty while
	// it has none.
	Endpoint string `json:",omitempty"`
	// State is resolving, connecting (never answered yet), connected or
	// disconnected (answered, then stopped), since Since.
	State string
	Since time.Time
	// LastHandshake is the last WireGuard handshake, LastHeartbeat the
	// last heartbeat answer; nil if none.
	LastHandshake *time.Time `json:",omitempty"`
	LastHeartbeat *time.Time `json:",omitempty"`
	// BytesIn and BytesOut are WireGuard's encrypted byte counters.
	BytesIn, BytesOut uint64
	// Connections are the tunneled connections from this server,
	// UDPSessions its UDP sessions, and Socks5Connections the SOCKS5
	// connections relayed through it, now.
	Connections       int
	UDPSessions       int
	Socks5Connections int
	// ProxyRefused counts the connections and UDP sessions from this
	// server the client refused by its PROXY choice or source policy
	// (see "Who decides what the backend believes").
	ProxyRefused uint64
	// LastError is why the server has no address yet, if it has none.
	LastError string `json:",omitempty"`
}

// ServiceStatus is one entry of ServiceToLocalAddrMap.
type ServiceStatus struct {
	Name    string
	Address string
	// ProxyProtocol is the client's own PROXY choice for the service (the
	// object form); absent where the server's tunnel decides.
	ProxyProtocol *int `json:",omitempty"`
}

// Socks5Status is the SOCKS5 port and the server its connections leave
// from now.
type Socks5Status struct {
	ListenAddress string
	// Order is the servers in the order they are tried, as host:port.
	Order []string
	// Current is the first connected one; empty when none is.
	Current string
}

// Status reports the client's state.
func (c *Client) Status() Status {
	st := Status{
		ClientId:      c.cfg.ClientId,
		PublicKey:     c.key.PublicKey().String(),
		TunnelAddress: wg.ClientAddr(c.key.PublicKey()).String(),
		StartedAt:     c.started.UTC(),
	}
	for _, l := range c.links {
		st.Servers = append(st.Servers, l.status())
	}
	names := make([]string, 0, len(c.cfg.ServiceToLocalAddrMap))
	for name := range c.cfg.ServiceToLocalAddrMap {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		st.Services = append(st.Services, ServiceStatus{Name: name, Address: c.cfg.ServiceToLocalAddrMap[name].Address,
			ProxyProtocol: c.cfg.ServiceToLocalAddrMap[name].ProxyProtocol})
	}
	if c.socksLn != nil {
		s := &Socks5Status{ListenAddress: c.socksLn.Addr().String()}
		for _, l := range c.links {
			s.Order = append(s.Order, l.srv.String())
		}
		if via := c.socksVia(); via != nil {
			s.Current = via.srv.String()
		}
		st.Socks5 = s
	}
	return st
}

func (l *link) status() ServerStatus {
	l.mu.Lock()
	s := ServerStatus{
		ServerHost:              l.srv.ServerHost,
		ServerTunnelControlPort: l.srv.ServerTunnelControlPort,
		ServerPublicKey:         l.srv.ServerPublicKey,
		State:                   string(l.state),
		Since:                   l.since.UTC(),
	}
	if l.endpoint.IsValid() {
		s.Endpoint = l.endpoint.String()
	}
	if l.resolveErr != nil {
		s.LastError = l.resolveErr.Error()
	}
	l.mu.Unlock()
	if p, ok := l.peerStats(); ok {
		s.BytesIn, s.BytesOut = p.RxBytes, p.TxBytes
		if !p.LastHandshake.IsZero() {
			t := p.LastHandshake.UTC()
			s.LastHandshake = &t
		}
	}
	if n := l.lastPong.Load(); n != 0 {
		t := time.Unix(0, n).UTC()
		s.LastHeartbeat = &t
	}
	s.Connections = l.conn.Live()
	s.UDPSessions = l.udp.Sessions()
	s.Socks5Connections = l.relayed.count()
	s.ProxyRefused = l.conn.Refused() + l.udp.Refused()
	return s
}

// startStatus binds the status endpoint.
func (c *Client) startStatus() (err error) {
	if c.statusLn, err = net.Listen("tcp", c.cfg.StatusListenAddress); err != nil {
		return fmt.Errorf("StatusListenAddress: %w", err)
	}
	c.onClose(c.statusLn.Close)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		body, err := json.MarshalIndent(c.Status(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(body, '\n'))
	})
	c.status = &http.Server{
		Handler:           loopbackHostOnly(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
	}
	c.onClose(c.status.Close)
	c.log.Info("status endpoint listening", "address", "http://"+c.statusLn.Addr().String()+"/status")
	return nil
}

func (c *Client) serveStatus() {
	if err := c.status.Serve(c.statusLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
		c.log.Warn("status endpoint stopped", "err", err)
	}
}

// loopbackHostOnly refuses requests whose Host is not a loopback name or
// address: a web page the user visits could otherwise read the status
// through a name of its own that it points at 127.0.0.1 (DNS rebinding).
func loopbackHostOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		a, err := netip.ParseAddr(host)
		if host != "localhost" && (err != nil || !a.IsLoopback()) {
			http.Error(w, "the status endpoint answers only requests for a loopback address or localhost", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
