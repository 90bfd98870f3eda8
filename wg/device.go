package wg

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// ErrAllowedIPTaken is returned when a peer would get an allowed IP that
// another peer already has: wireguard-go would silently move it.
var ErrAllowedIPTaken = errors.New("allowed IP already belongs to another peer")

// ErrClosed is returned by a Device that has been closed.
var ErrClosed = errors.New("wireguard device closed")

// Config configures a Device.
type Config struct {
	PrivateKey Key
	// ListenPort is the UDP port; 0 picks a free one (fine for a client).
	ListenPort int
	// TUN carries the device's plaintext packets; the Device closes it.
	TUN tun.Device
	// Bind is the device's network side; nil means our UDP bind
	// (bind_linux.go). Tests can pass wireguard-go's conn/bindtest.
	Bind   conn.Bind
	Logger *slog.Logger
	// RefusedHandshake, if set, is told of handshake initiations the
	// device refuses: made for another public key, or from a key that is
	// no peer (handshake.go). Calls are bounded per source and in all,
	// and come from one goroutine of the device's.
	RefusedHandshake func(RefusedHandshake)
}

// Peer is one WireGuard peer.
type Peer struct {
	PublicKey  Key
	AllowedIPs []netip.Prefix
	// Endpoint is where to send until the peer is heard from; zero for a
	// peer that always calls in (a client, seen from the server).
	Endpoint netip.AddrPort
	// PersistentKeepalive keeps NAT mappings open; zero disables it.
	PersistentKeepalive time.Duration
}

// PeerStats is what wireguard-go reports for a peer.
type PeerStats struct {
	PublicKey     Key
	Endpoint      string
	LastHandshake time.Time // zero if never
	RxBytes       uint64
	TxBytes       uint64
}

// Device is a running wireguard-go device.
type Device struct {
	dev  *device.Device
	bind conn.Bind
	log  *slog.Logger

	mu      sync.Mutex
	owners  map[netip.Prefix]Key // allowed IP -> peer, to refuse duplicates
	peers   map[Key][]netip.Prefix
	closed  bool
	closeMu sync.Once
	watch   *handshakeWatch // nil without Config.RefusedHandshake
}

// New starts a device with no peers.
func New(cfg Config) (*Device, error) {
	var errs []error
	if cfg.PrivateKey.IsZero() {
		errs = append(errs, errors.New("wg: private key is required"))
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("wg: listen port %d out of range", cfg.ListenPort))
	}
	if cfg.TUN == nil {
		errs = append(errs, errors.New("wg: TUN is required"))
	}
	if cfg.Logger == nil {
		errs = append(errs, errors.New("wg: logger is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	log := cfg.Logger
	dlog := &device.Logger{
		Verbosef: func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) },
	}
	bind := cfg.Bind
	if bind == nil {
		bind = newBind()
	}
	d := &Device{
		bind:   bind,
		log:    log,
		owners: make(map[netip.Prefix]Key),
		peers:  make(map[Key][]netip.Prefix),
	}
	devBind := bind
	if cfg.RefusedHandshake != nil {
		d.watch = newHandshakeWatch(cfg.PrivateKey, d.isPeer, cfg.RefusedHandshake)
		devBind = &watchBind{Bind: bind, w: d.watch}
	}
	d.dev = device.NewDevice(cfg.TUN, devBind, dlog)
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", cfg.PrivateKey.hexString(), cfg.ListenPort)
	if err := d.dev.IpcSet(uapi); err != nil {
		d.Close()
		return nil, fmt.Errorf("wg: configuring device: %w", err)
	}
	if err := d.dev.Up(); err != nil {
		d.Close()
		return nil, fmt.Errorf("wg: bringing device up: %w", err)
	}
	return d, nil
}

// SetPeer adds a peer or updates it in place; other peers are untouched.
func (d *Device) SetPeer(p Peer) error {
	if p.PublicKey.IsZero() {
		return fmt.Errorf("wg: %w: peer public key is zero", ErrInvalidKey)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	for _, want := range p.AllowedIPs {
		for have, owner := range d.owners {
			if owner != p.PublicKey && have.Overlaps(want) {
				return fmt.Errorf("wg: %s for peer %s: %w (%s)", want, p.PublicKey, ErrAllowedIPTaken, owner)
			}
		}
	}
	// No leading blank line: wireguard-go would ignore everything after it.
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.hexString())
	if p.Endpoint.IsValid() {
		fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
	}
	fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
	b.WriteString("replace_allowed_ips=true\n")
	for _, ip := range p.AllowedIPs {
		fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("wg: setting peer %s: %w", p.PublicKey, err)
	}
	for _, old := range d.peers[p.PublicKey] {
		delete(d.owners, old)
	}
	for _, ip := range p.AllowedIPs {
		d.owners[ip] = p.PublicKey
	}
	d.peers[p.PublicKey] = append([]netip.Prefix(nil), p.AllowedIPs...)
	return nil
}

// RemovePeer removes a peer; removing an unknown peer is not an error.
func (d *Device) RemovePeer(pub Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if err := d.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", pub.hexString())); err != nil {
		return fmt.Errorf("wg: removing peer %s: %w", pub, err)
	}
	for _, ip := range d.peers[pub] {
		delete(d.owners, ip)
	}
	delete(d.peers, pub)
	if d.watch != nil {
		d.watch.peersChanged()
	}
	return nil
}

// Peers reports every peer's counters and last handshake.
func (d *Device) Peers() ([]PeerStats, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	text, err := d.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wg: reading device state: %w", err)
	}
	return parsePeers(text)
}

func parsePeers(text string) ([]PeerStats, error) {
	var out []PeerStats
	var cur *PeerStats
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			out = append(out, *cur)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "public_key":
			flush()
			cur = &PeerStats{}
			var k []byte
			if k, err = hexDecode(value); err == nil {
				copy(cur.PublicKey[:], k)
			}
		case "endpoint":
			if cur != nil {
				cur.Endpoint = value
			}
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(value, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(value, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.RxBytes, err = strconv.ParseUint(value, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.TxBytes, err = strconv.ParseUint(value, 10, 64)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("wg: parsing %s=%q: %w", key, value, err)
		}
	}
	flush()
	return out, nil
}

func hexDecode(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return nil, fmt.Errorf("%w: bad hex key %q", ErrInvalidKey, s)
	}
	return b, nil
}

// Close shuts the device down, closing its TUN and UDP socket. Idempotent.
func (d *Device) Close() error {
	d.closeMu.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.dev.Close()
		if d.watch != nil {
			d.watch.close()
		}
	})
	return nil
}

// isPeer reports whether k is a peer of the device.
func (d *Device) isPeer(k Key) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.peers[k]
	return ok
}

// Rehandshake starts a new handshake with a peer now, instead of when
// wireguard-go's own timers would (up to 15 s after data goes unanswered,
// and never for keepalives alone). wireguard-go rate-limits it to one
// initiation per 5 s.
func (d *Device) Rehandshake(pub Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	p := d.dev.LookupPeer(device.NoisePublicKey(pub))
	if p == nil {
		return fmt.Errorf("wg: no peer %s", pub)
	}
	return p.SendHandshakeInitiation(false)
}

// BindStats reports the counters of the device's UDP sockets (receive
// buffer drops, buffer sizes, offloads); ok is false for a Bind given in
// Config that keeps none.
func (d *Device) BindStats() (st BindStats, ok bool) {
	if b, ok := d.bind.(interface{ Stats() BindStats }); ok {
		return b.Stats(), true
	}
	return BindStats{}, false
}

// ListenPort reports the UDP port the device is bound to.
func (d *Device) ListenPort() (int, error) {
	text, err := d.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("wg: reading device state: %w", err)
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("wg: device has no listen port")
}
