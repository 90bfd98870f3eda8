package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/thresholdtunnel/threshold/atomicfile"
	"github.com/thresholdtunnel/threshold/forward"
)

// Saved is what the server keeps across restarts: everything the API can
// change, so that a restarted server comes back as it was.
type Saved struct {
	Version int
	Clients []Registration
	Tunnels []forward.Tunnel
}

// Store keeps the Saved state. Load reports found false, and no error, when
// nothing was saved yet.
type Store interface {
	Load() (s Saved, found bool, err error)
	Save(Saved) error
}

const (
	stateVersion  = 1
	stateFileName = "state.json"
	// maxStateBytes is far above any real state (about 250 bytes a tunnel).
	maxStateBytes = 64 << 20
)

// FileStore keeps the state in Dir/state.json, replaced atomically on each
// save.
type FileStore struct {
	Dir string
}

func (f FileStore) path() string { return filepath.Join(f.Dir, stateFileName) }

// Load reads the state file; a missing file is no state. A file that cannot
// be read or parsed is an error and is left as it is. The file is read
// through a limit, so a huge one is refused without being read whole.
func (f FileStore) Load() (Saved, bool, error) {
	path := f.path()
	file, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Saved{Version: stateVersion}, false, nil
	}
	if err != nil {
		return Saved{}, false, fmt.Errorf("reading state file %s: %w", path, err)
	}
	defer file.Close()
	// A regular file's size says it all, without reading a byte; the
	// limit on the read covers the rest (and a file growing meanwhile).
	if st, err := file.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > maxStateBytes {
		return Saved{}, false, fmt.Errorf("state file %s is larger than %d bytes (%d); it was left untouched", path, maxStateBytes, st.Size())
	}
	data, err := io.ReadAll(io.LimitReader(file, maxStateBytes+1))
	if err != nil {
		return Saved{}, false, fmt.Errorf("reading state file %s: %w", path, err)
	}
	if len(data) > maxStateBytes {
		return Saved{}, false, fmt.Errorf("state file %s is larger than %d bytes; it was left untouched", path, maxStateBytes)
	}
	var s Saved
	probs := NewProblems(ErrInvalid, "state file")
	if (JSON{}).Decode(data, &s, probs); probs.Len() > 0 {
		return Saved{}, false, fmt.Errorf("state file %s is corrupt (%s); it was left untouched: restore it from a backup or move it away to start empty", path, strings.Join(probs.Lines(), "; "))
	}
	if s.Version != stateVersion {
		return Saved{}, false, fmt.Errorf("state file %s has version %d, this threshold reads version %d; it was left untouched", path, s.Version, stateVersion)
	}
	return s, true, nil
}

// Save writes the state atomically (temporary file, fsync, rename).
func (f FileStore) Save(s Saved) error {
	s.Version = stateVersion
	s.Tunnels = append([]forward.Tunnel(nil), s.Tunnels...)
	for i := range s.Tunnels {
		s.Tunnels[i] = s.Tunnels[i].WithoutOutput()
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(f.path(), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// RemoveStale removes temporary state files a crash left behind; it
// returns their names.
func (f FileStore) RemoveStale() ([]string, error) { return atomicfile.RemoveStale(f.path()) }
