package sniff

import (
	"strings"
	"testing"
)

func TestMatchGlob(t *testing.T) {
	tests := []struct {
		glob, host string
		want       bool
	}{
		{"*", "example.com", true},
		{"*", "", true},
		{"*", "::1", true},
		{"", "anything", true},
		{"", "", true},

		{"example.com", "example.com", true},
		{"example.com", "EXAMPLE.com", true},
		{"Example.COM", "example.com", true},
		{"example.com", "example.com.", true},
		{"example.com", "www.example.com", false},
		{"example.com", "example.co", false},
		{"example.com", "xexample.com", false},
		{"example.com", "", false},

		{"*.example.com", "a.example.com", true},
		{"*.example.com", "A.Example.Com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "a.example.com.", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "a..example.com", false},
		{"*.example.com", "aexample.com", false},
		{"*.example.com", "a.example.org", false},
		{"*.example.com", "a.example.com.evil", false},
		{"*.example.com", "", false},
		{"*.com", "example.com", true},
		{"*.com", "com", false},
	}
	for _, tt := range tests {
		if got := MatchGlob(tt.glob, tt.host); got != tt.want {
			t.Errorf("MatchGlob(%q, %q) = %v, want %v", tt.glob, tt.host, got, tt.want)
		}
	}
}

func TestPickRoute(t *testing.T) {
	globs := []string{"*", "*.example.com", "www.example.com", "*.b.example.com", "other.org"}
	tests := []struct {
		host   string
		want   int
		wantOK bool
	}{
		{"www.example.com", 2, true},
		{"WWW.EXAMPLE.COM.", 2, true},
		{"a.example.com", 1, true},
		{"x.b.example.com", 3, true},
		{"b.example.com", 1, true},
		{"example.com", 0, true},
		{"other.org", 4, true},
		{"", 0, true},
		{"unknown.net", 0, true},
	}
	for _, tt := range tests {
		got, ok := Pick(globs, tt.host)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("Pick(%q) = %d, %v; want %d, %v", tt.host, got, ok, tt.want, tt.wantOK)
		}
	}

	// Order must not matter, except between equal globs.
	rev := []string{"other.org", "*.b.example.com", "www.example.com", "*.example.com", "*"}
	for _, tt := range tests {
		got, ok := Pick(rev, tt.host)
		if !ok || rev[got] != globs[tt.want] {
			t.Errorf("Pick(reversed, %q) = %d, %v; want glob %q", tt.host, got, ok, globs[tt.want])
		}
	}
	if got, ok := Pick([]string{"a.com", "*", "A.com"}, "a.com"); !ok || got != 0 {
		t.Errorf("tie: got %d, %v; want the first, 0", got, ok)
	}
}

func TestPickRouteNoMatch(t *testing.T) {
	globs := []string{"*.example.com", "www.other.org"}
	for _, host := range []string{"", "example.com", "other.org", "x.www.other.org"} {
		if i, ok := Pick(globs, host); ok {
			t.Errorf("Pick(%q) = %d, true; want no match", host, i)
		}
	}
	if i, ok := Pick(nil, "a.com"); ok || i != -1 {
		t.Errorf("Pick(nil) = %d, %v; want -1, false", i, ok)
	}
}

func TestCheckGlob(t *testing.T) {
	for _, ok := range []string{"*", "*.example.com", "example.com", "a", "x-1_y.example", strings.Repeat("a", 63) + ".com"} {
		if err := CheckGlob(ok); err != nil {
			t.Errorf("CheckGlob(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "*.", "**", "*.*", "a.*", "*a.com", ".com", "a..b", "A.com", "a.com:80", "*.com.", strings.Repeat("a", 64)} {
		if err := CheckGlob(bad); err == nil {
			t.Errorf("CheckGlob(%q) accepted it", bad)
		}
	}
}
