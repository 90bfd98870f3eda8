//go:build race

package wg

// raceEnabled: under the race detector sync.Pool drops a quarter of what
// is put into it on purpose, so allocation counts mean nothing.
const raceEnabled = true
