package forward

// DenyReason is why a SOCKS5 destination was refused, in one word. The
// server's egress sends it to the client in its failure reply (see
// socksReasonPort), so that the client, which otherwise sees only "not
// allowed by ruleset", can log the reason in plain words.
type DenyReason byte

const (
	DenyUnknown       DenyReason = iota // an older server, or a reason without a kind
	DenyInvalid                         // an invalid address or port 0
	DenyPortPolicy                      // Socks5DenyPorts or Socks5AllowPorts
	DenyAddrPort                        // the server's management port (EgressPolicy.DenyAddrPorts)
	DenyRange                           // Socks5DenyCIDRs
	DenyServerAddress                   // one of the server's own addresses
	DenyLoopback                        // 127.0.0.0/8, ::1
	DenyPrivate                         // RFC 1918, CGNAT, ULA, site-local
	DenyLinkLocal                       // 169.254.0.0/16, fe80::/10
	DenyMetadata                        // the cloud metadata service
	DenySpecial                         // multicast, reserved, unspecified, "this network"
	DenyTunnel                          // the tunnel's own range
	DenySocksDisabled                   // the client's Socks5Enabled is false
	denyReasons
)

var denyWords = [denyReasons]string{"unknown", "invalid", "port_policy", "management_port", "denied_range", "server_address",
	"loopback", "private", "link_local", "metadata", "special", "tunnel", "socks5_disabled"}

var denyExplained = [denyReasons]string{
	DenyUnknown:       "the server's policy refused the destination (an older server does not say why; its debug log does)",
	DenyInvalid:       "the destination is not a valid address, or its port is 0",
	DenyPortPolicy:    "the server's port policy refuses that port (its Socks5AllowPorts or Socks5DenyPorts)",
	DenyAddrPort:      "the destination is the server's own management port, which SOCKS5 never reaches",
	DenyRange:         "the destination is in a range the server denies (its Socks5DenyCIDRs)",
	DenyServerAddress: "the destination is one of the server's own addresses (loopback in disguise, past its firewall); allow it with Socks5AllowCIDRs on the server if that is meant",
	DenyLoopback:      "the destination is a loopback address, which would be the server itself; a service on this machine needs no SOCKS5",
	DenyPrivate:       "the destination is a private address (RFC 1918, carrier-grade NAT or unique local), on the server's network, not the internet; allow it with Socks5AllowCIDRs on the server if that is meant",
	DenyLinkLocal:     "the destination is a link-local address, on the server's own link",
	DenyMetadata:      "the destination is the cloud metadata service, which holds the server's credentials",
	DenySpecial:       "the destination is a multicast, reserved or unspecified address",
	DenyTunnel:        "the destination is inside the tunnel (the server's or another client's tunnel address)",
	DenySocksDisabled: "SOCKS5 egress is disabled for this client on the server (its Socks5Enabled is false)",
}

// String is the reason in one word, as logs give it.
func (r DenyReason) String() string {
	if r < denyReasons {
		return denyWords[r]
	}
	return denyWords[DenyUnknown]
}

// Explain says the reason in plain words.
func (r DenyReason) Explain() string {
	if r < denyReasons {
		return denyExplained[r]
	}
	return denyExplained[DenyUnknown]
}

// EgressDenial is the error EgressPolicy.Check returns for a destination
// it refuses: the reason's kind, and the reason in full.
type EgressDenial struct {
	Reason DenyReason
	msg    string
}

func (e *EgressDenial) Error() string { return e.msg }
func (e *EgressDenial) Unwrap() error { return ErrEgressDenied }

// A failure reply of our egress carries the reason in BND.PORT, which
// clients ignore on a failure (RFC 1928 gives it no meaning there):
// socksReasonMark in the high byte, the DenyReason in the low one. An
// older server sends 0: no reason.
const socksReasonMark = 0x74 << 8

func socksReasonPort(r DenyReason) uint16 {
	if r == DenyUnknown {
		return 0
	}
	return socksReasonMark | uint16(r)
}

// reasonOfPort reads a DenyReason from a failure reply's BND.PORT.
func reasonOfPort(port uint16) DenyReason {
	if port&0xff00 != socksReasonMark || DenyReason(port&0xff) >= denyReasons {
		return DenyUnknown
	}
	return DenyReason(port & 0xff)
}
