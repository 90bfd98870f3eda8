package control

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/thresholdtunnel/threshold/strictjson"
)

// JSON is how config files, API bodies and the state file are decoded:
// strictly (package strictjson: duplicate keys, names that differ from a
// field's only by case and unknown fields are refused), with every problem
// placed and named by its field path, in a Problems, so that decoding
// problems and the problems a check of the decoded value finds make one
// bounded list.
type JSON struct {
	// Root prefixes every field path, such as "tunnels" for the body of
	// PUT /tunnels ("tunnels[0].ListenPort"); "" for none.
	Root string
	// Offsets places problems by byte offset, for API bodies; otherwise
	// by line and column, for files.
	Offsets bool
	// MaxElements bounds every array (strictjson.Options.MaxElements).
	MaxElements int
}

// Decode decodes data into v, a pointer, adding every problem to probs.
// It reports whether v is worth checking: true when data decoded cleanly,
// and also when the only problems were unknown or case-folded names,
// duplicate keys or values of the wrong type, which leave the rest of the
// input meaningful. v is then decoded leniently, as encoding/json does,
// so that the caller's check can add its own problems to the same list
// (fields whose value was of the wrong type are not reported again). The
// input is refused all the same whenever probs is not empty.
func (j JSON) Decode(data []byte, v any, probs *Problems) (checkable bool) {
	err := strictjson.Options{MaxProblems: MaxProblems, MaxElements: j.MaxElements}.Unmarshal(data, v)
	if err == nil {
		return true
	}
	var se *strictjson.Error
	if !errors.As(err, &se) {
		probs.Add(err.Error())
		return false
	}
	checkable = se.More == 0 // the kinds of unlisted problems are unknown
	for _, p := range se.Problems {
		path := joinPath(j.Root, p.Path)
		probs.add(path, j.place(p)+fieldPrefix(path)+p.Message)
		switch p.Kind {
		case strictjson.KindUnknown, strictjson.KindCase, strictjson.KindDuplicate:
		case strictjson.KindType:
			if p.Path == "" {
				checkable = false // the whole value is of the wrong type
			}
			probs.fault(path)
		default: // syntax, limit, trailing, empty, value: nothing to check
			checkable = false
		}
	}
	probs.more += se.More
	if checkable {
		// Unknown fields are skipped, case-folded names and the last of
		// duplicate keys taken, values of the wrong type left at zero
		// (encoding/json reports those and goes on): what is left is what
		// the user meant, as far as it can be known.
		_ = json.Unmarshal(data, v)
	}
	return checkable
}

func (j JSON) place(p strictjson.Problem) string {
	if j.Offsets {
		return "offset " + strconv.Itoa(p.Offset) + ": "
	}
	return "line " + strconv.Itoa(p.Line) + ", column " + strconv.Itoa(p.Column) + ": "
}

func fieldPrefix(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

func joinPath(root, path string) string {
	switch {
	case root == "":
		return path
	case path == "" || strings.HasPrefix(path, "["):
		return root + path
	}
	return root + "." + path
}
