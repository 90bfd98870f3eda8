package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/thresholdtunnel/threshold/control"
)

// maxConfigBytes bounds a config file.
const maxConfigBytes = 1 << 20

// loadConfig decodes a config file strictly into v. Every problem of the
// JSON is listed with its line, column and field path; when the JSON
// left something meaningful (unknown or case-folded names, duplicate keys,
// values of the wrong type), check's problems are listed too, in the same
// *control.Problems, so that one run tells the user everything to fix.
func loadConfig(path string, v any, check func() error) error {
	if path == "" {
		return errors.New("--config is required")
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return fmt.Errorf("reading config %s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return fmt.Errorf("config %s: larger than %d bytes", path, maxConfigBytes)
	}
	probs := control.NewProblems(control.ErrInvalid, "config "+path)
	if (control.JSON{}).Decode(data, v, probs) && probs.Len() > 0 && check != nil {
		probs.AddErr(check())
	}
	return probs.Err()
}
