package forward

import (
	"net"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func TestCheckRequestRoundTrip(t *testing.T) {
	for _, udp := range []bool{false, true} {
		client, server := ftTCPPair(t)
		in := ftRequest("svc", 0)
		in.Check = &CheckRequest{Token: [CheckTokenLen]byte{1, 2, 3, 15: 9}, UDP: udp}
		if err := WriteRequest(client, in); err != nil {
			t.Fatal(err)
		}
		_, got, err := ReadRequest(server, ftPrompt)
		if err != nil {
			t.Fatal(err)
		}
		if got.Check == nil || *got.Check != *in.Check || got.BackendProxyProtocol != 0 || got.Service != "svc" {
			t.Fatalf("check request came back as %+v (check %+v)", got, got.Check)
		}
	}
}

// A check is marked twice, so that neither half alone passes: the marker
// is what makes a client without checks refuse one before dialing.
func TestCheckMarkers(t *testing.T) {
	r := ftRequest("svc", 0)
	src, dst := addrPair(r.Source, r.Destination)
	for name, tlvs := range map[string][]proxyproto.TLV{
		"marker without check": {{Type: tlvService, Value: []byte("svc")}, {Type: tlvBackendProxy, Value: []byte{checkMarker}}},
		"check without marker": {{Type: tlvService, Value: []byte("svc")}, {Type: tlvBackendProxy, Value: []byte{0}}, {Type: tlvCheck, Value: make([]byte, CheckTokenLen+1)}},
		"malformed check":      {{Type: tlvService, Value: []byte("svc")}, {Type: tlvBackendProxy, Value: []byte{checkMarker}}, {Type: tlvCheck, Value: []byte("short")}},
	} {
		h := proxyproto.HeaderProxyFromAddrs(2, src, dst)
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
		if _, err := parseRequest(h); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// askCheck sends a check straight to a Connector and reads its answer.
func askCheck(t *testing.T, addr, service string, udp bool) (checkAnswer, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := ftRequest(service, 0)
	r.Check = &CheckRequest{Token: [CheckTokenLen]byte{7}, UDP: udp}
	sent := time.Now()
	if err := WriteRequest(c, r); err != nil {
		t.Fatal(err)
	}
	return readCheckAnswer(c, r.Check.Token, sent, time.Now().Add(ftPrompt))
}

func TestConnectorAnswersChecks(t *testing.T) {
	udpOpen, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpOpen.Close()
	udpClosed, _ := net.ListenPacket("udp", "127.0.0.1:0")
	closedAddr := udpClosed.LocalAddr().String()
	udpClosed.Close()
	be := ckStartBackend(t, "")
	_, addr := ftStartConnector(t, map[string]string{"tcp": be.addr, "closed": ckClosedPort(t), "dns": udpOpen.LocalAddr().String(), "nodns": closedAddr}, nil)

	if a, err := askCheck(t, addr, "tcp", false); err != nil || a.result != BackendOK || a.roundTrip <= 0 {
		t.Errorf("TCP service: %+v %v", a, err)
	}
	if a, err := askCheck(t, addr, "closed", false); err != nil || a.result != BackendRefused || !strings.Contains(a.message, "refused") {
		t.Errorf("closed TCP port: %+v %v", a, err)
	}
	if _, err := askCheck(t, addr, "unknown", false); err == nil || !strings.Contains(err.Error(), ErrUnknownService.Error()) {
		t.Errorf("unknown service: %v", err)
	}
	// UDP: a listening service gets one empty datagram; a port where
	// nothing listens answers ICMP port unreachable.
	if a, err := askCheck(t, addr, "dns", true); err != nil || a.result != BackendOK {
		t.Errorf("UDP service: %+v %v", a, err)
	}
	udpOpen.SetReadDeadline(time.Now().Add(ftPrompt))
	buf := make([]byte, 16)
	if n, _, err := udpOpen.ReadFrom(buf); err != nil || n != 0 {
		t.Errorf("the UDP service got %d bytes (%v), want one empty datagram", n, err)
	}
	if a, err := askCheck(t, addr, "nodns", true); err != nil || a.result != BackendRefused {
		t.Errorf("closed UDP port: %+v %v", a, err)
	}
	ftWaitFor(t, ftPrompt, "the backend's connection to end", func() bool { n, _ := be.seen(); return n == 1 })
	if n, bytes := be.seen(); n != 1 || bytes != 0 {
		t.Errorf("the TCP service saw %d connections and %d bytes, want one connect", n, bytes)
	}
}
