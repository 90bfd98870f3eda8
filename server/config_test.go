package server

import (
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/wg"
)

// checked is what check finds in c, as New would report it.
func checked(c *Config) error {
	p := control.NewProblems(control.ErrInvalid, "server config")
	c.check(p)
	c.egressPolicy(p)
	return p.Err()
}

func TestServerConfigDefaultsAndProblems(t *testing.T) {
	var c Config
	c.FillDefaults()
	if err := checked(&c); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if c.ManagementAddress != "127.0.0.1" || c.TunnelControlPort != 9056 || c.ManagementPort != 9057 {
		t.Errorf("defaults: %+v", c)
	}
	k, _ := wg.GenerateKey()
	pub := k.PublicKey().String()
	bad := Config{TunnelControlPort: 0, ManagementPort: 99999, ManagementAddress: "example.com",
		Clients: []control.Registration{{ClientId: "a", PublicKey: pub}, {ClientId: "a", PublicKey: pub}, {ClientId: "has space", PublicKey: "x"}}}
	err := checked(&bad)
	for _, want := range []string{"TunnelControlPort", "ManagementPort", "ManagementAddress", "Clients[1].ClientId", "Clients[1].PublicKey", "Clients[2].ClientId", "Clients[2].PublicKey"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func TestServerConfigLimits(t *testing.T) {
	var c Config
	c.FillDefaults()
	gw, eg := c.limits()
	if gw.Connections != 8192 || gw.ConnectionsPerSource != 256 || gw.Peeks != 512 || gw.PeeksPerSource != 32 ||
		eg.HandshakesPerClient != 64 || eg.SessionsPerClient != 1024 {
		t.Fatalf("default limits %+v %+v", gw, eg)
	}
	neg := Config{MaxPublicConnections: -1}
	neg.FillDefaults()
	if err := checked(&neg); err == nil || !strings.Contains(err.Error(), "MaxPublicConnections: -1 is not between 1 and 1000000") {
		t.Errorf("negative limit: %v", err)
	}
	bad := Config{MaxHostnamePeeks: 9000, MaxHostnamePeeksPerSource: 2_000_000, Socks5MaxHandshakesPerClient: 5000}
	bad.FillDefaults()
	err := checked(&bad)
	for _, want := range []string{
		"MaxHostnamePeeks: 9000 is more than MaxPublicConnections (8192)",
		"MaxHostnamePeeksPerSource: 2000000 is not between",
		"Socks5MaxHandshakesPerClient: 5000 is more than Socks5MaxSessionsPerClient (1024)",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
}
