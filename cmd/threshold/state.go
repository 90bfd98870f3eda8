package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/thresholdtunnel/threshold/forward"
)

// stateFile is what the server keeps in StateDir: everything the API can
// change, so that a restarted server comes back as it was.
type stateFile struct {
	Version int
	Clients []ClientRegistration
	Tunnels []forward.Tunnel
}

const (
	stateVersion  = 1
	stateFileName = "state.json"
	// maxStateBytes is far above any real state (about 250 bytes a tunnel).
	maxStateBytes = 256 << 20
)

// loadState reads the state file; a missing file is an empty state. A file
// that cannot be read or parsed is an error and is left as it is.
func loadState(dir string) (stateFile, bool, error) {
	path := filepath.Join(dir, stateFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return stateFile{Version: stateVersion}, false, nil
	}
	if err != nil {
		return stateFile{}, false, fmt.Errorf("reading state file %s: %w", path, err)
	}
	var st stateFile
	if err := decodeStrict(bytes.NewReader(data), &st, maxStateBytes); err != nil {
		return stateFile{}, false, fmt.Errorf("state file %s is corrupt (%w); it was left untouched: restore it from a backup or move it away to start empty", path, err)
	}
	if st.Version != stateVersion {
		return stateFile{}, false, fmt.Errorf("state file %s has version %d, this threshold reads version %d; it was left untouched", path, st.Version, stateVersion)
	}
	return st, true, nil
}

// saveState writes the state atomically (temporary file, fsync, rename).
func saveState(dir string, st stateFile) error {
	st.Version = stateVersion
	for i := range st.Tunnels {
		st.Tunnels[i].ActiveClientId = ""
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, stateFileName), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}
