package wg

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// relay is a UDP middlebox between two devices: what comes from a is sent
// to b and the rest back to a's last address; it flips one byte of the
// tamper-th data message (longer than a keepalive) from a, counting from 1.
func relay(t *testing.T, b netip.AddrPort, tamper int) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	// Room for a whole burst: a small datagram takes over 1 KiB of the
	// socket's buffer, and a drop here would read as a loss in the tunnel.
	pc.SetReadBuffer(1 << 20)
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		var a netip.AddrPort
		buf := make([]byte, 2048)
		data := 0
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			to := a
			if from != b {
				a, to = from, b
				if n > 32 && binary.LittleEndian.Uint32(buf) == 4 { // a transport message with data
					if data++; data == tamper {
						buf[n-20] ^= 0x40 // inside the ciphertext
					}
				}
			}
			if to.IsValid() {
				pc.WriteToUDPAddrPort(buf[:n], to)
			}
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestTamperedPacketDropped: a transport message changed on the way fails
// authentication and is dropped alone; the packets of the same burst
// before and after it arrive unchanged and in order (the batch is opened
// on the receiving goroutine and delivered in sequence: inline.go in the
// wireguard copy).
func TestTamperedPacketDropped(t *testing.T) {
	a, atun, ak := newDevice(t)
	b, btun, bk := newDevice(t)
	bport, err := b.ListenPort()
	if err != nil {
		t.Fatal(err)
	}
	const burst, tampered = 120, 40 // data messages: the first ping, then the burst
	mid := relay(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(bport)), tampered+1)
	ipA, ipB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if err := a.SetPeer(Peer{PublicKey: bk.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(ipB, 32)}, Endpoint: mid}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeer(Peer{PublicKey: ak.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(ipA, 32)}}); err != nil {
		t.Fatal(err)
	}
	ping := func(seq int) []byte {
		p := tuntest.Ping(ipB, ipA)
		binary.BigEndian.PutUint16(p[30:], uint16(seq))
		return p
	}
	recv := func(what string) []byte {
		select {
		case got := <-btun.Inbound:
			return got
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never arrived", what)
			return nil
		}
	}
	// The first ping waits for the handshake; the burst then goes at once.
	atun.Outbound <- ping(burst)
	if got := recv("the first ping"); string(got) != string(ping(burst)) {
		t.Fatal("the first ping changed in transit")
	}
	// A marker after the burst: what arrives after the burst's last
	// untampered ping must be it, so nothing else (the tampered one) got in.
	for i := range burst + 1 {
		atun.Outbound <- ping(i)
	}
	for i := range burst + 1 {
		if i == tampered-1 {
			continue // this one was changed on the way
		}
		got := recv(fmt.Sprintf("ping %d", i))
		if want := ping(i); string(got) != string(want) {
			t.Fatalf("ping %d: got seq %d (%d bytes), want it unchanged and in order", i, binary.BigEndian.Uint16(got[30:]), len(got))
		}
	}
}
