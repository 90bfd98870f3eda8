// Package imports checks the import rules of the repository's packages, so
// that the layers stay shallow and acyclic as the code grows.
package imports

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/thresholdtunnel/threshold"

// rules: for each package (a trailing "/..." covers its subpackages), the
// packages of this module it may depend on, directly or not. A package may
// always depend on itself and on its own subpackages' family as listed.
var rules = []struct {
	pkg   string
	allow []string // module-relative prefixes; "" allows nothing of ours
	why   string
}{
	{"wg", nil, "wg is a leaf: keys, addressing and the wireguard-go device"},
	{"netstack", nil, "netstack is a leaf: the gVisor stack as a tun.Device"},
	{"forward/...", []string{"forward"}, "forward and its subpackages import only each other"},
	{"atomicfile", nil, "atomicfile is a leaf"},
	{"strictjson", nil, "strictjson is a leaf"},
	{"control", []string{"forward", "atomicfile", "strictjson"}, "control must stay free of wg and netstack, because mgmt imports it"},
	{"mgmt", []string{"control", "forward", "atomicfile", "strictjson"}, "mgmt never imports wg or netstack"},
}

func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps=false", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", module+"/...").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	checked := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, deps := strings.TrimPrefix(fields[0], module+"/"), fields[1:]
		for _, r := range rules {
			if !covers(r.pkg, pkg) {
				continue
			}
			checked[r.pkg] = true
			for _, d := range deps {
				rel, ours := strings.CutPrefix(d, module+"/")
				if !ours || covers(strings.TrimSuffix(r.pkg, "/...")+"/...", rel) {
					continue
				}
				allowed := false
				for _, a := range r.allow {
					allowed = allowed || covers(a+"/...", rel)
				}
				if !allowed {
					t.Errorf("%s depends on %s: %s", pkg, rel, r.why)
				}
			}
		}
	}
	for _, r := range rules {
		if !checked[r.pkg] && r.pkg != "strictjson" {
			t.Errorf("no package matches rule %q: is the rule stale?", r.pkg)
		}
	}
}

// covers reports whether pattern ("a" or "a/...") covers package p.
func covers(pattern, p string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == base || strings.HasPrefix(p, base+"/")
	}
	return p == pattern
}
