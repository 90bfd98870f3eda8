package forward

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func TestCheckRequestRoundTrip(t *testing.T) {
	for _, udp := range []bool{false, true} {
		client, server := ftTCPPair(t)
		in := ftRequest("svc", 0)
		in.Check = &CheckRequest{Token: [CheckTokenLen]byte{1, 2, 3, 15: 9}, UDP: udp, Asked: 2, AskedKnown: true}
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
	r := ftRequest(service, 0)
	r.Check = &CheckRequest{Token: [CheckTokenLen]byte{7}, UDP: udp, AskedKnown: true}
	return sendCheck(t, addr, r)
}

// sendCheck sends the check r straight to a Connector and reads its answer.
func sendCheck(t *testing.T, addr string, r Request) (checkAnswer, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ftPrompt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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

// A check is judged by the client's PROXY choice for its service, as the
// tunnel's users would be: it is not ok where every user is refused. Its
// answer never names the service's address.
func TestCheckJudgedByProxyChoice(t *testing.T) {
	be := ckStartBackend(t, "")
	closed := ckClosedPort(t)
	_, addr := ftStartConnector(t, map[string]string{"none": be.addr, "v2": be.addr, "v1": be.addr, "server": be.addr, "closed": closed},
		func(c *ConnectorConfig) {
			c.ServiceProxy = map[string]int{"none": 0, "v2": 2, "v1": 1}
			c.Sources = SourcePolicy{} // loopback and private sources refused
		})
	check := func(service string, udp bool, asked int, known bool, src string) checkAnswer {
		t.Helper()
		r := ftRequest(service, 0)
		r.Source = netip.MustParseAddrPort(src)
		r.Check = &CheckRequest{Token: [CheckTokenLen]byte{9}, UDP: udp, Asked: asked, AskedKnown: known}
		a, err := sendCheck(t, addr, r)
		if err != nil {
			t.Fatalf("%s: %v", service, err)
		}
		return a
	}
	api := "0.0.0.0:0" // a check through the API has no user
	for _, tc := range []struct {
		service string
		udp     bool
		asked   int
		known   bool
		src     string
		want    BackendResult
	}{
		{"none", false, 2, true, api, BackendProxyRefused}, // the tunnel asks for PROXY, the service gets none
		{"none", false, 0, true, api, BackendOK},
		{"none", false, 2, false, api, BackendOK}, // a server that does not say is not judged
		{"v2", false, 0, true, api, BackendOK},    // the client sends its own header
		{"v1", true, 2, true, api, BackendProxyRefused},
		{"server", false, 1, true, api, BackendOK},
		{"server", false, 1, true, "192.168.1.9:4000", BackendProxyRefused}, // a probe's private source with a header
		{"server", false, 1, true, "203.0.113.9:4000", BackendOK},
		{"server", false, 0, true, "192.168.1.9:4000", BackendOK}, // no header: the source is not told
	} {
		if a := check(tc.service, tc.udp, tc.asked, tc.known, tc.src); a.result != tc.want {
			t.Errorf("%s udp=%v asked %d (known %v) from %s: %s %q, want %s", tc.service, tc.udp, tc.asked, tc.known, tc.src, a.result, a.message, tc.want)
		}
	}
	_, port, _ := net.SplitHostPort(closed)
	if a := check("closed", false, 0, true, api); a.result != BackendRefused || strings.Contains(a.message, "127.0.0.1") || strings.Contains(a.message, port) {
		t.Errorf("closed port: %s %q, want refused without the address", a.result, a.message)
	}
}
