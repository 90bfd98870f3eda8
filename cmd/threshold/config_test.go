package main

import (
	"strings"
	"testing"

	"github.com/thresholdtunnel/threshold/server"
)

func TestDecodeStrict(t *testing.T) {
	var c server.Config
	if err := decodeStrict(strings.NewReader(`{"TunnelControlPort":1,"Extra":2}`), &c, maxConfigBytes); err == nil || !strings.Contains(err.Error(), "Extra") {
		t.Errorf("unknown field: %v", err)
	}
	if err := decodeStrict(strings.NewReader(`{} {}`), &c, maxConfigBytes); err == nil {
		t.Error("trailing value accepted")
	}
	if err := decodeStrict(strings.NewReader(strings.Repeat(" ", maxConfigBytes+1)), &c, maxConfigBytes); err == nil {
		t.Error("oversized config accepted")
	}
}
