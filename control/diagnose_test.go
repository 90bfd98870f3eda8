package control

import (
	"strings"
	"testing"
	"time"
)

func TestHeardName(t *testing.T) {
	h := newHarness(t, &memStore{}, reg("TestClient1", 1))
	p, _ := h.dir().Peer("TestClient1")
	h.p.HeardName(p.Addr, "TestClient1")
	if st := h.p.Clients()["TestClient1"]; st.ReportedClientId != "" {
		t.Errorf("the same name is reported: %+v", st)
	}
	for range 3 {
		h.p.HeardName(p.Addr, "TestClient2")
	}
	if st := h.p.Clients()["TestClient1"]; st.ReportedClientId != "TestClient2" {
		t.Errorf("ReportedClientId %q, want TestClient2", st.ReportedClientId)
	}
	if n := strings.Count(h.logs.String(), "client_says=TestClient2"); n != 1 {
		t.Errorf("mismatch logged %d times, want once:\n%s", n, h.logs.String())
	}
	// Names no config could hold, and unknown addresses, are ignored.
	h.p.HeardName(p.Addr, "bad name\n")
	h.p.HeardName(h.dev.Addr(key(9)), "Other")
	if st := h.p.Clients()["TestClient1"]; st.ReportedClientId != "TestClient2" {
		t.Errorf("after junk: %+v", st)
	}
}

func TestSilentHandshake(t *testing.T) {
	h := newHarness(t, &memStore{}, reg("quiet", 1), reg("fine", 2))
	hs := h.clock()
	h.dev.mu.Lock()
	h.dev.stats = map[Key]PeerStats{key(1): {LastHandshake: hs}, key(2): {LastHandshake: hs}}
	h.dev.mu.Unlock()
	fine, _ := h.dir().Peer("fine")
	h.advance(time.Second)
	h.p.Heard(fine.Addr)
	h.advance(5 * time.Second)
	h.p.diagnose()
	if strings.Contains(h.logs.String(), "sends no heartbeats") {
		t.Fatalf("warned before %s:\n%s", silentAfterHandshake, h.logs.String())
	}
	h.advance(5 * time.Second)
	h.p.diagnose()
	h.p.diagnose()
	logs := h.logs.String()
	if n := strings.Count(logs, "sends no heartbeats"); n != 1 || !strings.Contains(logs, "client=quiet") || strings.Contains(logs, "client=fine") {
		t.Errorf("want one line for quiet only:\n%s", logs)
	}
}
