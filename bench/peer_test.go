package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePeer(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "frps")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "notexec")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := parsePeer("frp=" + exe + "," + exe)
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != "frp" || spec.serverBin != exe || spec.clientBin != exe {
		t.Fatalf("parsed %+v", spec)
	}
	for _, bad := range []string{
		"frp", "frp=" + exe, "frp=," + exe, "nosuch=" + exe + "," + exe,
		"frp=" + exe + "," + filepath.Join(dir, "missing"), "frp=" + exe + "," + plain, "frp=" + exe + "," + dir,
	} {
		if _, err := parsePeer(bad); err == nil {
			t.Errorf("parsePeer(%q) accepted", bad)
		}
	}
	var f peerFlags
	if err := f.Set("frp=" + exe + "," + exe); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("frp=" + exe + "," + exe); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("second -peer frp: %v", err)
	}
}

func TestPeerPathsOption(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o, err := parseOptions([]string{"-peer", "frp=" + exe + "," + exe})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.paths, ","); got != "threshold,direct,stock,frp" {
		t.Fatalf("paths %s", got)
	}
	if _, err := parseOptions([]string{"-paths", "frp"}); err == nil {
		t.Fatal("-paths frp without -peer frp accepted")
	}
}
