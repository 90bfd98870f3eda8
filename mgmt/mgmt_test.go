package mgmt

import (
	"context"
	"net/netip"
	"os"

	"bytes"
	"encoding/json"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
)

// fakeBackend records calls and answers with canned errors.
type fakeBackend struct {
	mu       sync.Mutex
	tunnels  []forward.Tunnel
	setErr   error
	clients  map[string]control.ClientStatus
	putErr   error
	delErr   error
	setCalls int
	checkSel []forward.CheckSelector
	checkRes []forward.CheckResult
	checkErr error
	validate bool // SetTunnels checks as the control plane does
}

func (f *fakeBackend) Tunnels() []forward.Tunnel {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tunnels
}

func (f *fakeBackend) SetTunnels(ts []forward.Tunnel) ([]forward.Tunnel, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setCalls++
	if f.setErr != nil {
		return nil, f.setErr
	}
	if f.validate {
		probs := control.NewProblems(control.ErrInvalid, "tunnel list")
		if forward.CheckTunnels(ts, probs); probs.Len() > 0 {
			return nil, probs
		}
	}
	f.tunnels = ts
	return ts, nil
}

func (f *fakeBackend) Clients() map[string]control.ClientStatus { return f.clients }

func (f *fakeBackend) PutClient(id string, reg control.Registration) (control.ClientStatus, error) {
	if f.putErr != nil {
		return control.ClientStatus{}, f.putErr
	}
	return control.ClientStatus{CurrentState: control.ClientUnknown, LastState: control.ClientUnknown, PublicKey: reg.PublicKey}, nil
}

func (f *fakeBackend) DeleteClient(id string) error { return f.delErr }

// CheckTunnels reports what the control plane would say of a port.
func (f *fakeBackend) CheckTunnels(ts []forward.Tunnel, probs *control.Problems) {
	forward.CheckTunnels(ts, probs)
}

func (f *fakeBackend) CheckClient(id string, reg control.Registration, probs *control.Problems) {
	if reg.PublicKey == "" {
		probs.Addf("PublicKey", "is required")
	}
}

func serve(t *testing.T, b Backend) *httptest.Server {
	t.Helper()
	h, err := NewHandler(b, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func do(t *testing.T, s *httptest.Server, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPutTunnelsDecoding(t *testing.T) {
	f := &fakeBackend{}
	s := serve(t, f)
	good := `[{"HaProxyProxyProtocol":true,"ListenAddress":"127.0.0.1","ListenHostnameGlob":"*","ListenPort":9000,"BackEndService":"fooService","ClientId":"TestClient1"}]`
	code, body := do(t, s, "PUT", "/tunnels", good)
	if code != 200 || !strings.Contains(body, `"ListenPort":9000`) {
		t.Fatalf("good PUT: %d %s", code, body)
	}
	for _, bad := range []string{`[{"ListenPort":9000,"Nope":1}]`, `{`, `null`, `[] {}`, `"x"`, "[" + strings.Repeat(" ", MaxBodyBytes) + "]"} {
		before := f.setCalls
		code, body := do(t, s, "PUT", "/tunnels", bad)
		if code != 400 || !strings.Contains(body, `"Error"`) {
			t.Errorf("PUT %.40q: %d %s", bad, code, body)
		}
		if f.setCalls != before {
			t.Errorf("PUT %.40q reached the backend", bad)
		}
	}
	code, body = do(t, s, "GET", "/tunnels", "")
	if code != 200 || !strings.Contains(body, "fooService") {
		t.Errorf("GET /tunnels: %d %s", code, body)
	}
	if code, _ := do(t, s, "POST", "/tunnels", good); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /tunnels: %d", code)
	}
}

func problems(kind error, list ...string) error {
	p := control.NewProblems(kind, "test")
	for _, s := range list {
		p.Add(s)
	}
	return p
}

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		err      error
		code     int
		problems []string
	}{
		{problems(control.ErrInvalid, "a", "b"), 400, []string{"a", "b"}},
		{problems(control.ErrConflict, "port"), 409, []string{"port"}},
		{fmt.Errorf("x: %w", control.ErrNotFound), 404, nil},
		{fmt.Errorf("x: %w", control.ErrConflict), 409, nil},
		{fmt.Errorf("x: %w", control.ErrInvalid), 400, nil},
		{fmt.Errorf("disk on fire"), 500, nil},
	}
	for _, tc := range cases {
		f := &fakeBackend{setErr: tc.err, putErr: tc.err, delErr: tc.err}
		s := serve(t, f)
		for _, req := range [][3]string{{"PUT", "/tunnels", "[]"}, {"PUT", "/clients/x", `{"PublicKey":"k"}`}, {"DELETE", "/clients/x", ""}} {
			code, body := do(t, s, req[0], req[1], req[2])
			if code != tc.code {
				t.Errorf("%v via %s %s: %d, want %d", tc.err, req[0], req[1], code, tc.code)
			}
			var e struct {
				Error    string
				Problems []string
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
				t.Errorf("error body %q", body)
			}
			if fmt.Sprint(e.Problems) != fmt.Sprint(tc.problems) && tc.problems != nil {
				t.Errorf("problems %v, want %v", e.Problems, tc.problems)
			}
		}
	}
}

func TestClientsEndpoints(t *testing.T) {
	f := &fakeBackend{clients: map[string]control.ClientStatus{"TestClient1": {CurrentState: control.ClientConnected, LastState: control.ClientUnknown}}}
	s := serve(t, f)
	code, body := do(t, s, "GET", "/clients", "")
	var got map[string]map[string]any
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("GET /clients: %d %s", code, body)
	}
	if got["TestClient1"]["CurrentState"] != "ClientConnected" || got["TestClient1"]["LastState"] != "ClientUnknown" {
		t.Errorf("GET /clients shape: %s", body)
	}
	if _, has := got["TestClient1"]["LastHandshake"]; has {
		t.Error("LastHandshake should be absent before any handshake")
	}
	if code, body := do(t, s, "PUT", "/clients/x", `{"PublicKey":"k","Other":1}`); code != 400 {
		t.Errorf("unknown field: %d %s", code, body)
	}
	if code, _ := do(t, s, "DELETE", "/clients/x", ""); code != 204 {
		t.Errorf("DELETE: %d", code)
	}
	if code, body := do(t, s, "GET", "/healthz", ""); code != 200 || !bytes.Contains([]byte(body), []byte("ok")) {
		t.Errorf("healthz: %d %s", code, body)
	}
}

func TestNewHandlerValidates(t *testing.T) {
	if _, err := NewHandler(nil, nil, Options{}); err == nil {
		t.Fatal("nil backend accepted")
	}
}

func TestMetricsAndHealthzOutsideAuth(t *testing.T) {
	dir := t.TempDir()
	tokenFile := dir + "/token"
	os.WriteFile(tokenFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	auth, err := NewAuth(AuthConfig{ManagementTokenFile: tokenFile, ListenAddress: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h, err := NewHandler(&fakeBackend{}, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Auth: auth, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	defer s.Close()
	if code, _ := do(t, s, "GET", "/healthz", ""); code != 200 {
		t.Errorf("healthz without token: %d", code)
	}
	if code, _ := do(t, s, "GET", "/tunnels", ""); code != 401 {
		t.Errorf("tunnels without token: %d", code)
	}
	if code, _ := do(t, s, "GET", "/metrics", ""); code != 401 {
		t.Errorf("metrics without token: %d", code)
	}
	req, _ := http.NewRequest("GET", s.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer 0123456789abcdef0123456789abcdef")
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`threshold_management_requests_total{code="401",method="get"} 2`, `threshold_management_requests_total{code="200",method="get"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
}

func (f *fakeBackend) CheckReachability(ctx context.Context, sel []forward.CheckSelector) ([]forward.CheckResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkSel = sel
	return f.checkRes, f.checkErr
}

func (f *fakeBackend) ArmCheck(req forward.ArmRequest) (forward.ArmedCheck, error) {
	if f.checkErr != nil {
		return forward.ArmedCheck{}, f.checkErr
	}
	return forward.ArmedCheck{Token: "t", Probe: "line", Tunnel: forward.Tunnel{ListenPort: req.ListenPort}}, nil
}

// JSON problems are placed by byte offset and named by field path, and
// come with the problems a check of the rest finds: an unknown field does
// not hide a bad port.
func TestJSONErrors(t *testing.T) {
	f := &fakeBackend{}
	s := serve(t, f)
	body := `[{"ListenPort":9000,"Nope":1,"BackEndService":"x","ClientId":"a"},` +
		`{"LISTENPORT":9001,"BackEndService":"y","BackEndService":"z","ClientId":"a"},` +
		`{"ListenPort":"9002","BackEndService":"w","ClientId":"a"},` +
		`{"ListenPort":70000,"BackEndService":"v","ClientId":"a"}]`
	code, answer := do(t, s, "PUT", "/tunnels", body)
	var e struct {
		Error    string
		Problems []string
	}
	if err := json.Unmarshal([]byte(answer), &e); err != nil || code != 400 {
		t.Fatalf("%d %s", code, answer)
	}
	want := []string{
		`offset 20: tunnels[0].Nope: unknown field "Nope"`,
		`offset 67: tunnels[1].LISTENPORT: unknown field "LISTENPORT"; did you mean "ListenPort"? (names are case-sensitive)`,
		`offset 106: tunnels[1].BackEndService: field "BackEndService" set twice: first at line 1, column 86`,
		`offset 157: tunnels[2].ListenPort: want an integer, got a string`,
		// From the check of what could be decoded; tunnels[2].ListenPort
		// is not reported again as port 0.
		`tunnels[3].ListenPort: 70000 is not a port number (1-65535)`,
	}
	if e.Error != "invalid tunnel list" || len(e.Problems) != len(want) {
		t.Fatalf("%s", answer)
	}
	for i, w := range want {
		if !strings.HasPrefix(e.Problems[i], w) {
			t.Errorf("problem %d = %q\nwant prefix %q", i, e.Problems[i], w)
		}
	}
	for _, tc := range []struct{ body, want string }{
		{`[{"ListenPort": 1,}]`, `offset 18: tunnels[0]: unexpected '}': want a key string (a comma before the end is not allowed)`},
		{`[{"ListenPort": 1}`, `offset 18: tunnels: unexpected end of input: want ',' or ']'; the array at line 1, column 1 is not closed`},
		{`{}`, `offset 0: tunnels: want an array, got an object`},
		{`[] []`, `offset 3: tunnels: unexpected '[' after the JSON value: only one value is allowed`},
	} {
		code, answer := do(t, s, "PUT", "/tunnels", tc.body)
		if code != 400 || !strings.Contains(answer, tc.want) {
			t.Errorf("PUT %s: %d %s\nwant %s", tc.body, code, answer, tc.want)
		}
	}
	// A case-folded name is decoded as meant for the check, so only the
	// name is reported; a missing key is found by the check.
	code, answer = do(t, s, "PUT", "/clients/x", `{"publickey":"k","Socks5Enabled":1}`)
	if code != 400 || !strings.Contains(answer, `"offset 1: publickey: unknown field \"publickey\"; did you mean \"PublicKey\"?`) ||
		!strings.Contains(answer, `"offset 33: Socks5Enabled: want true or false, got a number"`) || strings.Contains(answer, `is required`) {
		t.Errorf("PUT /clients/x: %d %s", code, answer)
	}
	code, answer = do(t, s, "PUT", "/clients/x", `{"Socks5Enabled":1}`)
	if code != 400 || !strings.Contains(answer, `"PublicKey: is required"`) {
		t.Errorf("PUT /clients/x: %d %s", code, answer)
	}
	if f.setCalls != 0 {
		t.Error("a refused body reached SetTunnels")
	}
}

// Issue 15's body: 340,000 empty tunnels in about 1 MB. The answer is one
// problem, the list is never decoded, and the log line carries the count.
func TestHugeTunnelList(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	h, err := NewHandler(&fakeBackend{validate: true}, slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	defer s.Close()
	body := "[" + strings.TrimSuffix(strings.Repeat("{},", 340_000), ",") + "]"
	code, answer := do(t, s, "PUT", "/tunnels", body)
	if code != 400 || len(answer) > 300 || !strings.Contains(answer, `"offset 0: tunnels: more than 10000 elements: at most 10000 are allowed"`) {
		t.Fatalf("%d %.300s", code, answer)
	}
	// A list at the bound, every tunnel bad: 20 problems and a count in
	// the answer, the count alone in the log.
	body = "[" + strings.TrimSuffix(strings.Repeat(`{"ListenPort":0},`, forward.MaxTunnels), ",") + "]"
	code, answer = do(t, s, "PUT", "/tunnels", body)
	if code != 400 || len(answer) > 4096 || !strings.Contains(answer, `"and 39979 more"`) {
		t.Fatalf("%d %.300s", code, answer)
	}
	mu.Lock()
	log := logs.String()
	mu.Unlock()
	if !strings.Contains(log, "problems=39999") || strings.Contains(log, "BackEndService") || len(log) > 1024 {
		t.Errorf("log:\n%s", log)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
