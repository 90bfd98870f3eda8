package main

import (
	"net"
	"testing"
)

func TestIdleSource(t *testing.T) {
	for _, c := range []struct {
		addr string
		i    int64
		want string
	}{
		{"127.0.0.1:8080", 0, "127.0.0.2"},
		{"127.0.0.1:8080", idlePerSource - 1, "127.0.0.2"},
		{"127.0.0.1:8080", idlePerSource, "127.0.0.3"},
		{"127.0.0.1:8080", 300 * idlePerSource, "127.0.1.46"},
		{"[::1]:8080", 0, ""},
		{"192.0.2.1:8080", 0, ""},
		{"localhost:8080", 0, ""},
	} {
		got := idleSource(c.addr, c.i)
		if (got == nil) != (c.want == "") || got != nil && !got.IP.Equal(net.ParseIP(c.want)) {
			t.Errorf("idleSource(%q, %d) = %v, want %q", c.addr, c.i, got, c.want)
		}
	}
}
