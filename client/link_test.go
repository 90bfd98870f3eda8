package client

import (
	"net"
	"testing"
	"time"
)

// A server that does not answer is explained 10 s after it stopped, then
// at a slowing rate that never gets faster than once per warnRepeatMax
// once it is there; an answer starts the schedule over.
func TestWarnSchedule(t *testing.T) {
	var w warnSchedule
	down := time.Unix(1000, 0)
	var at []time.Duration
	for s := time.Duration(0); s <= 30*time.Minute; s += time.Second { // the link's 1 s tick
		if w.due(down.Add(s), down) {
			at = append(at, s)
		}
	}
	want := []time.Duration{10, 30, 70, 150, 310, 610, 910, 1210, 1510}
	if len(at) != len(want) {
		t.Fatalf("warned at %v, want %v (seconds)", at, want)
	}
	for i := range want {
		if at[i] != want[i]*time.Second {
			t.Fatalf("warned at %v, want %v (seconds)", at, want)
		}
	}
	w.reset()
	again := down.Add(time.Hour)
	if w.due(again.Add(9*time.Second), again) || !w.due(again.Add(10*time.Second), again) {
		t.Fatal("after a reset the first warning is not 10 s after the new loss")
	}
}

// A relayed SOCKS5 conn is tracked by its link and still shows the
// tunnel's conn beneath, which the relay's join needs to wait for data
// without a goroutine; closing it leaves the set.
func TestTrackedConn(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	var set connSet
	c := set.track(a)
	nc, ok := c.(interface{ NetConn() net.Conn })
	if !ok || nc.NetConn() != a {
		t.Fatalf("a tracked conn does not unwrap to the tunnel's conn")
	}
	if set.count() != 1 {
		t.Fatalf("set holds %d conns, want 1", set.count())
	}
	c.Close()
	if set.count() != 0 {
		t.Errorf("a closed conn stayed in the set")
	}
	if n := set.closeAll(); n != 0 {
		t.Errorf("closeAll closed %d, want 0", n)
	}
}
