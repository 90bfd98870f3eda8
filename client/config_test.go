package client

import (
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
		ServiceToLocalAddrMap: map[string]string{"web": "127.0.0.1:80", "v6": "[::1]:8080", "named": "localhost:25"}}
	good.FillDefaults()
	if err := checked(&good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	bad := Config{ServerHost: "host:9056", ServerTunnelControlPort: 70000, Socks5ListenAddress: "0.0.0.0:1080",
		ServiceToLocalAddrMap: map[string]string{"web": "127.0.0.1", "x y": "127.0.0.1:1", "p": "127.0.0.1:0"}}
	err := checked(&bad)
	for _, want := range []string{"ClientId", "ServerHost", "ServerTunnelControlPort", "ServerPublicKey", `["web"]`, `["x y"]`, `["p"]`, "Socks5ListenAddress"} {
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
	svc := map[string]string{"web": "127.0.0.1:80"}
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
			ServiceToLocalAddrMap: map[string]string{"web": "127.0.0.1:80"}, StatusListenAddress: addr}
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
