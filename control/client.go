package control

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// State is a client's connection state, named as in the original threshold.
type State string

const (
	ClientUnknown      State = "ClientUnknown"      // registered, never heard from
	ClientConnected    State = "ClientConnected"    // answering heartbeats
	ClientDisconnected State = "ClientDisconnected" // was connected, went silent
)

// Key is a WireGuard public key.
type Key [32]byte

// String is the base64 form, as wg(8) prints keys.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Registration is a client as it is registered: an entry of the server
// config's Clients, the body of PUT /clients/{ClientId} (whose path names
// the client), and an entry of the state file.
type Registration struct {
	ClientId  string `json:",omitempty"`
	PublicKey string
	// Socks5Enabled lets the client use SOCKS5 egress; true when absent.
	Socks5Enabled *bool `json:",omitempty"`
}

// Socks5 is Socks5Enabled with its default.
func (r Registration) Socks5() bool { return r.Socks5Enabled == nil || *r.Socks5Enabled }

// ClientStatus is one entry of GET /clients.
type ClientStatus struct {
	CurrentState  State
	LastState     State
	PublicKey     string
	TunnelAddress string
	// LastHandshake is the last WireGuard handshake; absent if none yet.
	LastHandshake *time.Time `json:",omitempty"`
	// BytesIn and BytesOut are WireGuard's counters for the client's
	// peer (encrypted bytes received from and sent to it).
	BytesIn  uint64
	BytesOut uint64
	// Socks5Enabled tells whether the client may use SOCKS5 egress; the
	// byte counts are its egress payload, sent to and received from the
	// destinations.
	Socks5Enabled       bool
	Socks5BytesSent     uint64
	Socks5BytesReceived uint64
	// ReportedClientId is the name the client gives itself (its
	// ClientId in client.json, sent with its heartbeats), shown only when
	// it differs from the name it is registered under.
	ReportedClientId string `json:",omitempty"`
}

// CheckClientID reports whether id can name a client.
func CheckClientID(id string) error {
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
