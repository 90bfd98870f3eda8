package sniff

import (
	"fmt"
	"strings"
)

// MatchGlob reports whether host matches a ListenHostnameGlob:
//   - "*" (or "", its default) matches any host, including "" (a connection
//     that named none: no SNI, no Host, or not TLS or HTTP);
//   - "*.example.com" matches a name with at least one label before
//     ".example.com", such as "a.example.com" or "a.b.example.com", but not
//     "example.com" itself;
//   - anything else must equal host.
//
// Comparison ignores ASCII case and one trailing dot on either side.
func MatchGlob(glob, host string) bool {
	return globRank(glob, host) > 0
}

// Pick returns the index of the glob in globs that matches host most
// specifically: an exact name beats "*.suffix" patterns, among which the
// longer suffix wins, and those beat "*". On a tie the first wins. If no
// glob matches, index is -1 and ok false. Only "*" matches host "".
func Pick(globs []string, host string) (index int, ok bool) {
	best, bestRank := -1, 0
	for i, g := range globs {
		if r := globRank(g, host); r > bestRank {
			best, bestRank = i, r
		}
	}
	return best, best >= 0
}

// globRank is 0 if glob does not match host, else how specific the match
// is: 1 for "*", 2+len(suffix) for "*.suffix", and above every pattern
// for an exact name.
func globRank(glob, host string) int {
	const exact = 1 << 20 // longer than any host name
	glob = strings.TrimSuffix(glob, ".")
	host = strings.TrimSuffix(host, ".")
	if glob == "*" || glob == "" {
		return 1
	}
	if host == "" {
		return 0
	}
	if suffix, ok := strings.CutPrefix(glob, "*."); ok && suffix != "" {
		n := len(host) - len(suffix)
		// host is label(s) + "." + suffix, with a non-empty label before the dot.
		if n < 2 || host[n-1] != '.' || host[n-2] == '.' || host[0] == '.' ||
			!strings.EqualFold(host[n:], suffix) {
			return 0
		}
		return 2 + len(suffix)
	}
	if strings.EqualFold(glob, host) {
		return exact + len(glob)
	}
	return 0
}

// CheckGlob accepts "*", "*.example.com" and exact lowercase host names.
func CheckGlob(g string) error {
	if g == "*" {
		return nil
	}
	name := strings.TrimPrefix(g, "*.")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%q is not a host name glob", g)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a host name glob (empty or long label)", g)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q is not a host name glob (only *, or * as the first label, and letters, digits, - and _)", g)
			}
		}
	}
	return nil
}
