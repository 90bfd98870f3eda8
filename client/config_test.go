package client

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/wg"
)

// checked is what check finds in c, as New would report it.
func checked(c *Config) error {
	p := control.NewProblems(control.ErrInvalid, "client config")
	c.check(p)
	return p.Err()
}

func TestClientConfigProblems(t *testing.T) {
	k, _ := wg.GenerateKey()
	good := Config{ClientId: "home", ServerHost: "203.0.113.10", ServerPublicKey: k.PublicKey().String(),
		ServiceToLocalAddrMap: map[string]Service{"web": Addr("127.0.0.1:80"), "v6": Addr("[::1]:8080"), "named": WithProxy("localhost:25", 2)}}
	good.FillDefaults()
	if err := checked(&good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	bad := Config{ServerHost: "host:9056", ServerTunnelControlPort: 70000, Socks5ListenAddress: "0.0.0.0:1080",
		ServiceToLocalAddrMap: map[string]Service{"web": Addr("127.0.0.1"), "x y": Addr("127.0.0.1:1"), "p": Addr("127.0.0.1:0"), "v": WithProxy("127.0.0.1:1", 3)},
		ProxySourceAllowCIDRs: []string{"10.0.0.0/8", "nope"}}
	err := checked(&bad)
	for _, want := range []string{"ClientId", "ServerHost", "ServerTunnelControlPort", "ServerPublicKey", `["web"]`, `["x y"]`, `["p"]`, `["v"].ProxyProtocol: 3 is not 0 (none), 1 or 2`, `ProxySourceAllowCIDRs: invalid address or prefix "nope"`, "Socks5ListenAddress"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	empty := Config{ClientId: "home", ServerHost: "h", ServerTunnelControlPort: 1, ServerPublicKey: k.PublicKey().String()}
	if err := checked(&empty); err == nil || !strings.Contains(err.Error(), "ServiceToLocalAddrMap") {
		t.Errorf("empty service map: %v", err)
	}
}

func TestServersForms(t *testing.T) {
	k1, _ := wg.GenerateKey()
	k2, _ := wg.GenerateKey()
	svc := map[string]Service{"web": Addr("127.0.0.1:80")}
	single := Config{ClientId: "home", ServerHost: "203.0.113.10", ServerPublicKey: k1.PublicKey().String(), ServiceToLocalAddrMap: svc}
	single.FillDefaults()
	if err := checked(&single); err != nil {
		t.Fatalf("single server: %v", err)
	}
	if got := single.servers(); len(got) != 1 || got[0].ServerHost != "203.0.113.10" || got[0].ServerTunnelControlPort != DefaultServerTunnelControlPort {
		t.Fatalf("single server as a list: %+v", got)
	}

	list := Config{ClientId: "home", ServiceToLocalAddrMap: svc, Servers: []Server{
		{ServerHost: "a.example.com", ServerPublicKey: k1.PublicKey().String()},
		{ServerHost: "198.51.100.7", ServerTunnelControlPort: 51820, ServerPublicKey: k2.PublicKey().String()},
	}}
	list.FillDefaults()
	if err := checked(&list); err != nil {
		t.Fatalf("server list: %v", err)
	}
	if got := list.servers(); len(got) != 2 || got[0].ServerTunnelControlPort != DefaultServerTunnelControlPort || got[1].String() != "198.51.100.7:51820" {
		t.Fatalf("server list: %+v", got)
	}
	if list.ServerTunnelControlPort != 0 {
		t.Fatalf("FillDefaults filled the single-server port of a list config: %d", list.ServerTunnelControlPort)
	}

	// Both forms at once: one problem naming both.
	for _, both := range []Config{
		{ServerHost: "203.0.113.10"},
		{ServerPublicKey: k1.PublicKey().String()},
		{ServerTunnelControlPort: 9056},
	} {
		both.ClientId, both.ServiceToLocalAddrMap = "home", svc
		both.Servers = list.Servers
		both.FillDefaults()
		err := checked(&both)
		if err == nil || !strings.Contains(err.Error(), "Servers: is given together with ServerHost/ServerTunnelControlPort/ServerPublicKey") {
			t.Errorf("both forms: %v", err)
		}
	}

	// Each entry's problems name the entry; duplicates are refused.
	bad := Config{ClientId: "home", ServiceToLocalAddrMap: svc, Servers: []Server{
		{ServerHost: "a.example.com", ServerPublicKey: k1.PublicKey().String()},
		{ServerHost: "", ServerTunnelControlPort: 70000, ServerPublicKey: "nope"},
		{ServerHost: "b.example.com", ServerPublicKey: k1.PublicKey().String()},
		{ServerHost: "A.example.com", ServerTunnelControlPort: 9056, ServerPublicKey: k2.PublicKey().String()},
	}}
	bad.FillDefaults()
	err := checked(&bad)
	for _, want := range []string{
		"Servers[1].ServerHost: is required",
		"Servers[1].ServerTunnelControlPort: 70000 is not a port number",
		"Servers[1].ServerPublicKey:",
		"Servers[2].ServerPublicKey: is the key of Servers[0] too",
		"Servers[3].ServerHost: A.example.com:9056 is Servers[0]'s address too",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}

	many := Config{ClientId: "home", ServiceToLocalAddrMap: svc}
	for i := range MaxServers + 1 {
		k, _ := wg.GenerateKey()
		many.Servers = append(many.Servers, Server{ServerHost: "h" + strings.Repeat("x", i), ServerPublicKey: k.PublicKey().String()})
	}
	many.FillDefaults()
	if err := checked(&many); err == nil || !strings.Contains(err.Error(), "at most 16") {
		t.Errorf("too many servers: %v", err)
	}
}

func TestStatusListenAddressLoopbackOnly(t *testing.T) {
	k, _ := wg.GenerateKey()
	for addr, ok := range map[string]bool{
		"127.0.0.1:9058": true, "[::1]:9058": true, "localhost:9058": true,
		"0.0.0.0:9058": false, "192.0.2.1:9058": false, ":9058": false, "127.0.0.1": false, "example.com:9058": false,
	} {
		c := Config{ClientId: "home", ServerHost: "203.0.113.10", ServerPublicKey: k.PublicKey().String(),
			ServiceToLocalAddrMap: map[string]Service{"web": Addr("127.0.0.1:80")}, StatusListenAddress: addr}
		c.FillDefaults()
		err := checked(&c)
		if ok != (err == nil) {
			t.Errorf("StatusListenAddress %q: %v", addr, err)
		}
		if err != nil && !strings.Contains(err.Error(), "StatusListenAddress") {
			t.Errorf("StatusListenAddress %q: problem does not name the field: %v", addr, err)
		}
	}
}

// The two forms of a ServiceToLocalAddrMap value, read strictly, and
// written back in the form they were read in.
func TestServiceForms(t *testing.T) {
	in := `{"ServiceToLocalAddrMap": {
  "web": "127.0.0.1:9001",
  "mail": {"Address": "127.0.0.1:25", "ProxyProtocol": 2},
  "ssh": {"Address": "127.0.0.1:22"}
}}`
	var c Config
	probs := control.NewProblems(control.ErrInvalid, "client config")
	if !(control.JSON{}).Decode([]byte(in), &c, probs) || probs.Len() != 0 {
		t.Fatal(probs)
	}
	m := c.ServiceToLocalAddrMap
	if m["web"].ProxyProtocol != nil || *m["mail"].ProxyProtocol != 2 || *m["ssh"].ProxyProtocol != 0 {
		t.Fatalf("%+v", m)
	}
	cc := c.connectorConfig()
	if cc.Services["mail"] != "127.0.0.1:25" || len(cc.ServiceProxy) != 2 || cc.ServiceProxy["ssh"] != 0 || !cc.Sources.TunnelPrefix.IsValid() {
		t.Fatalf("connector config %+v", cc)
	}
	out, err := json.Marshal(m)
	if err != nil || string(out) != `{"mail":{"Address":"127.0.0.1:25","ProxyProtocol":2},"ssh":{"Address":"127.0.0.1:22","ProxyProtocol":0},"web":"127.0.0.1:9001"}` {
		t.Fatalf("%s %v", out, err)
	}
	bad := `{"ServiceToLocalAddrMap": {
  "a": {"address": "127.0.0.1:1"},
  "b": {"Address": "127.0.0.1:2", "ProxyProtocol": 3},
  "c": 22,
  "d": {"Address": "127.0.0.1:4", "Proxy": 1}
}}`
	c = Config{}
	probs = control.NewProblems(control.ErrInvalid, "client config")
	(control.JSON{}).Decode([]byte(bad), &c, probs)
	got := strings.Join(probs.Lines(), "\n")
	for _, want := range []string{
		`line 2, column 9: ServiceToLocalAddrMap["a"].address: unknown field "address"; did you mean "Address"?`,
		`line 3, column 8: ServiceToLocalAddrMap["b"]: ProxyProtocol must be 0 (none), 1 or 2, not 3`,
		`line 4, column 8: ServiceToLocalAddrMap["c"]: want a string or an object, got a number`,
		`line 5, column 35: ServiceToLocalAddrMap["d"].Proxy: unknown field "Proxy"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
}

// A service's UDP PROXY mode is read with the object form, checked, and
// handed to the UDP connector with the same addresses, choices and policy.
func TestServiceUDPMode(t *testing.T) {
	in := `{"ServiceToLocalAddrMap": {
  "dns": {"Address": "127.0.0.1:53", "ProxyProtocol": 2, "UdpProxyProtocolMode": "first"},
  "game": {"Address": "127.0.0.1:19132", "ProxyProtocol": 2},
  "web": "127.0.0.1:80"
}}`
	var c Config
	probs := control.NewProblems(control.ErrInvalid, "client config")
	if !(control.JSON{}).Decode([]byte(in), &c, probs) || probs.Len() != 0 {
		t.Fatal(probs)
	}
	uc := c.udpConnectorConfig()
	if uc.Services["dns"] != "127.0.0.1:53" || uc.ServiceProxy["dns"] != 2 || uc.ServiceUDPProxyMode["dns"] != "first" ||
		uc.ServiceUDPProxyMode["game"] != "" || len(uc.ServiceProxy) != 2 || !uc.Sources.TunnelPrefix.IsValid() {
		t.Fatalf("UDP connector config %+v", uc)
	}
	out, err := json.Marshal(c.ServiceToLocalAddrMap["dns"])
	if err != nil || string(out) != `{"Address":"127.0.0.1:53","ProxyProtocol":2,"UdpProxyProtocolMode":"first"}` {
		t.Fatalf("%s %v", out, err)
	}
	bad := `{"ServiceToLocalAddrMap": {
  "a": {"Address": "127.0.0.1:1", "ProxyProtocol": 2, "UdpProxyProtocolMode": "sometimes"},
  "b": {"Address": "127.0.0.1:2", "UdpProxyProtocolMode": "every"}
}}`
	c = Config{}
	probs = control.NewProblems(control.ErrInvalid, "client config")
	(control.JSON{}).Decode([]byte(bad), &c, probs)
	got := strings.Join(probs.Lines(), "\n")
	for _, want := range []string{
		`ServiceToLocalAddrMap["a"]: UdpProxyProtocolMode "sometimes" is not "every" or "first"`,
		`ServiceToLocalAddrMap["b"]: UdpProxyProtocolMode "every" needs ProxyProtocol 2`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
	// A config built in Go, not read from JSON, is checked the same way.
	two := 2
	cfg := Config{ServiceToLocalAddrMap: map[string]Service{"x": {Address: "127.0.0.1:1", ProxyProtocol: &two, UdpProxyProtocolMode: "last"}}}
	p := control.NewProblems(control.ErrInvalid, "client config")
	cfg.check(p)
	if !strings.Contains(strings.Join(p.Lines(), "\n"), `ServiceToLocalAddrMap["x"].UdpProxyProtocolMode: UdpProxyProtocolMode "last" is not`) {
		t.Errorf("check: %v", p.Lines())
	}
}
