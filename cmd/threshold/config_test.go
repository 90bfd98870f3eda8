package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/server"
)

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func problemLines(t *testing.T, err error) []string {
	t.Helper()
	var p *control.Problems
	if !errors.As(err, &p) {
		t.Fatalf("want *control.Problems, got %v", err)
	}
	return p.Lines()
}

// Every JSON problem with its line, column and field, and the config's
// own problems in the same list: an unknown field hides nothing.
func TestConfigProblemsAllAtOnce(t *testing.T) {
	path := writeConfig(t, `{
  "TunnelControlPort": 9056,
  "TUNNELCONTROLPORT": 9056,
  "ManagementPort": 70000,
  "DebugLog": true, "DebugLog": false,
  "Clients": [{"ClientId": "a b", "Publickey": "x"}],
  "ShutdownGracePeriodSeconds": "10",
  "Nope": 1
}`)
	var cfg server.Config
	got := problemLines(t, loadConfig(path, &cfg, func() error { return server.Check(cfg) }))
	want := []string{
		`line 3, column 3: TUNNELCONTROLPORT: unknown field "TUNNELCONTROLPORT"; did you mean "TunnelControlPort"? (names are case-sensitive); that field is set already at line 2, column 3`,
		`line 5, column 21: DebugLog: field "DebugLog" set twice: first at line 5, column 3`,
		`line 6, column 35: Clients[0].Publickey: unknown field "Publickey"; did you mean "PublicKey"? (names are case-sensitive)`,
		`line 7, column 33: ShutdownGracePeriodSeconds: want a number, got a string`,
		`line 8, column 3: Nope: unknown field "Nope"`,
		// The check of the rest: the port, the client. The grace period,
		// which could not be decoded, is not reported twice.
		`ManagementPort: 70000 is not a port number (1-65535)`,
		`Clients[0].ClientId: "a b" may only hold letters, digits and - _ . @`,
		// "Publickey" is decoded as meant, so its value is checked too.
		`Clients[0].PublicKey: invalid WireGuard key: not base64`,
	}
	if len(got) != len(want) {
		t.Fatalf("%d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("problem %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestConfigSyntaxAndLimits(t *testing.T) {
	var cfg client.Config
	for _, tc := range []struct{ content, want string }{
		{"{\n  \"ClientId\": \"home\",\n}\n", `line 3, column 1: unexpected '}': want a key string (a comma before the end is not allowed)`},
		{"{\"ClientId\": 'home'}", `line 1, column 14: ClientId: unexpected '\'': want a value (strings take double quotes)`},
		{"{} {}", `line 1, column 4: unexpected '{' after the JSON value: only one value is allowed`},
		{"", `line 1, column 1: empty input: want a JSON value`},
		{`{"ServiceToLocalAddrMap": {"web": "127.0.0.1:1", "web": "127.0.0.1:2"}}`, `line 1, column 50: ServiceToLocalAddrMap["web"]: duplicate key "web": first at line 1, column 28`},
	} {
		path := writeConfig(t, tc.content)
		err := loadConfig(path, &cfg, func() error { return client.Check(cfg) })
		if got := problemLines(t, err); got[0] != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.content, got[0], tc.want)
		}
		if !strings.Contains(err.Error(), "invalid config "+path) {
			t.Errorf("the error does not name the file: %v", err)
		}
	}
	path := writeConfig(t, strings.Repeat(" ", maxConfigBytes+1))
	if err := loadConfig(path, &cfg, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized config: %v", err)
	}
}

// What the user sees: the file, then one problem a line.
func TestConfigErrorPrinted(t *testing.T) {
	path := writeConfig(t, `{"ClientID": "home", "ServerHost": "x"}`)
	var out strings.Builder
	if code := run([]string{"client", "--config", path}, nil, &out, &out); code != 1 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{
		"threshold client: invalid config " + path + ":\n",
		"  line 1, column 2: ClientID: unknown field \"ClientID\"; did you mean \"ClientId\"? (names are case-sensitive)\n",
		"  ServerPublicKey: ",
		"  ServiceToLocalAddrMap: is empty",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "ClientId: is required") {
		t.Errorf("the case-folded ClientID was reported missing too:\n%s", out.String())
	}
}
