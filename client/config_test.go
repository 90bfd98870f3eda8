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
