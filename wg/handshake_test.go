package wg

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// TestRefusedHandshakes: a server-like device reports an initiation from
// a key that is no peer (naming that key), one made for another key than
// its own, and not one from a peer; each source once within the interval.
func TestRefusedHandshakes(t *testing.T) {
	reports := make(chan RefusedHandshake, 16)
	sk, _ := GenerateKey()
	srv, err := New(Config{PrivateKey: sk, TUN: tuntest.NewChannelTUN().TUN(), Logger: slog.New(slog.DiscardHandler),
		RefusedHandshake: func(r RefusedHandshake) { reports <- r }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	port, err := srv.ListenPort()
	if err != nil {
		t.Fatal(err)
	}
	endpoint := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))

	initiate := func(serverPub Key) (Key, int) {
		d, _, k := newDevice(t)
		if err := d.SetPeer(Peer{PublicKey: serverPub, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")}, Endpoint: endpoint}); err != nil {
			t.Fatal(err)
		}
		if err := d.Rehandshake(serverPub); err != nil {
			t.Fatal(err)
		}
		p, _ := d.ListenPort()
		return k.PublicKey(), p
	}
	next := func() RefusedHandshake {
		t.Helper()
		select {
		case r := <-reports:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no report")
		}
		return RefusedHandshake{}
	}

	unknown, uport := initiate(sk.PublicKey())
	if r := next(); r.WrongKey || r.PublicKey != unknown || r.From.Port() != uint16(uport) {
		t.Errorf("unknown key: got %+v, want key %s from port %d", r, unknown, uport)
	}
	other, _ := GenerateKey()
	_, wport := initiate(other.PublicKey())
	if r := next(); !r.WrongKey || r.From.Port() != uint16(wport) {
		t.Errorf("wrong server key: got %+v, want WrongKey from port %d", r, wport)
	}
	// A peer's handshake is not reported; nor is the first source's
	// next initiation within the interval (wireguard-go retries every 5 s).
	d, _, pk := newDevice(t)
	if err := srv.SetPeer(Peer{PublicKey: pk.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32")}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPeer(Peer{PublicKey: sk.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")}, Endpoint: endpoint}); err != nil {
		t.Fatal(err)
	}
	if err := d.Rehandshake(sk.PublicKey()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps, _ := srv.Peers()
		if len(ps) == 1 && !ps[0].LastHandshake.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer's handshake did not complete")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case r := <-reports:
		t.Errorf("reported %+v", r)
	default:
	}
	// The answered source is skipped from now on, without a decode;
	// once the peer is removed, its next initiation is reported.
	dport, _ := d.ListenPort()
	from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(dport))
	srv.watch.mu.Lock()
	_, answered := srv.watch.answered[from]
	srv.watch.mu.Unlock()
	if !answered {
		t.Errorf("the device's response to %s was not noted", from)
	}
	if err := srv.RemovePeer(pk.PublicKey()); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		d.Rehandshake(sk.PublicKey()) // wireguard-go sends at most one per 5 s
		select {
		case r := <-reports:
			if r.PublicKey != pk.PublicKey() {
				t.Errorf("after RemovePeer: %+v", r)
			}
			return
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("a removed peer's initiation was not reported")
		}
	}
}

func TestHandshakeWatchBounds(t *testing.T) {
	sk, _ := GenerateKey()
	w := newHandshakeWatch(sk, func(Key) bool { return false }, func(RefusedHandshake) {})
	defer w.close()
	msg := make([]byte, initiationSize)
	msg[0] = initiationType
	// Data packets and other sizes are never queued.
	w.offer(make([]byte, 32), nil)
	queued := 0
	for i := range 100 {
		from := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), uint16(1000+i))
		w.offer(msg, &endpoint{dst: from})
		w.offer(msg, &endpoint{dst: from}) // the same source again: skipped
	}
	w.mu.Lock()
	queued = len(w.seen)
	w.mu.Unlock()
	if queued > refusedBurst+1 {
		t.Errorf("%d sources taken at once, want at most the burst %d", queued, refusedBurst)
	}
}
