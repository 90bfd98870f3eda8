package control

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/forward"
)

func udpFreePort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// udpBound reports whether someone holds 127.0.0.1:port for UDP.
func udpBound(t *testing.T, port int) bool {
	t.Helper()
	pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return true
	}
	pc.Close()
	return false
}

func udpTunnel(port int, client string) forward.Tunnel {
	return forward.Tunnel{Protocol: "udp", ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "dns", ClientId: client}
}

// TestSetTunnelsUDPAllOrNothing: UDP tunnels take part in the two-phase
// change like TCP ones: a refused change (a busy UDP port, a bad field, a
// save that fails) leaves nothing behind and the old list in force, and a
// restart restores them.
func TestSetTunnelsUDPAllOrNothing(t *testing.T) {
	store := &memStore{}
	h := newHarness(t, store, reg("a", 1))
	p := udpFreePort(t)
	applied, err := h.p.SetTunnels([]forward.Tunnel{tunnel(p, "a"), udpTunnel(p, "a")})
	if err != nil {
		t.Fatalf("a TCP and a UDP tunnel on one port number: %v", err)
	}
	if applied[1].Protocol != "udp" || applied[1].UdpSessionIdleSeconds != 120 || applied[1].UdpMaxSessions != 10000 {
		t.Errorf("applied UDP tunnel: %+v", applied[1])
	}
	if st := store.state(); len(st.Tunnels) != 2 || st.Tunnels[1].Protocol != "udp" || st.Tunnels[1].ActiveSessions != nil {
		t.Errorf("saved tunnels: %+v", st.Tunnels)
	}
	if !udpBound(t, p) {
		t.Fatal("the UDP tunnel's port is not bound")
	}
	saves := store.saves

	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	fresh := udpFreePort(t)
	_, err = h.p.SetTunnels([]forward.Tunnel{udpTunnel(p, "a"), udpTunnel(fresh, "a"), udpTunnel(busy.LocalAddr().(*net.UDPAddr).Port, "a")})
	var pe *Problems
	if !errors.Is(err, ErrConflict) || !errors.As(err, &pe) || len(pe.Lines()) != 1 {
		t.Fatalf("SetTunnels onto a busy UDP port = %v, want one conflict", err)
	}
	if store.saves != saves || udpBound(t, fresh) || !udpBound(t, p) || len(h.p.Tunnels()) != 2 {
		t.Error("a change refused for a busy UDP port changed something")
	}

	_, err = h.p.SetTunnels([]forward.Tunnel{udpTunnel(fresh, "a"), {Protocol: "udp", ListenPort: fresh + 1, ListenHostnameGlob: "*", BackEndService: "x", ClientId: "a", UdpMaxSessions: -1}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "tunnels[1].ListenHostnameGlob") || !strings.Contains(err.Error(), "tunnels[1].UdpMaxSessions") {
		t.Fatalf("SetTunnels with bad UDP fields = %v", err)
	}
	if store.saves != saves || udpBound(t, fresh) {
		t.Error("an invalid change changed something")
	}

	store.setFail(true)
	if _, err := h.p.SetTunnels([]forward.Tunnel{udpTunnel(fresh, "a")}); err == nil {
		t.Fatal("SetTunnels succeeded without saving")
	}
	store.setFail(false)
	if udpBound(t, fresh) || !udpBound(t, p) {
		t.Error("a change that could not be saved left its UDP port open, or closed the old one")
	}

	// A restart restores the UDP tunnel on its port.
	h.p.Close()
	h.gw.Close()
	if udpBound(t, p) {
		t.Fatal("the gateway's Close left the UDP port bound")
	}
	h2 := newHarness(t, store)
	if ts := h2.p.Tunnels(); len(ts) != 2 || !ts[1].IsUDP() || !udpBound(t, p) {
		t.Errorf("restored tunnels %+v (port bound: %v)", ts, udpBound(t, p))
	}
}
