package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/mgmt"
	"github.com/thresholdtunnel/threshold/wg"
)

// ServerConfig is the server's JSON config; names follow the original.
type ServerConfig struct {
	DebugLog          bool
	LogFormat         string // "text" (default) or "json"
	TunnelControlPort int    // WireGuard UDP port
	ManagementPort    int    // management API TCP port
	ManagementAddress string // default 127.0.0.1
	// StateDir keeps the server key, registered clients and tunnels, so a
	// restart comes back as it was. Empty: nothing is kept but the key.
	StateDir       string
	PrivateKeyFile string // generated (0600) if missing; StateDir/server.key by default
	Clients        []ClientRegistration

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

	// SOCKS5 egress. The default policy denies private, loopback,
	// link-local and other non-public destinations; these add to it.
	Socks5EgressAddress string   // source IP for egress; the OS picks if empty
	Socks5AllowCIDRs    []string // exceptions to the default deny list
	Socks5DenyCIDRs     []string
	Socks5AllowPorts    []string // if set, only these ports ("25", "8000-8099")
	Socks5DenyPorts     []string
}

// ClientRegistration registers a client with the server at startup.
type ClientRegistration struct {
	ClientId  string
	PublicKey string
	// Socks5Enabled lets the client use SOCKS5 egress; true when absent.
	Socks5Enabled *bool `json:",omitempty"`
}

// ClientConfig is the client's JSON config.
type ClientConfig struct {
	DebugLog                bool
	LogFormat               string // "text" (default) or "json"
	StateDir                string // keeps the key; PrivateKeyFile defaults to StateDir/client.key
	ClientId                string
	ServerHost              string
	ServerTunnelControlPort int
	ServerPublicKey         string
	PrivateKeyFile          string // generated (0600) if missing
	ServiceToLocalAddrMap   map[string]string
	// Socks5ListenAddress is a local host:port for applications to use as
	// their SOCKS5 proxy; their connections leave from the server. Off if empty.
	Socks5ListenAddress string
}

const (
	defaultTunnelControlPort = 9056
	defaultManagementPort    = 9057
	defaultManagementAddress = "127.0.0.1"
	defaultServerKeyFile     = "threshold-server.key"
	defaultClientKeyFile     = "threshold-client.key"
	maxConfigBytes           = 1 << 20
)

// decodeStrict reads one JSON object of at most limit bytes, refusing
// unknown fields and trailing data.
func decodeStrict(r io.Reader, v any, limit int) error {
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return err
	}
	if len(data) > limit {
		return fmt.Errorf("larger than %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("malformed JSON: more than one value")
	}
	return nil
}

func loadConfig(path string, v interface{ fillDefaults() }) error {
	if path == "" {
		return errors.New("--config is required")
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	if err := decodeStrict(f, v, maxConfigBytes); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	v.fillDefaults()
	return nil
}

func (c *ServerConfig) fillDefaults() {
	if c.TunnelControlPort == 0 {
		c.TunnelControlPort = defaultTunnelControlPort
	}
	if c.ManagementPort == 0 {
		c.ManagementPort = defaultManagementPort
	}
	if c.ManagementAddress == "" {
		c.ManagementAddress = defaultManagementAddress
	}
	if c.PrivateKeyFile == "" {
		c.PrivateKeyFile = defaultServerKeyFile
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
}

func (c *ClientConfig) fillDefaults() {
	if c.ServerTunnelControlPort == 0 {
		c.ServerTunnelControlPort = defaultTunnelControlPort
	}
	if c.PrivateKeyFile == "" {
		c.PrivateKeyFile = defaultClientKeyFile
		if c.StateDir != "" {
			c.PrivateKeyFile = filepath.Join(c.StateDir, "client.key")
		}
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
}

// problems collects every validation failure, each naming its field.
type problems []string

func (p *problems) addf(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

func (p problems) err(what string) error {
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("invalid %s:\n  %s", what, strings.Join(p, "\n  "))
}

func checkPort(p *problems, field string, port int) {
	if port < 1 || port > 65535 {
		p.addf(field, "%d is not a port number (1-65535)", port)
	}
}

func (c *ServerConfig) validate() error {
	var p problems
	checkPort(&p, "TunnelControlPort", c.TunnelControlPort)
	checkPort(&p, "ManagementPort", c.ManagementPort)
	if c.HostnamePeekTimeoutSeconds < 0 || c.HostnamePeekTimeoutSeconds > 300 {
		p.addf("HostnamePeekTimeoutSeconds", "%v is not between 0 and 300", c.HostnamePeekTimeoutSeconds)
	}
	if a, err := netip.ParseAddr(c.ManagementAddress); err != nil || a.Zone() != "" {
		p.addf("ManagementAddress", "%q is not an IP address", c.ManagementAddress)
	} else {
		for _, prob := range c.authConfig(a).Problems() {
			// mgmt calls the address ListenAddress; this config, ManagementAddress.
			if rest, ok := strings.CutPrefix(prob, "ListenAddress:"); ok {
				prob = "ManagementAddress:" + rest
			}
			p = append(p, prob)
		}
	}
	checkLogFormat(&p, c.LogFormat)
	if c.ShutdownGracePeriodSeconds < 0 || c.ShutdownGracePeriodSeconds > 3600 {
		p.addf("ShutdownGracePeriodSeconds", "%v is not between 0 and 3600", c.ShutdownGracePeriodSeconds)
	}
	if _, err := c.egressPolicy(); err != nil {
		p = append(p, strings.Split(err.Error(), "\n")...)
	}
	if c.Socks5EgressAddress != "" {
		if a, err := netip.ParseAddr(c.Socks5EgressAddress); err != nil || a.Zone() != "" || a.IsUnspecified() {
			p.addf("Socks5EgressAddress", "%q is not a specific IP address", c.Socks5EgressAddress)
		}
	}
	seenID := map[string]int{}
	seenKey := map[wg.Key]int{}
	for i, cl := range c.Clients {
		field := fmt.Sprintf("Clients[%d]", i)
		if err := checkClientID(cl.ClientId); err != nil {
			p.addf(field+".ClientId", "%v", err)
		} else if j, dup := seenID[cl.ClientId]; dup {
			p.addf(field+".ClientId", "%q is also Clients[%d]", cl.ClientId, j)
		} else {
			seenID[cl.ClientId] = i
		}
		k, err := wg.ParseKey(cl.PublicKey)
		if err != nil {
			p.addf(field+".PublicKey", "%v", err)
		} else if j, dup := seenKey[k]; dup {
			p.addf(field+".PublicKey", "same key as Clients[%d]; each client needs its own key", j)
		} else {
			seenKey[k] = i
		}
	}
	return p.err("server config")
}

func (c *ClientConfig) validate() error {
	var p problems
	if err := checkClientID(c.ClientId); err != nil {
		p.addf("ClientId", "%v", err)
	}
	if strings.TrimSpace(c.ServerHost) == "" {
		p.addf("ServerHost", "is required")
	} else if strings.ContainsAny(c.ServerHost, " /:") && net.ParseIP(c.ServerHost) == nil {
		p.addf("ServerHost", "%q is not a host name or IP address (put the port in ServerTunnelControlPort)", c.ServerHost)
	}
	checkPort(&p, "ServerTunnelControlPort", c.ServerTunnelControlPort)
	checkLogFormat(&p, c.LogFormat)
	if _, err := wg.ParseKey(c.ServerPublicKey); err != nil {
		p.addf("ServerPublicKey", "%v", err)
	}
	if c.Socks5ListenAddress != "" {
		if err := forward.CheckServiceAddr(c.Socks5ListenAddress); err != nil {
			p.addf("Socks5ListenAddress", "%v", err)
		} else if host, _, _ := net.SplitHostPort(c.Socks5ListenAddress); host != "localhost" {
			// The proxy has no authentication: beyond loopback, anyone who
			// reaches it sends traffic from the server's address.
			if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
				p.addf("Socks5ListenAddress", "%q is not a loopback address; an unauthenticated proxy there would let anyone send from the server's IP", c.Socks5ListenAddress)
			}
		}
	}
	if len(c.ServiceToLocalAddrMap) == 0 {
		p.addf("ServiceToLocalAddrMap", "is empty: name at least one local service")
	}
	names := make([]string, 0, len(c.ServiceToLocalAddrMap))
	for name := range c.ServiceToLocalAddrMap {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		field := fmt.Sprintf("ServiceToLocalAddrMap[%q]", name)
		if err := forward.CheckServiceName(name); err != nil {
			p.addf(field, "service name %v", err)
		}
		if err := forward.CheckServiceAddr(c.ServiceToLocalAddrMap[name]); err != nil {
			p.addf(field, "%v", err)
		}
	}
	return p.err("client config")
}

func checkLogFormat(p *problems, f string) {
	if f != "text" && f != "json" {
		p.addf("LogFormat", "%q is not text or json", f)
	}
}

func (c *ServerConfig) authConfig(listen netip.Addr) mgmt.AuthConfig {
	return mgmt.AuthConfig{
		CaCertificateFile:        c.CaCertificateFile,
		ServerTlsCertificateFile: c.ServerTlsCertificateFile,
		ServerTlsKeyFile:         c.ServerTlsKeyFile,
		ManagementTokenFile:      c.ManagementTokenFile,
		ListenAddress:            listen,
	}
}

// authConfigWithLog is authConfig with refused requests logged.
func (c *ServerConfig) authConfigWithLog(listen netip.Addr, log *slog.Logger) mgmt.AuthConfig {
	ac := c.authConfig(listen)
	ac.Logger = log
	return ac
}

func checkClientID(id string) error {
	if id == "" {
		return errors.New("is required")
	}
	if len(id) > 128 {
		return errors.New("is longer than 128 bytes")
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.@", r)) {
			return fmt.Errorf("%q may only hold letters, digits and - _ . @", id)
		}
	}
	return nil
}

// egressPolicy builds the SOCKS5 policy: the configured lists, the tunnel's
// own range, and the management API's own address.
func (c *ServerConfig) egressPolicy() (forward.EgressPolicy, error) {
	var errs []error
	field := func(name string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	var pol forward.EgressPolicy
	var err error
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
	pol.LocalAddrs = localAddrs()
	if len(errs) == 0 {
		field("Socks5 policy", pol.Validate())
	}
	return pol, errors.Join(errs...)
}

func localAddrs() []netip.Addr {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ia := range ifAddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}
