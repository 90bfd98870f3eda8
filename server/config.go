package server

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/mgmt"
	"github.com/thresholdtunnel/threshold/wg"
)

// Config is the server's JSON config; names follow the original threshold.
type Config struct {
	DebugLog          bool
	LogFormat         string // "text" (default) or "json"
	TunnelControlPort int    // WireGuard UDP port
	ManagementPort    int    // management API TCP port
	ManagementAddress string // default 127.0.0.1
	// StateDir keeps the server key, registered clients and tunnels, so a
	// restart comes back as it was. Empty: nothing is kept but the key.
	StateDir       string
	PrivateKeyFile string // generated (0600) if missing; StateDir/server.key by default
	// Clients are registered on the first start (see control.Options.Bootstrap).
	Clients []control.Registration

	// Management API authentication: mutual TLS (all three files), and/or
	// a bearer token. Without either the API only listens on loopback.
	CaCertificateFile        string
	ServerTlsCertificateFile string
	ServerTlsKeyFile         string
	ManagementTokenFile      string

	// ShutdownGracePeriodSeconds: on SIGTERM, how long live connections
	// may go on before they are closed; 10 when zero.
	ShutdownGracePeriodSeconds float64
	// HostnamePeekTimeoutSeconds bounds the wait for a TLS ClientHello or
	// HTTP request head on ports shared by host name; 5 when zero.
	HostnamePeekTimeoutSeconds float64

	// Admission limits on what the internet can hold open (see
	// forward.GatewayLimits); 0 takes the default.
	MaxPublicConnections          int // live public connections, in all
	MaxPublicConnectionsPerSource int // per source IPv4 address or IPv6 /64
	MaxHostnamePeeks              int // connections whose host name is being read, in all
	MaxHostnamePeeksPerSource     int // the same per source
	// ...and on each client's SOCKS5 sessions (forward.EgressLimits).
	Socks5MaxHandshakesPerClient int
	Socks5MaxSessionsPerClient   int

	// SOCKS5 egress. The default policy denies private, loopback,
	// link-local and other non-public destinations; these add to it.
	Socks5EgressAddress string   // source IP for egress; the OS picks if empty
	Socks5AllowCIDRs    []string // exceptions to the default deny list
	Socks5DenyCIDRs     []string
	Socks5AllowPorts    []string // if set, only these ports ("25", "8000-8099")
	Socks5DenyPorts     []string
}

// Defaults.
const (
	DefaultTunnelControlPort = 9056
	DefaultManagementPort    = 9057
	DefaultManagementAddress = "127.0.0.1"
	DefaultKeyFile           = "threshold-server.key"
)

// FillDefaults fills in what was left out.
func (c *Config) FillDefaults() {
	if c.TunnelControlPort == 0 {
		c.TunnelControlPort = DefaultTunnelControlPort
	}
	if c.ManagementPort == 0 {
		c.ManagementPort = DefaultManagementPort
	}
	if c.ManagementAddress == "" {
		c.ManagementAddress = DefaultManagementAddress
	}
	if c.PrivateKeyFile == "" {
		c.PrivateKeyFile = DefaultKeyFile
		if c.StateDir != "" {
			c.PrivateKeyFile = filepath.Join(c.StateDir, "server.key")
		}
	}
	if c.ShutdownGracePeriodSeconds == 0 {
		c.ShutdownGracePeriodSeconds = 10
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if c.HostnamePeekTimeoutSeconds == 0 {
		c.HostnamePeekTimeoutSeconds = 5
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxPublicConnections, forward.DefaultMaxConnections)
	def(&c.MaxPublicConnectionsPerSource, forward.DefaultMaxConnectionsPerSource)
	def(&c.MaxHostnamePeeks, forward.DefaultMaxPeeks)
	def(&c.MaxHostnamePeeksPerSource, forward.DefaultMaxPeeksPerSource)
	def(&c.Socks5MaxHandshakesPerClient, forward.DefaultSocksHandshakesPerClient)
	def(&c.Socks5MaxSessionsPerClient, forward.DefaultSocksSessionsPerClient)
}

// maxLimit bounds the admission limits a config may set.
const maxLimit = 1_000_000

func (c *Config) limits() (forward.GatewayLimits, forward.EgressLimits) {
	return forward.GatewayLimits{
			Connections: c.MaxPublicConnections, ConnectionsPerSource: c.MaxPublicConnectionsPerSource,
			Peeks: c.MaxHostnamePeeks, PeeksPerSource: c.MaxHostnamePeeksPerSource,
		}, forward.EgressLimits{
			HandshakesPerClient: c.Socks5MaxHandshakesPerClient, SessionsPerClient: c.Socks5MaxSessionsPerClient,
		}
}

// check adds every problem of a config with defaults filled in that can
// be found without reading a file.
func (c *Config) check(p *control.Problems) {
	checkPort(p, "TunnelControlPort", c.TunnelControlPort)
	checkPort(p, "ManagementPort", c.ManagementPort)
	if c.HostnamePeekTimeoutSeconds < 0 || c.HostnamePeekTimeoutSeconds > 300 {
		p.Addf("HostnamePeekTimeoutSeconds", "%v is not between 0 and 300", c.HostnamePeekTimeoutSeconds)
	}
	if a, err := netip.ParseAddr(c.ManagementAddress); err != nil || a.Zone() != "" {
		p.Addf("ManagementAddress", "%q is not an IP address", c.ManagementAddress)
	}
	CheckLogFormat(p, c.LogFormat)
	if c.ShutdownGracePeriodSeconds < 0 || c.ShutdownGracePeriodSeconds > 3600 {
		p.Addf("ShutdownGracePeriodSeconds", "%v is not between 0 and 3600", c.ShutdownGracePeriodSeconds)
	}
	for _, l := range []struct {
		field     string
		v         int
		atMost    int
		atMostWhy string
	}{
		{"MaxPublicConnections", c.MaxPublicConnections, 0, ""},
		{"MaxPublicConnectionsPerSource", c.MaxPublicConnectionsPerSource, c.MaxPublicConnections, "MaxPublicConnections"},
		{"MaxHostnamePeeks", c.MaxHostnamePeeks, c.MaxPublicConnections, "MaxPublicConnections"},
		{"MaxHostnamePeeksPerSource", c.MaxHostnamePeeksPerSource, c.MaxHostnamePeeks, "MaxHostnamePeeks"},
		{"Socks5MaxHandshakesPerClient", c.Socks5MaxHandshakesPerClient, c.Socks5MaxSessionsPerClient, "Socks5MaxSessionsPerClient"},
		{"Socks5MaxSessionsPerClient", c.Socks5MaxSessionsPerClient, 0, ""},
	} {
		switch {
		case l.v < 1 || l.v > maxLimit:
			p.Addf(l.field, "%d is not between 1 and %d (leave it out for the default)", l.v, maxLimit)
		case l.atMost > 0 && l.v > l.atMost:
			p.Addf(l.field, "%d is more than %s (%d), which bounds it anyway", l.v, l.atMostWhy, l.atMost)
		}
	}
	if c.Socks5EgressAddress != "" {
		if a, err := netip.ParseAddr(c.Socks5EgressAddress); err != nil || a.Zone() != "" || a.IsUnspecified() {
			p.Addf("Socks5EgressAddress", "%q is not a specific IP address", c.Socks5EgressAddress)
		}
	}
	seenID := map[string]int{}
	seenKey := map[wg.Key]int{}
	for i, cl := range c.Clients {
		field := fmt.Sprintf("Clients[%d]", i)
		if err := control.CheckClientID(cl.ClientId); err != nil {
			p.Addf(field+".ClientId", "%v", err)
		} else if j, dup := seenID[cl.ClientId]; dup {
			p.Addf(field+".ClientId", "%q is also Clients[%d]", cl.ClientId, j)
		} else {
			seenID[cl.ClientId] = i
		}
		k, err := wg.ParseKey(cl.PublicKey)
		if err != nil {
			p.Addf(field+".PublicKey", "%v", err)
		} else if j, dup := seenKey[k]; dup {
			p.Addf(field+".PublicKey", "same key as Clients[%d]; each client needs its own key", j)
		} else {
			seenKey[k] = i
		}
	}
}

// CheckLogFormat checks a LogFormat field.
func CheckLogFormat(p *control.Problems, f string) {
	if f != "text" && f != "json" {
		p.Addf("LogFormat", "%q is not text or json", f)
	}
}

func checkPort(p *control.Problems, field string, port int) {
	if port < 1 || port > 65535 {
		p.Addf(field, "%d is not a port number (1-65535)", port)
	}
}

// authConfig is the management API's authentication, as configured.
func (c *Config) authConfig() mgmt.AuthConfig {
	listen, _ := netip.ParseAddr(c.ManagementAddress) // checked
	return mgmt.AuthConfig{
		CaCertificateFile:        c.CaCertificateFile,
		ServerTlsCertificateFile: c.ServerTlsCertificateFile,
		ServerTlsKeyFile:         c.ServerTlsKeyFile,
		ManagementTokenFile:      c.ManagementTokenFile,
		ListenAddress:            listen,
	}
}

// egressPolicy builds the SOCKS5 policy: the configured lists, the tunnel's
// own range, and the management API's own address.
func (c *Config) egressPolicy(p *control.Problems) forward.EgressPolicy {
	var pol forward.EgressPolicy
	var err error
	field := func(name string, err error) {
		if err != nil {
			p.Addf(name, "%v", err)
		}
	}
	pol.AllowCIDRs, err = forward.ParsePrefixes(c.Socks5AllowCIDRs)
	field("Socks5AllowCIDRs", err)
	pol.DenyCIDRs, err = forward.ParsePrefixes(c.Socks5DenyCIDRs)
	field("Socks5DenyCIDRs", err)
	pol.AllowPorts, err = forward.ParsePorts(c.Socks5AllowPorts)
	field("Socks5AllowPorts", err)
	pol.DenyPorts, err = forward.ParsePorts(c.Socks5DenyPorts)
	field("Socks5DenyPorts", err)
	pol.TunnelPrefix = wg.TunnelPrefix
	// The management port is denied whatever AllowCIDRs says; bound to every
	// address, it is denied on every address.
	if a, err := netip.ParseAddr(c.ManagementAddress); err == nil && c.ManagementPort > 0 && c.ManagementPort < 65536 {
		pol.DenyAddrPorts = []netip.AddrPort{netip.AddrPortFrom(a, uint16(c.ManagementPort))}
	}
	// The server's own addresses are read again on use (at most once a
	// second): one added after start must not pass.
	self := &forward.SelfAddrs{Read: localAddrs}
	pol.Self = self.Addrs
	if p.Len() == 0 {
		p.AddErr(pol.Validate())
	}
	return pol
}

func localAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ia := range ifAddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}
