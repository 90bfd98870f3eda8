// Package keyfile keeps a WireGuard private key in a file, generating it
// on first use.
package keyfile

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"github.com/thresholdtunnel/threshold/atomicfile"
	"github.com/thresholdtunnel/threshold/wg"
)

// Load reads a base64 private key, or generates one into path
// (mode 0600, written atomically) when the file does not exist. An
// unreadable or malformed file is an error: it is never overwritten.
func Load(path string, log *slog.Logger) (wg.Key, error) {
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
	if err := atomicfile.Write(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return wg.Key{}, fmt.Errorf("saving new private key: %w", err)
	}
	log.Info("generated a new private key", "file", path)
	return k, nil
}
