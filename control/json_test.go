package control

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/forward"
)

func TestJSONDecode(t *testing.T) {
	var ts []forward.Tunnel
	probs := NewProblems(ErrInvalid, "tunnel list")
	ok := (JSON{Root: "tunnels", Offsets: true}).Decode([]byte(`[{"ListenPort":"80","Bogus":1,"BackEndService":"b"}]`), &ts, probs)
	if !ok || ts[0].BackEndService != "b" {
		t.Fatalf("checkable %v, %+v", ok, ts)
	}
	// The check of the decoded value: the port faulted in decoding is
	// not reported again; everything else is.
	forward.CheckTunnels(ts, probs)
	got := strings.Join(probs.Lines(), "\n")
	want := "offset 15: tunnels[0].ListenPort: want an integer, got a string\n" +
		"offset 20: tunnels[0].Bogus: unknown field \"Bogus\"\n" + // a tunnel has too many fields to list them

		"tunnels[0].ClientId: is required (or ClientIds, a list in order of preference)"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	// A syntax error, an array over the bound, a value of the wrong type
	// at the top: nothing is decoded, nothing checked.
	for _, in := range []string{`[{"ListenPort":}]`, `[{},{},{}]`, `{"ListenPort":1}`} {
		var ts []forward.Tunnel
		probs := NewProblems(ErrInvalid, "tunnel list")
		if (JSON{Root: "tunnels", MaxElements: 2}).Decode([]byte(in), &ts, probs) || ts != nil || probs.Len() != 1 {
			t.Errorf("%s: %v %+v", in, probs, ts)
		}
	}
}

// The state file is read strictly too, with line and column.
func TestStateFileStrict(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ content, want string }{
		{`{"Version":1,"Version":1}`, `line 1, column 14: Version: field "Version" set twice`},
		{`{"version":1}`, `line 1, column 2: version: unknown field "version"; did you mean "Version"?`},
		{"{\"Version\":1,\n \"Tunnels\":[{\"ListenPort\":1,\"Nope\":2}]}", `line 2, column 29: Tunnels[0].Nope: unknown field "Nope"`},
		{`{"Version":1,"Clients":[{"ClientId":"x","PublicKey":`, `line 1, column 53: Clients[0].PublicKey: unexpected end of input`},
	} {
		if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := FileStore{Dir: dir}.Load()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "left untouched") {
			t.Errorf("%s: %v\nwant %s", tc.content, err, tc.want)
		}
	}
}

// Issue 15 item 6: a 3 GB state file (sparse) is refused without being
// read. Before, it was read whole: 3.75 GB of RSS and 12.8 s.
func TestStateFileTooLarge(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3 << 30); err != nil {
		t.Skipf("no sparse file here: %v", err)
	}
	f.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err = FileStore{Dir: dir}.Load()
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than") || !strings.Contains(err.Error(), "left untouched") {
		t.Fatalf("Load = %v", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("refusing a 3 GB state file allocated %d bytes", n)
	}
}
