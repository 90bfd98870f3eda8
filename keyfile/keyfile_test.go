package keyfile

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/thresholdtunnel/threshold/wg"
)

func TestLoad(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "key")
	k1, err := Load(path, log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("new key file: %v %v", st, err)
	}
	k2, err := Load(path, log)
	if err != nil || k1 != k2 {
		t.Fatalf("reloading: %v, same=%v", err, k1 == k2)
	}
	corrupt := filepath.Join(dir, "corrupt")
	os.WriteFile(corrupt, []byte("not a key"), 0o600)
	if _, err := Load(corrupt, log); !errors.Is(err, wg.ErrInvalidKey) {
		t.Errorf("corrupt key: %v", err)
	}
	if data, _ := os.ReadFile(corrupt); string(data) != "not a key" {
		t.Error("corrupt key file was overwritten")
	}
	if _, err := Load(dir, log); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a directory as key file: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "sub")); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
