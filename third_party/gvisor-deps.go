//go:build ignore

// gvisor-deps computes which packages of an upstream gvisor.dev/gvisor
// module tree our trimmed copy must hold, and writes the copy's trimmed
// go.mod. update-gvisor.sh runs it; it is not part of any build.
//
//	go run third_party/gvisor-deps.go -upstream DIR [-ours DIR] -gomod OUT < seeds
//
// Seeds are import paths, one a line: the gvisor.dev/gvisor packages that
// the rest of the build (our module and its other dependencies) imports.
// The result is their import closure inside gvisor.dev/gvisor, printed as
// package directories relative to the module root, one a line.
//
// The closure is taken the way `go mod tidy` takes it: every non-test .go
// file of a package counts, whatever its GOOS, GOARCH or build tags, except
// files constrained by the "ignore" tag. That is why the copy builds for
// every platform and `go mod tidy` finds every package it looks for (a
// `go list -deps` for one platform misses pkg/cpuid and pkg/goid, which only
// other platforms' files import).
//
// Files under -ours (our own files, at the same relative paths, tests
// included) are scanned too, so a package that only our code imports is
// copied as well.
//
// The trimmed go.mod keeps upstream's module and go lines, and of upstream's
// requirements only the modules that provide a package the copied files
// import, at upstream's versions: the full list would add every module of
// gVisor's (runsc, containerd, Kubernetes, ...) to our module graph.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"go/build/constraint"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const modulePath = "gvisor.dev/gvisor"

func main() {
	upstream := flag.String("upstream", "", "root of the upstream module tree (required)")
	ours := flag.String("ours", "", "root of a tree of our own files at the same relative paths")
	gomod := flag.String("gomod", "", "write the trimmed go.mod here")
	flag.Parse()
	if *upstream == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: go run gvisor-deps.go -upstream DIR [-ours DIR] [-gomod OUT] < seeds")
		os.Exit(2)
	}
	if err := run(*upstream, *ours, *gomod); err != nil {
		fmt.Fprintln(os.Stderr, "gvisor-deps:", err)
		os.Exit(1)
	}
}

func run(upstream, ours, gomod string) error {
	var queue []string
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" {
			continue
		}
		rel, ok := inModule(p)
		if !ok {
			return fmt.Errorf("seed %q is not a package of %s", p, modulePath)
		}
		queue = append(queue, rel)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(queue) == 0 {
		return errors.New("no seed packages on standard input")
	}

	seen := map[string]bool{}
	external := map[string]bool{} // non-std imports from outside the module
	for len(queue) > 0 {
		rel := queue[0]
		queue = queue[1:]
		if seen[rel] {
			continue
		}
		seen[rel] = true
		imports, err := packageImports(upstream, ours, rel)
		if err != nil {
			return err
		}
		for _, imp := range imports {
			if r, ok := inModule(imp); ok {
				queue = append(queue, r)
			} else if !isStd(imp) {
				external[imp] = true
			}
		}
	}

	pkgs := make([]string, 0, len(seen))
	for p := range seen {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		fmt.Println(p)
	}
	if gomod == "" {
		return nil
	}
	return writeGoMod(filepath.Join(upstream, "go.mod"), gomod, external)
}

// inModule reports whether importPath is in gvisor.dev/gvisor, and its
// directory relative to the module root.
func inModule(importPath string) (string, bool) {
	rel, ok := strings.CutPrefix(importPath, modulePath+"/")
	return rel, ok && rel != ""
}

// isStd reports whether importPath belongs to the standard library: its
// first element has no dot (the rule cmd/go applies).
func isStd(importPath string) bool {
	first, _, _ := strings.Cut(importPath, "/")
	return !strings.Contains(first, ".")
}

// packageImports returns the imports of every non-test .go file of package
// rel in the upstream tree, and of every .go file of it in our own tree.
func packageImports(upstream, ours, rel string) ([]string, error) {
	var imports []string
	found := false
	for i, root := range []string{upstream, ours} {
		if root == "" {
			continue
		}
		dir := filepath.Join(root, filepath.FromSlash(rel))
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue // a package of upstream's or of ours only
		}
		if err != nil {
			return nil, fmt.Errorf("package %s/%s: %w", modulePath, rel, err)
		}
		for _, e := range entries {
			name := e.Name()
			// Upstream's tests are not copied; ours are, so their imports count.
			if !e.Type().IsRegular() || !strings.HasSuffix(name, ".go") || (i == 0 && strings.HasSuffix(name, "_test.go")) {
				continue
			}
			imps, ok, err := fileImports(filepath.Join(dir, name))
			if err != nil {
				return nil, err
			}
			if ok {
				found = true
				imports = append(imports, imps...)
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("package %s/%s: no Go files upstream or in our files", modulePath, rel)
	}
	return imports, nil
}

// fileImports parses one file's imports; ok is false when the file could
// never be built (its constraint needs the "ignore" tag).
func fileImports(path string) (imports []string, ok bool, err error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly|parser.ParseComments)
	if err != nil {
		return nil, false, err
	}
	var goBuild constraint.Expr
	var plusBuild []constraint.Expr
	for _, g := range f.Comments {
		if g.Pos() >= f.Package {
			break
		}
		for _, c := range g.List {
			switch {
			case constraint.IsGoBuild(c.Text):
				if goBuild, err = constraint.Parse(c.Text); err != nil {
					return nil, false, fmt.Errorf("%s: %w", path, err)
				}
			case constraint.IsPlusBuild(c.Text):
				if x, err := constraint.Parse(c.Text); err == nil {
					plusBuild = append(plusBuild, x)
				}
			}
		}
	}
	// As cmd/go: a //go:build line controls; otherwise every +build line must hold.
	if goBuild != nil {
		ok = anyBuild(goBuild, true)
	} else {
		ok = true
		for _, x := range plusBuild {
			ok = ok && anyBuild(x, true)
		}
	}
	if !ok {
		return nil, false, nil
	}
	for _, s := range f.Imports {
		p, err := strconv.Unquote(s.Path.Value)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", path, err)
		}
		if p != "C" {
			imports = append(imports, p)
		}
	}
	return imports, true, nil
}

// anyBuild evaluates a constraint with every tag but "ignore" both true and
// false at once, as cmd/go's imports.eval does for `go mod tidy` (tags "*").
func anyBuild(x constraint.Expr, prefer bool) bool {
	switch x := x.(type) {
	case *constraint.TagExpr:
		return x.Tag != "ignore" && prefer
	case *constraint.NotExpr:
		return !anyBuild(x.X, !prefer)
	case *constraint.AndExpr:
		return anyBuild(x.X, prefer) && anyBuild(x.Y, prefer)
	case *constraint.OrExpr:
		return anyBuild(x.X, prefer) || anyBuild(x.Y, prefer)
	}
	panic(fmt.Sprintf("unexpected constraint expression %T", x))
}

// writeGoMod writes upstream's go.mod trimmed to the modules that provide
// the external imports.
func writeGoMod(upstreamGoMod, out string, external map[string]bool) error {
	data, err := os.ReadFile(upstreamGoMod)
	if err != nil {
		return err
	}
	var goLine string
	required := map[string]string{} // module path -> version
	inBlock := false
	for _, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "//")
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case inBlock && f[0] == ")":
			inBlock = false
		case inBlock && len(f) == 2:
			required[f[0]] = f[1]
		case f[0] == "require" && len(f) == 2 && f[1] == "(":
			inBlock = true
		case f[0] == "require" && len(f) == 3:
			required[f[1]] = f[2]
		case f[0] == "go" && len(f) == 2:
			goLine = line
		case f[0] == "module" && (len(f) != 2 || f[1] != modulePath):
			return fmt.Errorf("%s: module is not %s", upstreamGoMod, modulePath)
		}
	}
	if goLine == "" {
		return fmt.Errorf("%s: no go line", upstreamGoMod)
	}

	keep := map[string]bool{}
	for imp := range external {
		best := ""
		for mod := range required {
			if (imp == mod || strings.HasPrefix(imp, mod+"/")) && len(mod) > len(best) {
				best = mod
			}
		}
		if best == "" {
			return fmt.Errorf("no requirement in %s provides %s", upstreamGoMod, imp)
		}
		keep[best] = true
	}
	mods := make([]string, 0, len(keep))
	for m := range keep {
		mods = append(mods, m)
	}
	sort.Strings(mods)

	var b strings.Builder
	b.WriteString("// Trimmed by third_party/update-gvisor.sh: upstream's go.mod, keeping only\n")
	b.WriteString("// the requirements of the packages in this copy.\n\n")
	fmt.Fprintf(&b, "module %s\n\n%s\n", modulePath, strings.TrimSpace(goLine))
	if len(mods) > 0 {
		b.WriteString("\nrequire (\n")
		for _, m := range mods {
			fmt.Fprintf(&b, "\t%s %s\n", m, required[m])
		}
		b.WriteString(")\n")
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}
