package client

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// The status endpoint answers only requests addressed to loopback, so a
// web page cannot read it through a name it points at 127.0.0.1.
func TestStatusLoopbackHostOnly(t *testing.T) {
	h := loopbackHostOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for host, want := range map[string]int{
		"127.0.0.1:9058": 200, "localhost:9058": 200, "[::1]:9058": 200, "127.0.0.1": 200, "[::1]": 200, "127.1.2.3:80": 200,
		"evil.example:9058": 403, "192.0.2.1:9058": 403, "": 403, "localhost.evil.example": 403,
	} {
		r := httptest.NewRequest("GET", "/status", nil)
		r.Host = host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Host %q: %d, want %d", host, w.Code, want)
		}
	}
}
