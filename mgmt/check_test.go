package mgmt

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
)

func TestCheckEndpoints(t *testing.T) {
	f := &fakeBackend{checkRes: []forward.CheckResult{{OK: true}, {Reason: forward.CheckNoClient}}}
	s := serve(t, f)
	// No body, an empty one and {} check every tunnel; the reply is OK
	// only when every tunnel passed.
	for _, body := range []string{"", " \n", "{}"} {
		code, got := do(t, s, "POST", "/tunnels/check", body)
		var reply CheckReply
		if err := json.Unmarshal([]byte(got), &reply); code != 200 || err != nil || reply.OK || len(reply.Results) != 2 {
			t.Errorf("POST /tunnels/check %q: %d %s %v", body, code, got, err)
		}
		if f.checkSel != nil {
			t.Errorf("POST /tunnels/check %q selected %+v", body, f.checkSel)
		}
	}
	code, got := do(t, s, "POST", "/tunnels/check", `{"Tunnels":[{"ListenPort":443,"ListenHostnameGlob":"a.example.com"}]}`)
	if code != 200 || len(f.checkSel) != 1 || f.checkSel[0].ListenPort != 443 || f.checkSel[0].ListenHostnameGlob != "a.example.com" {
		t.Errorf("POST /tunnels/check with a selector: %d %s, selected %+v", code, got, f.checkSel)
	}
	// No more selectors than tunnels one call checks: refused unread.
	many := `{"Tunnels":[` + strings.TrimSuffix(strings.Repeat(`{"ListenPort":1},`, forward.MaxCheckedTunnels+1), ",") + `]}`
	if code, got := do(t, serve(t, f), "POST", "/tunnels/check", many); code != 400 || !strings.Contains(got, "at most 100") {
		t.Errorf("POST /tunnels/check with %d selectors: %d %.300s", forward.MaxCheckedTunnels+1, code, got)
	}
	if code, got := do(t, s, "POST", "/tunnels/check", `{"Tunnels":[{"Port":443}]}`); code != 400 {
		t.Errorf("unknown selector field: %d %s", code, got)
	}
	s = serve(t, f) // a fresh rate limit
	if code, got := do(t, s, "POST", "/tunnels/check/arm", `{"ListenPort":9000,"Hostname":"a.example.com"}`); code != 200 || !strings.Contains(got, `"Token":"t"`) {
		t.Errorf("POST /tunnels/check/arm: %d %s", code, got)
	}
	if code, _ := do(t, s, "GET", "/tunnels/check", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /tunnels/check: %d", code)
	}
}

func TestCheckErrorsAndRateLimit(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{problems(control.ErrNotFound, "no tunnel listens on port 1"), 404},
		{problems(control.ErrBusy, "16 checks are armed already"), 429},
		{problems(control.ErrInvalid, "ListenPort: 0 is not a port number"), 400},
	} {
		s := serve(t, &fakeBackend{checkErr: tc.err})
		if code, got := do(t, s, "POST", "/tunnels/check/arm", `{"ListenPort":1}`); code != tc.code {
			t.Errorf("%v: %d %s, want %d", tc.err, code, got, tc.code)
		}
	}

	// Both endpoints share one bucket: a burst, then 429 with Retry-After.
	s := serve(t, &fakeBackend{})
	for i := range checkBurst {
		path, body := "/tunnels/check", ""
		if i%2 == 1 {
			path, body = "/tunnels/check/arm", `{"ListenPort":1}`
		}
		if code, got := do(t, s, "POST", path, body); code != 200 {
			t.Fatalf("call %d within the burst: %d %s", i, code, got)
		}
	}
	req, _ := http.NewRequest("POST", s.URL+"/tunnels/check", nil)
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("over the burst: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestBucket(t *testing.T) {
	var b bucket
	now := time.Unix(1000, 0)
	for i := range checkBurst {
		if ok, _ := b.take(now); !ok {
			t.Fatalf("take %d of the burst refused", i)
		}
	}
	if ok, wait := b.take(now); ok || wait != checkEvery {
		t.Fatalf("over the burst: %v, wait %s", ok, wait)
	}
	if ok, _ := b.take(now.Add(checkEvery / 2)); ok {
		t.Fatal("half a refill let one through")
	}
	if ok, _ := b.take(now.Add(2 * checkEvery)); !ok {
		t.Fatal("a refill did not let one through")
	}
	if ok, _ := b.take(now.Add(time.Hour)); !ok {
		t.Fatal("after an hour: refused")
	}
}
