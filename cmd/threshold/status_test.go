package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
)

func TestPrintServerStatus(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	hs := now.Add(-75 * time.Second)
	refused := now.Add(-3 * time.Hour)
	var out bytes.Buffer
	printServerStatus(&out, "http://127.0.0.1:9057", map[string]control.ClientStatus{
		"home":   {CurrentState: control.ClientConnected, LastHandshake: &hs, BytesIn: 2048, BytesOut: 300, TunnelAddress: "fd74:6872:6573::5", PublicKey: "pk=", ReportedClientId: "home2"},
		"office": {CurrentState: control.ClientUnknown},
	}, []tunnelStatus{
		{ListenPort: 443, ListenHostnameGlob: "*", BackEndService: "web", ClientIds: []string{"home", "office"}, ActiveClientId: "home"},
		{ListenAddress: "127.0.0.1", ListenPort: 25, ListenHostnameGlob: "*", BackEndService: "mail", ClientId: "office", LastRefusalReason: "unknown_service", LastRefusalAt: &refused},
	}, now)
	got := out.String()
	for _, want := range []string{
		"server: http://127.0.0.1:9057",
		"CLIENT", "home    connected   1m 15s ago", "2.00 KiB received, 300 B sent",
		"office  never seen",
		"*:443 *         web      home,office  home            -",
		"127.0.0.1:25 *  mail     office       none connected  unknown_service, 3h 0m ago",
		"office  never seen  -                 -                              -                  -\n",
		"note: home calls itself \"home2\" (the ClientId in its client.json)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("server status lacks %q:\n%s", want, got)
		}
	}
}

func TestPrintClientStatus(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	hs := now.Add(-5 * time.Second)
	var out bytes.Buffer
	printClientStatus(&out, client.Status{
		ClientId: "home", PublicKey: "cpk=", TunnelAddress: "fd74:6872:6573::5",
		Servers: []client.ServerStatus{
			{ServerHost: "eu.example.com", ServerTunnelControlPort: 9056, Endpoint: "203.0.113.10:9056", State: "connected", Since: now.Add(-2 * time.Hour), LastHandshake: &hs, BytesIn: 10, BytesOut: 20, Connections: 2, ProxyRefused: 3},
			{ServerHost: "us.example.com", ServerTunnelControlPort: 9056, State: "resolving", Since: now.Add(-30 * time.Second), LastError: "no such host"},
		},
		Services: []client.ServiceStatus{{Name: "web", Address: "127.0.0.1:8080"}},
		Socks5:   &client.Socks5Status{ListenAddress: "127.0.0.1:1080", Order: []string{"eu.example.com:9056", "us.example.com:9056"}, Current: "eu.example.com:9056"},
	}, now)
	got := out.String()
	for _, want := range []string{
		"client: home", "public key: cpk=",
		"eu.example.com:9056  203.0.113.10:9056  connected for 2h 0m", "5s ago", "10 B received, 20 B sent",
		"us.example.com:9056  -                  resolving for 30s: no such host",
		"web      127.0.0.1:8080",
		"eu.example.com:9056: 3 connections or UDP sessions refused by the PROXY choice",
		"socks5: 127.0.0.1:1080 leaves from eu.example.com:9056 (order: eu.example.com:9056, us.example.com:9056)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("client status lacks %q:\n%s", want, got)
		}
	}
}

func TestUnits(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", 59 * time.Second: "59s", 61 * time.Second: "1m 1s", 2*time.Hour + 5*time.Minute: "2h 5m", 50 * time.Hour: "2d 2h", -time.Second: "0s"} {
		if got := duration(d); got != want {
			t.Errorf("duration(%s) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.00 KiB", 5 << 20: "5.00 MiB", 3 << 30: "3.00 GiB"} {
		if got := bytesString(n); got != want {
			t.Errorf("bytesString(%d) = %q, want %q", n, got, want)
		}
	}
}
