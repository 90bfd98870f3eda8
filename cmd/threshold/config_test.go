package main

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/wg"
)

func TestDecodeStrict(t *testing.T) {
	var c ServerConfig
	if err := decodeStrict(strings.NewReader(`{"TunnelControlPort":1,"Extra":2}`), &c, maxConfigBytes); err == nil || !strings.Contains(err.Error(), "Extra") {
		t.Errorf("unknown field: %v", err)
	}
	if err := decodeStrict(strings.NewReader(`{} {}`), &c, maxConfigBytes); err == nil {
		t.Error("trailing value accepted")
	}
	if err := decodeStrict(strings.NewReader(strings.Repeat(" ", maxConfigBytes+1)), &c, maxConfigBytes); err == nil {
		t.Error("oversized config accepted")
	}
}

func TestServerConfigDefaultsAndProblems(t *testing.T) {
	var c ServerConfig
	c.fillDefaults()
	if err := c.validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if c.ManagementAddress != "127.0.0.1" || c.TunnelControlPort != 9056 || c.ManagementPort != 9057 {
		t.Errorf("defaults: %+v", c)
	}
	k, _ := wg.GenerateKey()
	pub := k.PublicKey().String()
	bad := ServerConfig{TunnelControlPort: 0, ManagementPort: 99999, ManagementAddress: "example.com",
		Clients: []ClientRegistration{{ClientId: "a", PublicKey: pub}, {ClientId: "a", PublicKey: pub}, {ClientId: "has space", PublicKey: "x"}}}
	err := bad.validate()
	for _, want := range []string{"TunnelControlPort", "ManagementPort", "ManagementAddress", "Clients[1].ClientId", "Clients[1].PublicKey", "Clients[2].ClientId", "Clients[2].PublicKey"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func TestClientConfigProblems(t *testing.T) {
	k, _ := wg.GenerateKey()
	good := ClientConfig{ClientId: "home", ServerHost: "203.0.113.10", ServerPublicKey: k.PublicKey().String(),
		ServiceToLocalAddrMap: map[string]string{"web": "127.0.0.1:80", "v6": "[::1]:8080", "named": "localhost:25"}}
	good.fillDefaults()
	if err := good.validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	bad := ClientConfig{ServerHost: "host:9056", ServerTunnelControlPort: 70000, Socks5ListenAddress: "0.0.0.0:1080",
		ServiceToLocalAddrMap: map[string]string{"web": "127.0.0.1", "x y": "127.0.0.1:1", "p": "127.0.0.1:0"}}
	err := bad.validate()
	for _, want := range []string{"ClientId", "ServerHost", "ServerTunnelControlPort", "ServerPublicKey", `["web"]`, `["x y"]`, `["p"]`, "Socks5ListenAddress"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	empty := ClientConfig{ClientId: "home", ServerHost: "h", ServerTunnelControlPort: 1, ServerPublicKey: k.PublicKey().String()}
	if err := empty.validate(); err == nil || !strings.Contains(err.Error(), "ServiceToLocalAddrMap") {
		t.Errorf("empty service map: %v", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "key")
	k1, err := loadOrCreateKey(path, log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("new key file: %v %v", st, err)
	}
	k2, err := loadOrCreateKey(path, log)
	if err != nil || k1 != k2 {
		t.Fatalf("reloading: %v, same=%v", err, k1 == k2)
	}
	corrupt := filepath.Join(dir, "corrupt")
	os.WriteFile(corrupt, []byte("not a key"), 0o600)
	if _, err := loadOrCreateKey(corrupt, log); !errors.Is(err, wg.ErrInvalidKey) {
		t.Errorf("corrupt key: %v", err)
	}
	if data, _ := os.ReadFile(corrupt); string(data) != "not a key" {
		t.Error("corrupt key file was overwritten")
	}
	if _, err := loadOrCreateKey(dir, log); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a directory as key file: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "sub")); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
