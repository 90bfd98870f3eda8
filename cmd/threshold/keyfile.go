package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/thresholdtunnel/threshold/wg"
)

// loadOrCreateKey reads a base64 private key, or generates one into path
// (mode 0600, written atomically) when the file does not exist. An
// unreadable or malformed file is an error: it is never overwritten.
func loadOrCreateKey(path string, log *slog.Logger) (wg.Key, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := wg.ParseKey(string(data))
		if err != nil {
			return wg.Key{}, fmt.Errorf("private key file %s: %w", path, err)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			log.Warn("private key file is readable by others; chmod 600 it", "file", path, "mode", st.Mode().Perm().String())
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wg.Key{}, fmt.Errorf("reading private key file: %w", err)
	}
	k, err := wg.GenerateKey()
	if err != nil {
		return wg.Key{}, err
	}
	if err := writeFileAtomic(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return wg.Key{}, fmt.Errorf("saving new private key: %w", err)
	}
	log.Info("generated a new private key", "file", path)
	return k, nil
}

// writeFileAtomic writes data to a temporary file beside path, syncs it
// and renames it into place, so readers see the old or the new file whole.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
