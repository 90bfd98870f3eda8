package wg

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func TestKeys(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if k[0]&7 != 0 || k[31]&0xc0 != 0x40 {
		t.Errorf("generated key not clamped: %x", k)
	}
	back, err := ParseKey(k.String() + "\n")
	if err != nil || back != k {
		t.Fatalf("round trip: %v", err)
	}
	// RFC 7748 section 6.1 (Alice), as wg pubkey computes it.
	priv, _ := ParseKey("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
	if got := priv.PublicKey().String(); got != "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=" {
		t.Errorf("public key %s", got)
	}
	for _, bad := range []string{"", "not base64!", "AAAA", strings.Repeat("A", 43) + "=", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="} {
		if _, err := ParseKey(bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalidKey", bad, err)
		}
	}
}

func TestClientAddr(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for range 1000 {
		k, _ := GenerateKey()
		a := ClientAddr(k.PublicKey())
		if !TunnelPrefix.Contains(a) || a == ServerAddr {
			t.Fatalf("address %s outside %s or the server's", a, TunnelPrefix)
		}
		if a != ClientAddr(k.PublicKey()) {
			t.Fatal("address not deterministic")
		}
		if seen[a] {
			t.Fatalf("collision on %s", a)
		}
		seen[a] = true
	}
}

func TestParsePeers(t *testing.T) {
	k, _ := GenerateKey()
	text := "private_key=00\nlisten_port=1\npublic_key=" + k.hexString() +
		"\nendpoint=127.0.0.1:5\nlast_handshake_time_sec=100\nlast_handshake_time_nsec=5\ntx_bytes=7\nrx_bytes=9\n" +
		"public_key=" + k.PublicKey().hexString() + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
	ps, err := parsePeers(text)
	if err != nil || len(ps) != 2 {
		t.Fatalf("parsePeers: %v %+v", err, ps)
	}
	if ps[0].PublicKey != k || ps[0].Endpoint != "127.0.0.1:5" || ps[0].TxBytes != 7 || ps[0].RxBytes != 9 || !ps[0].LastHandshake.Equal(time.Unix(100, 5)) {
		t.Errorf("first peer %+v", ps[0])
	}
	if !ps[1].LastHandshake.IsZero() {
		t.Errorf("never-handshaken peer has time %v", ps[1].LastHandshake)
	}
	if _, err := parsePeers("public_key=zz\n"); err == nil {
		t.Error("bad hex accepted")
	}
}

func newDevice(t *testing.T) (*Device, *tuntest.ChannelTUN, Key) {
	t.Helper()
	k, _ := GenerateKey()
	tn := tuntest.NewChannelTUN()
	var logs bytes.Buffer
	d, err := New(Config{PrivateKey: k, TUN: tn.TUN(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); d.Close() })
	return d, tn, k
}

func TestDevicesExchangePackets(t *testing.T) {
	a, atun, ak := newDevice(t)
	b, btun, bk := newDevice(t)
	bport, err := b.ListenPort()
	if err != nil || bport == 0 {
		t.Fatalf("listen port %d %v", bport, err)
	}
	ipA, ipB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if err := a.SetPeer(Peer{PublicKey: bk.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(ipB, 32)},
		Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(bport)), PersistentKeepalive: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeer(Peer{PublicKey: ak.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(ipA, 32)}}); err != nil {
		t.Fatal(err)
	}
	ping := tuntest.Ping(ipB, ipA)
	atun.Outbound <- ping
	select {
	case got := <-btun.Inbound:
		if !bytes.Equal(got, ping) {
			t.Fatalf("packet changed in transit")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("packet never arrived")
	}
	// A packet from an address B does not allow for A is dropped.
	atun.Outbound <- tuntest.Ping(ipB, netip.MustParseAddr("192.0.2.99"))
	atun.Outbound <- ping
	select {
	case got := <-btun.Inbound:
		if !bytes.Equal(got, ping) {
			t.Fatal("a spoofed source address got through")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second packet never arrived")
	}
	stats, err := b.Peers()
	if err != nil || len(stats) != 1 || stats[0].PublicKey != ak.PublicKey() || stats[0].RxBytes == 0 || stats[0].LastHandshake.IsZero() {
		t.Fatalf("stats %+v %v", stats, err)
	}
	if err := a.Rehandshake(bk.PublicKey()); err != nil {
		t.Errorf("Rehandshake: %v", err)
	}
	if err := a.Rehandshake(ak.PublicKey()); err == nil {
		t.Error("Rehandshake of an unknown peer succeeded")
	}
}

func TestAllowedIPsNeverShared(t *testing.T) {
	d, _, _ := newDevice(t)
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	p := netip.MustParsePrefix("fd00::1/128")
	if err := d.SetPeer(Peer{PublicKey: k1, AllowedIPs: []netip.Prefix{p}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPeer(Peer{PublicKey: k1, AllowedIPs: []netip.Prefix{p}}); err != nil {
		t.Fatalf("re-setting the same peer: %v", err)
	}
	for _, q := range []string{"fd00::1/128", "fd00::/64"} {
		if err := d.SetPeer(Peer{PublicKey: k2, AllowedIPs: []netip.Prefix{netip.MustParsePrefix(q)}}); !errors.Is(err, ErrAllowedIPTaken) {
			t.Errorf("second peer claiming %s: %v", q, err)
		}
	}
	if ps, _ := d.Peers(); len(ps) != 1 {
		t.Fatalf("refused peer was added: %+v", ps)
	}
	if err := d.RemovePeer(k1); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPeer(Peer{PublicKey: k2, AllowedIPs: []netip.Prefix{p}}); err != nil {
		t.Fatalf("address not freed by RemovePeer: %v", err)
	}
	d.Close()
	if err := d.SetPeer(Peer{PublicKey: k1}); !errors.Is(err, ErrClosed) {
		t.Errorf("SetPeer after Close: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{ListenPort: -1})
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"private key", "listen port", "TUN", "logger"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// TestDevicesOverBindtest runs two devices over wireguard-go's in-memory
// bind, which Config.Bind accepts instead of our UDP one.
func TestDevicesOverBindtest(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	var devs [2]*Device
	var tuns [2]*tuntest.ChannelTUN
	var keys [2]Key
	for i := range devs {
		keys[i], _ = GenerateKey()
		tuns[i] = tuntest.NewChannelTUN()
		d, err := New(Config{PrivateKey: keys[i], TUN: tuns[i].TUN(), Bind: binds[i], Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		devs[i] = d
	}
	if _, ok := devs[0].BindStats(); ok {
		t.Error("bindtest's bind reported socket stats")
	}
	ipA, ipB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	// bindtest's endpoints are ports on 127.0.0.1: 1 reaches the second bind.
	if err := devs[0].SetPeer(Peer{PublicKey: keys[1].PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(ipB, 32)},
		Endpoint: netip.MustParseAddrPort("127.0.0.1:1")}); err != nil {
		t.Fatal(err)
	}
	if err := devs[1].SetPeer(Peer{PublicKey: keys[0].PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(ipA, 32)}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		ping := tuntest.Ping(ipB, ipA)
		tuns[0].Outbound <- ping
		select {
		case got := <-tuns[1].Inbound:
			if !bytes.Equal(got, ping) {
				t.Fatalf("packet %d changed in transit", i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("packet %d never arrived", i)
		}
	}
}

func TestDefaultBindStats(t *testing.T) {
	d, _, _ := newDevice(t)
	st, ok := d.BindStats()
	if !ok || st.RcvBuf == 0 {
		t.Fatalf("stats %+v, %v", st, ok)
	}
	t.Logf("socket buffers %d/%d bytes, GSO %v, GRO %v", st.RcvBuf, st.SndBuf, st.TxOffload, st.RxOffload)
}
