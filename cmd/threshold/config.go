package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// maxConfigBytes bounds a config file.
const maxConfigBytes = 1 << 20

// decodeStrict reads one JSON object of at most limit bytes, refusing
// unknown fields and trailing data.
func decodeStrict(r io.Reader, v any, limit int) error {
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return err
	}
	if len(data) > limit {
		return fmt.Errorf("larger than %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("malformed JSON: more than one value")
	}
	return nil
}

// loadConfig decodes a config file strictly into v.
func loadConfig(path string, v any) error {
	if path == "" {
		return errors.New("--config is required")
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	if err := decodeStrict(f, v, maxConfigBytes); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}
