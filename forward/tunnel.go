package forward

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/thresholdtunnel/threshold/forward/sniff"
)

// Tunnel maps a public listener to a service on a client. The JSON names
// are those of the original threshold's PUT /tunnels; the Protocol and
// Udp* fields are threshold's own.
type Tunnel struct {
	// Protocol is "tcp" (the default) or "udp" (udptunnel.go).
	Protocol             string `json:",omitempty"`
	HaProxyProxyProtocol bool
	// HaProxyProxyProtocolVersion is 1 (the default, as the original) or 2;
	// a UDP tunnel only has 2, PROXY v1 having no datagram form.
	HaProxyProxyProtocolVersion int `json:",omitempty"`
	// UdpProxyProtocolMode says which datagrams of a UDP session carry the
	// PROXY header: "every" (the default; BIND9, Unbound, caddy-l4) or
	// "first" (frp >= 0.67, Geyser).
	UdpProxyProtocolMode string `json:",omitempty"`
	// ListenAddress is the IP to listen on; empty means every address.
	ListenAddress string
	// ListenHostnameGlob picks the tunnel by TLS SNI or HTTP Host when
	// several tunnels share a port; "*" (the default) matches anything.
	// UDP tunnels have none.
	ListenHostnameGlob string
	ListenPort         int
	// UdpSessionIdleSeconds ends a UDP session that carried no datagram
	// either way for this long; DefaultUDPIdleSeconds if zero.
	UdpSessionIdleSeconds int `json:",omitempty"`
	// UdpMaxSessions caps a UDP tunnel's live sessions: new sources are
	// refused beyond it, live ones never evicted; DefaultUDPMaxSessions if
	// zero.
	UdpMaxSessions int `json:",omitempty"`
	// BackEndService is a name the client maps to one of its local addresses.
	BackEndService string
	// ClientId names the client; or ClientIds names several in order of
	// preference: each new connection goes to the first connected one.
	ClientId  string   `json:",omitempty"`
	ClientIds []string `json:",omitempty"`
	// ActiveClientId is output only: the client new connections go to now.
	ActiveClientId string `json:",omitempty"`
	// ActiveSessions is output only: the tunnel's live connections (TCP)
	// or sessions (UDP) when the list was read.
	ActiveSessions *int `json:",omitempty"`
	// LastRefusalReason, LastRefusal and LastRefusalAt are output only:
	// the last connection (or UDP session) of the tunnel that was
	// refused: its reason (a Reject* one: unknown_service,
	// backend_unreachable, client_refused, client_unreachable, ...), a
	// sentence saying what to check, and when (refusal.go).
	LastRefusalReason string     `json:",omitempty"`
	LastRefusal       string     `json:",omitempty"`
	LastRefusalAt     *time.Time `json:",omitempty"`
}

// clearOutput empties the output-only fields: a PUT may send back what a
// GET gave, and a saved list holds none of them.
func (t *Tunnel) clearOutput() {
	t.ActiveClientId = ""
	t.ActiveSessions = nil
	t.LastRefusalReason, t.LastRefusal, t.LastRefusalAt = "", "", nil
}

// WithoutOutput is t without its output-only fields.
func (t Tunnel) WithoutOutput() Tunnel {
	t.clearOutput()
	return t
}

// Protocols.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// UDP tunnel defaults and bounds. RFC 4787 (REQ-5) asks for at least two
// minutes of idle time; shorter ones break OpenVPN and game streams.
const (
	DefaultUDPIdleSeconds = 120
	MaxUDPIdleSeconds     = 86400
	DefaultUDPMaxSessions = 10000
	MaxUDPMaxSessions     = 1000000
)

// PROXY header modes of a UDP tunnel.
const (
	UDPProxyEvery = "every"
	UDPProxyFirst = "first"
)

// IsUDP reports whether the tunnel carries datagrams.
func (t Tunnel) IsUDP() bool { return t.Protocol == ProtocolUDP }

// Clients lists the tunnel's clients in order of preference.
func (t Tunnel) Clients() []string {
	if len(t.ClientIds) > 0 {
		return t.ClientIds
	}
	if t.ClientId != "" {
		return []string{t.ClientId}
	}
	return nil
}

// ListenAddr is the public host:port a tunnel listens on.
func (t Tunnel) ListenAddr() string {
	return net.JoinHostPort(t.ListenAddress, strconv.Itoa(t.ListenPort))
}

// ListenKey is the public socket a tunnel listens on: its host:port, with
// "/udp" after it for a UDP tunnel, so a TCP and a UDP tunnel may share a
// port number.
func (t Tunnel) ListenKey() string {
	if t.IsUDP() {
		return t.ListenAddr() + "/udp"
	}
	return t.ListenAddr()
}

// RouteKey identifies a tunnel: its socket address and hostname glob (a
// UDP tunnel has no glob: its ListenKey).
func (t Tunnel) RouteKey() string {
	if t.IsUDP() {
		return t.ListenKey()
	}
	return t.ListenKey() + " " + t.ListenHostnameGlob
}

func (t Tunnel) backendProxyVersion() int {
	if !t.HaProxyProxyProtocol {
		return 0
	}
	return t.HaProxyProxyProtocolVersion
}

// Normalize fills defaults in place: protocol "tcp"; for TCP glob "*" and
// PROXY version 1 when HaProxyProxyProtocol is set; for UDP the idle time,
// the session cap, PROXY version 2 and mode "every"; the canonical form of
// ListenAddress.
func (t *Tunnel) Normalize() {
	t.clearOutput()
	t.Protocol = strings.ToLower(t.Protocol)
	if t.Protocol == "" {
		t.Protocol = ProtocolTCP
	}
	if t.IsUDP() {
		t.normalizeUDP()
	} else {
		if t.ListenHostnameGlob == "" {
			t.ListenHostnameGlob = "*"
		}
		if t.HaProxyProxyProtocol && t.HaProxyProxyProtocolVersion == 0 {
			t.HaProxyProxyProtocolVersion = 1
		}
	}
	t.ListenHostnameGlob = strings.ToLower(t.ListenHostnameGlob)
	if a, err := netip.ParseAddr(t.ListenAddress); err == nil {
		t.ListenAddress = a.String()
	}
}

// ProblemSink receives the problems a check finds, one at a time, each
// naming its field. It may keep only the first few and count the rest
// (control.Problems does), so a hostile list of thousands of bad tunnels
// costs a few lines, not a line per field.
type ProblemSink interface {
	Addf(field, format string, args ...any)
}

// MaxTunnels bounds a tunnel list. Each tunnel is a route, and may be a
// listening socket; a list longer than this is refused as a whole, before
// its tunnels are decoded or checked one by one.
const MaxTunnels = 10000

// Check reports what is wrong with a normalized tunnel to sink; field
// names are prefixed with where, such as "tunnels[2]".
func (t Tunnel) Check(where string, sink ProblemSink) {
	add := func(field, format string, args ...any) { sink.Addf(where+"."+field, format, args...) }
	if t.ListenAddress != "" {
		if a, err := netip.ParseAddr(t.ListenAddress); err != nil || a.Zone() != "" {
			add("ListenAddress", "%q is not an IP address (use an empty string for every address)", t.ListenAddress)
		}
	}
	if t.ListenPort < 1 || t.ListenPort > 65535 {
		add("ListenPort", "%d is not a port number (1-65535)", t.ListenPort)
	}
	switch t.Protocol {
	case ProtocolTCP:
		if err := sniff.CheckGlob(t.ListenHostnameGlob); err != nil {
			add("ListenHostnameGlob", "%v", err)
		}
		t.tcpOnlyCheck(where, sink)
	case ProtocolUDP:
		t.udpCheck(where, sink)
	default:
		add("Protocol", "%q is not tcp or udp", t.Protocol)
	}
	if err := CheckServiceName(t.BackEndService); err != nil {
		add("BackEndService", "%v", err)
	}
	switch {
	case t.ClientId != "" && len(t.ClientIds) > 0:
		add("ClientIds", "set ClientId or ClientIds, not both")
	case strings.TrimSpace(t.ClientId) == "" && len(t.ClientIds) == 0:
		add("ClientId", "is required (or ClientIds, a list in order of preference)")
	}
	var seen map[string]bool
	for i, id := range t.ClientIds {
		if seen == nil {
			seen = make(map[string]bool, len(t.ClientIds))
		}
		if strings.TrimSpace(id) == "" {
			add(fmt.Sprintf("ClientIds[%d]", i), "is empty")
		} else if seen[id] {
			add(fmt.Sprintf("ClientIds[%d]", i), "%q is listed twice", id)
		}
		seen[id] = true
	}
	if t.HaProxyProxyProtocolVersion != 0 && !t.HaProxyProxyProtocol {
		add("HaProxyProxyProtocolVersion", "is set but HaProxyProxyProtocol is false")
	} else if t.HaProxyProxyProtocol && t.HaProxyProxyProtocolVersion != 1 && t.HaProxyProxyProtocolVersion != 2 {
		add("HaProxyProxyProtocolVersion", "%d is not 1 or 2", t.HaProxyProxyProtocolVersion)
	}
}

// tcpOnlyCheck refuses the UDP fields on a TCP tunnel.
func (t Tunnel) tcpOnlyCheck(where string, sink ProblemSink) {
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"UdpMaxSessions", t.UdpMaxSessions != 0},
		{"UdpProxyProtocolMode", t.UdpProxyProtocolMode != ""},
		{"UdpSessionIdleSeconds", t.UdpSessionIdleSeconds != 0},
	} {
		if f.set {
			sink.Addf(where+"."+f.name, "applies only to a tunnel with \"Protocol\": \"udp\"")
		}
	}
}

// CheckServiceName reports whether s can name a service.
func CheckServiceName(s string) error {
	if s == "" {
		return fmt.Errorf("is required")
	}
	if len(s) > MaxServiceNameLen {
		return fmt.Errorf("is longer than %d bytes", MaxServiceNameLen)
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("%q may only hold printable ASCII without spaces", s)
		}
	}
	return nil
}

// CheckServiceAddr reports whether a is a host:port a client can dial.
func CheckServiceAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", a, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q has no valid port", a)
	}
	return nil
}

// CheckTunnels normalizes every tunnel in place and reports every problem
// to sink: a list longer than MaxTunnels (and then nothing else), bad
// fields, and two tunnels claiming the same address, port and hostname.
func CheckTunnels(ts []Tunnel, sink ProblemSink) {
	if len(ts) > MaxTunnels {
		sink.Addf("tunnels", "%d tunnels: at most %d are allowed in a list", len(ts), MaxTunnels)
		return
	}
	seen := make(map[string]int, len(ts))
	for i := range ts {
		ts[i].Normalize()
		where := "tunnels[" + strconv.Itoa(i) + "]"
		ts[i].Check(where, sink)
		k := ts[i].RouteKey()
		if j, dup := seen[k]; dup {
			if ts[i].IsUDP() {
				sink.Addf(where, "claims %s like tunnels[%d]", ts[i].ListenKey(), j)
			} else {
				sink.Addf(where, "claims %s hostname %q like tunnels[%d]", ts[i].ListenKey(), ts[i].ListenHostnameGlob, j)
			}
			continue
		}
		seen[k] = i
	}
}

// problemList is a bounded ProblemSink of the package's own, for the
// Gateway's check: it keeps maxProblems problems and counts the rest.
type problemList struct {
	list []string
	more int
}

// maxProblems is how many problems an error of the package lists, as
// control.MaxProblems does for the API.
const maxProblems = 20

func (l *problemList) Addf(field, format string, args ...any) {
	if len(l.list) >= maxProblems {
		l.more++
		return
	}
	l.list = append(l.list, field+": "+fmt.Sprintf(format, args...))
}

// errs is the list as errors of a kind, the last counting those not
// listed.
func (l *problemList) errs(kind error) []error {
	out := make([]error, 0, len(l.list)+1)
	for _, p := range l.list {
		out = append(out, &problem{kind: kind, msg: p})
	}
	if l.more > 0 {
		out = append(out, &unlisted{kind: kind, n: l.more})
	}
	return out
}

// unlisted stands for the problems a problemList only counted.
type unlisted struct {
	kind error
	n    int
}

func (u *unlisted) Error() string { return fmt.Sprintf("and %d more", u.n) }
func (u *unlisted) Unwrap() error { return u.kind }

// Unlisted is how many problems it stands for, so that a bounded list it
// is added to counts them instead of listing "and N more" as a problem.
func (u *unlisted) Unlisted() int { return u.n }
