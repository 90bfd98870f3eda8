package client

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/wg"
)

// Config is the client's JSON config.
type Config struct {
	DebugLog                bool
	LogFormat               string // "text" (default) or "json"
	StateDir                string // keeps the key; PrivateKeyFile defaults to StateDir/client.key
	ClientId                string
	ServerHost              string
	ServerTunnelControlPort int
	ServerPublicKey         string
	PrivateKeyFile          string // generated (0600) if missing
	ServiceToLocalAddrMap   map[string]Service
	// ProxySourceAllowCIDRs are source addresses the server may report in
	// the PROXY headers backends get, besides public ones: loopback,
	// private and link-local ranges and the tunnel's are refused unless
	// listed here (a server on a private network, tests on loopback).
	ProxySourceAllowCIDRs []string
	// Socks5ListenAddress is a local host:port for applications to use as
	// their SOCKS5 proxy; their connections leave from the server. Off if empty.
	Socks5ListenAddress string
}

// Defaults.
const (
	DefaultServerTunnelControlPort = 9056
	DefaultKeyFile                 = "threshold-client.key"
)

// FillDefaults fills in what was left out.
func (c *Config) FillDefaults() {
	if c.ServerTunnelControlPort == 0 {
		c.ServerTunnelControlPort = DefaultServerTunnelControlPort
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
	if strings.TrimSpace(c.ServerHost) == "" {
		p.Addf("ServerHost", "is required")
	} else if strings.ContainsAny(c.ServerHost, " /:") && net.ParseIP(c.ServerHost) == nil {
		p.Addf("ServerHost", "%q is not a host name or IP address (put the port in ServerTunnelControlPort)", c.ServerHost)
	}
	if c.ServerTunnelControlPort < 1 || c.ServerTunnelControlPort > 65535 {
		p.Addf("ServerTunnelControlPort", "%d is not a port number (1-65535)", c.ServerTunnelControlPort)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		p.Addf("LogFormat", "%q is not text or json", c.LogFormat)
	}
	if _, err := wg.ParseKey(c.ServerPublicKey); err != nil {
		p.Addf("ServerPublicKey", "%v", err)
	}
	if c.Socks5ListenAddress != "" {
		if err := forward.CheckServiceAddr(c.Socks5ListenAddress); err != nil {
			p.Addf("Socks5ListenAddress", "%v", err)
		} else if host, _, _ := net.SplitHostPort(c.Socks5ListenAddress); host != "localhost" {
			// The proxy has no authentication: beyond loopback, anyone who
			// reaches it sends traffic from the server's address.
			if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
				p.Addf("Socks5ListenAddress", "%q is not a loopback address; an unauthenticated proxy there would let anyone send from the server's IP", c.Socks5ListenAddress)
			}
		}
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
