// Package wg runs a userspace WireGuard device (wireguard-go) over any
// tun.Device, and holds the key and address rules the tunnel relies on.
package wg

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a WireGuard key in bytes.
const KeyLen = 32

// Key is a Curve25519 key, private or public.
type Key [KeyLen]byte

// ErrInvalidKey is wrapped by every key parsing error.
var ErrInvalidKey = errors.New("invalid WireGuard key")

// GenerateKey returns a new clamped private key, as `wg genkey` does.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generating key: %w", err)
	}
	k.clamp()
	return k, nil
}

func (k *Key) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// ParseKey reads a key in the base64 form used by wg(8) and wg-quick.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("%w: not base64", ErrInvalidKey)
	}
	if len(b) != KeyLen {
		return Key{}, fmt.Errorf("%w: %d bytes, want %d", ErrInvalidKey, len(b), KeyLen)
	}
	var k Key
	copy(k[:], b)
	if k.IsZero() {
		return Key{}, fmt.Errorf("%w: all zero", ErrInvalidKey)
	}
	return k, nil
}

// PublicKey derives the public key of a private key.
func (k Key) PublicKey() Key {
	priv := k
	priv.clamp()
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		// X25519 with the base point only fails on a low-order result, which a
		// clamped scalar cannot produce.
		panic("wg: deriving public key: " + err.Error())
	}
	var p Key
	copy(p[:], pub)
	return p
}

// String is the base64 form, as wg(8) prints keys.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// hexString is the form the UAPI configuration protocol wants.
func (k Key) hexString() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is unset.
func (k Key) IsZero() bool { return k == Key{} }

// Tunnel addressing. Every address inside the tunnel is derived, so nobody
// configures one by hand: the server is ::1 of a fixed ULA /48, and a client's
// address is a hash of its public key in the same /48. The client computes its
// own address from its key; the server computes the same from the key it was
// given. Devices refuse overlapping allowed IPs, so a hash collision could
// never silently steal another client's traffic.
var (
	// TunnelPrefix holds every tunnel address.
	TunnelPrefix = netip.MustParsePrefix("fd74:6872:6573::/48")
	// ServerAddr is the server's address inside the tunnel.
	ServerAddr = netip.MustParseAddr("fd74:6872:6573::1")
)

// ClientAddr is the tunnel address of the client with public key pub.
func ClientAddr(pub Key) netip.Addr {
	sum := sha256.Sum256(append([]byte("threshold tunnel address v1\x00"), pub[:]...))
	a := TunnelPrefix.Addr().As16()
	copy(a[6:], sum[:10])
	addr := netip.AddrFrom16(a)
	if addr == ServerAddr {
		// One chance in 2^80; flip a bit rather than collide with the server.
		a[6] ^= 0x80
		addr = netip.AddrFrom16(a)
	}
	return addr
}
