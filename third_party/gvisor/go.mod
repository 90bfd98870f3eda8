// Trimmed by third_party/update-gvisor.sh: upstream's go.mod, keeping only
// the requirements of the packages in this copy.

module gvisor.dev/gvisor

go 1.26.3

require (
	github.com/google/btree v1.1.2
	golang.org/x/exp v0.0.0-20250711185948-6ae5c78190dc
	golang.org/x/sys v0.43.0
	golang.org/x/time v0.15.0
)
