package client

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/wg"
)

// Config is the client's JSON config.
type Config struct {
	DebugLog  bool
	LogFormat string // "text" (default) or "json"
	StateDir  string // keeps the key; PrivateKeyFile defaults to StateDir/client.key
	ClientId  string
	// The one server of a single-server config: the same as a Servers
	// list of one. Giving both forms is an error.
	ServerHost              string
	ServerTunnelControlPort int
	ServerPublicKey         string
	// Servers are the servers the client attaches to, all at once; SOCKS5
	// egress leaves from the first of them that is connected.
	Servers               []Server `json:",omitempty"`
	PrivateKeyFile        string   // generated (0600) if missing
	ServiceToLocalAddrMap map[string]Service
	// ProxySourceAllowCIDRs are source addresses the server may report in
	// the PROXY headers backends get, besides public ones: loopback,
	// private and link-local ranges and the tunnel's are refused unless
	// listed here (a server on a private network, tests on loopback).
	ProxySourceAllowCIDRs []string
	// Socks5ListenAddress is a local host:port for applications to use as
	// their SOCKS5 proxy; their connections leave from the server. Off if empty.
	Socks5ListenAddress string
	// StatusListenAddress is a loopback host:port serving the client's
	// state read-only (GET /status, for threshold status). Off if empty.
	StatusListenAddress string
}

// Server is one server the client attaches to.
type Server struct {
	ServerHost              string
	ServerTunnelControlPort int // DefaultServerTunnelControlPort if zero
	ServerPublicKey         string
}

// String names the server in logs: host:port.
func (s Server) String() string {
	return net.JoinHostPort(s.ServerHost, strconv.Itoa(s.ServerTunnelControlPort))
}

// MaxServers bounds Servers: each server costs a WireGuard device and a
// TCP/IP stack of its own.
const MaxServers = 16

// Defaults.
const (
	DefaultServerTunnelControlPort = 9056
	DefaultKeyFile                 = "threshold-client.key"
)

// FillDefaults fills in what was left out.
func (c *Config) FillDefaults() {
	if len(c.Servers) == 0 && c.ServerTunnelControlPort == 0 {
		c.ServerTunnelControlPort = DefaultServerTunnelControlPort
	}
	for i := range c.Servers {
		if c.Servers[i].ServerTunnelControlPort == 0 {
			c.Servers[i].ServerTunnelControlPort = DefaultServerTunnelControlPort
		}
	}
	if c.PrivateKeyFile == "" {
		c.PrivateKeyFile = DefaultKeyFile
		if c.StateDir != "" {
			c.PrivateKeyFile = filepath.Join(c.StateDir, "client.key")
		}
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
}

// check adds every problem of a config with defaults filled in.
func (c *Config) check(p *control.Problems) {
	if err := control.CheckClientID(c.ClientId); err != nil {
		p.Addf("ClientId", "%v", err)
	}
	c.checkServers(p)
	if c.LogFormat != "text" && c.LogFormat != "json" {
		p.Addf("LogFormat", "%q is not text or json", c.LogFormat)
	}
	if c.Socks5ListenAddress != "" {
		// The proxy has no authentication: beyond loopback, anyone who
		// reaches it sends traffic from the server's address.
		checkLoopback(p, "Socks5ListenAddress", c.Socks5ListenAddress, "an unauthenticated proxy there would let anyone send from the server's IP")
	}
	if c.StatusListenAddress != "" {
		checkLoopback(p, "StatusListenAddress", c.StatusListenAddress, "the status endpoint has no authentication and names the client's key, servers and services")
	}
	if len(c.ServiceToLocalAddrMap) == 0 {
		p.Addf("ServiceToLocalAddrMap", "is empty: name at least one local service")
	}
	names := make([]string, 0, len(c.ServiceToLocalAddrMap))
	for name := range c.ServiceToLocalAddrMap {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		field := fmt.Sprintf("ServiceToLocalAddrMap[%q]", name)
		if err := forward.CheckServiceName(name); err != nil {
			p.Addf(field, "service name %v", err)
		}
		svc := c.ServiceToLocalAddrMap[name]
		if err := forward.CheckServiceAddr(svc.Address); err != nil {
			p.Addf(field, "%v", err)
		}
		if v := svc.ProxyProtocol; v != nil && (*v < 0 || *v > 2) {
			p.Addf(field+".ProxyProtocol", "%d is not 0 (none), 1 or 2", *v)
		}
		if svc.UdpProxyProtocolMode != "" {
			proxy := 0
			if svc.ProxyProtocol != nil {
				proxy = *svc.ProxyProtocol
			}
			if err := checkUDPMode(svc.UdpProxyProtocolMode, proxy); err != nil {
				p.Addf(field+".UdpProxyProtocolMode", "%v", err)
			}
		}
	}
	if _, err := forward.ParsePrefixes(c.ProxySourceAllowCIDRs); err != nil {
		p.Addf("ProxySourceAllowCIDRs", "%v", err)
	}
}

// checkLoopback adds a problem unless addr is a loopback host:port.
func checkLoopback(p *control.Problems, field, addr, why string) {
	if err := forward.CheckServiceAddr(addr); err != nil {
		p.Addf(field, "%v", err)
		return
	}
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return
	}
	if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
		p.Addf(field, "%q is not a loopback address; %s", addr, why)
	}
}

// singleServer reports whether any single-server field is set. (With a
// Servers list, FillDefaults leaves ServerTunnelControlPort alone.)
func (c *Config) singleServer() bool {
	return c.ServerHost != "" || c.ServerPublicKey != "" || c.ServerTunnelControlPort != 0
}

// servers is the list of servers, the single-server form as a list of one.
func (c *Config) servers() []Server {
	if len(c.Servers) > 0 {
		return c.Servers
	}
	return []Server{{ServerHost: c.ServerHost, ServerTunnelControlPort: c.ServerTunnelControlPort, ServerPublicKey: c.ServerPublicKey}}
}

// checkServers adds the problems of the server list. Problems of the
// single-server form name its fields, those of Servers their entry.
func (c *Config) checkServers(p *control.Problems) {
	if len(c.Servers) > 0 && c.singleServer() {
		p.Addf("Servers", "is given together with ServerHost/ServerTunnelControlPort/ServerPublicKey: use one form (Servers for several servers; a single server's entry moves into it)")
		return
	}
	if len(c.Servers) > MaxServers {
		p.Addf("Servers", "lists %d servers, at most %d are supported", len(c.Servers), MaxServers)
		return
	}
	prefix := func(int) string { return "" }
	if len(c.Servers) > 0 {
		prefix = func(i int) string { return fmt.Sprintf("Servers[%d].", i) }
	}
	keys := map[wg.Key]int{}
	endpoints := map[string]int{}
	for i, s := range c.servers() {
		f := prefix(i)
		if strings.TrimSpace(s.ServerHost) == "" {
			p.Addf(f+"ServerHost", "is required")
		} else if strings.ContainsAny(s.ServerHost, " /:") && net.ParseIP(s.ServerHost) == nil {
			p.Addf(f+"ServerHost", "%q is not a host name or IP address (put the port in ServerTunnelControlPort)", s.ServerHost)
		}
		if s.ServerTunnelControlPort < 1 || s.ServerTunnelControlPort > 65535 {
			p.Addf(f+"ServerTunnelControlPort", "%d is not a port number (1-65535)", s.ServerTunnelControlPort)
		}
		k, err := wg.ParseKey(s.ServerPublicKey)
		if err != nil {
			p.Addf(f+"ServerPublicKey", "%v", err)
		} else if j, dup := keys[k]; dup {
			p.Addf(f+"ServerPublicKey", "is the key of Servers[%d] too: list each server once", j)
		} else {
			keys[k] = i
		}
		ep := strings.ToLower(s.String())
		if j, dup := endpoints[ep]; dup && s.ServerHost != "" {
			p.Addf(f+"ServerHost", "%s is Servers[%d]'s address too: list each server once", s, j)
		} else {
			endpoints[ep] = i
		}
	}
}

// connectorConfig splits the service map into what the connector takes:
// addresses, the client's own PROXY choices, and the source policy.
func (c *Config) connectorConfig() forward.ConnectorConfig {
	cc := forward.ConnectorConfig{Services: make(map[string]string, len(c.ServiceToLocalAddrMap)), ServiceProxy: map[string]int{}}
	for name, svc := range c.ServiceToLocalAddrMap {
		cc.Services[name] = svc.Address
		if svc.ProxyProtocol != nil {
			cc.ServiceProxy[name] = *svc.ProxyProtocol
		}
	}
	cc.Sources.Allow, _ = forward.ParsePrefixes(c.ProxySourceAllowCIDRs) // checked
	cc.Sources.TunnelPrefix = wg.TunnelPrefix
	return cc
}

// udpConnectorConfig is connectorConfig for UDP tunnels: the same
// addresses, choices and source policy, plus each service's UDP PROXY mode.
func (c *Config) udpConnectorConfig() forward.UDPConnectorConfig {
	cc := c.connectorConfig()
	uc := forward.UDPConnectorConfig{Services: cc.Services, ServiceProxy: cc.ServiceProxy, Sources: cc.Sources,
		ServiceUDPProxyMode: map[string]string{}}
	for name, svc := range c.ServiceToLocalAddrMap {
		if svc.UdpProxyProtocolMode != "" {
			uc.ServiceUDPProxyMode[name] = svc.UdpProxyProtocolMode
		}
	}
	return uc
}

// Check reports every problem of cfg that New would refuse before it
// does anything, in a *control.Problems; nil if there is none.
func Check(cfg Config) error {
	cfg.FillDefaults()
	probs := control.NewProblems(control.ErrInvalid, "client config")
	cfg.check(probs)
	return probs.Err()
}
