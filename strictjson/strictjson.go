// Package strictjson decodes one JSON value into a Go value as
// encoding/json does, but refuses what encoding/json lets through silently
// and reports every problem at once, each with its place in the input.
//
// encoding/json, even with DisallowUnknownFields, matches names without
// regard to case ("LISTENPORT" sets ListenPort), keeps the last of
// duplicate keys, and stops at the first unknown field or syntax error with
// no line or column. Config files and API bodies need better: a user should
// fix everything in one go. So Unmarshal first walks the input against the
// destination's type and collects every problem:
//
//   - syntax errors (these stop the walk; the problems before are kept),
//     an empty input, and data after the value;
//   - unknown fields, fields that match only when case is ignored (with the
//     name that was meant), duplicate keys in any object, and elements past
//     the end of a Go array;
//   - values of the wrong type or out of range, and errors from the
//     destination's UnmarshalJSON and UnmarshalText methods.
//
// Only when there is none does encoding/json decode the input, into a new
// value that then replaces *v, so decoding means exactly what it means to
// encoding/json (tags, omitempty, "-", ",string", embedded structs,
// json.Unmarshaler, encoding.TextUnmarshaler, json.Number, ...), and a
// refused input changes nothing. A type's UnmarshalJSON or UnmarshalText
// thus runs twice, first on a throwaway value during the walk, so it must
// have no side effects.
//
// The problem list is bounded (DefaultMaxProblems, or Options.MaxProblems);
// problems past the bound are only counted, with no memory per problem, so
// a hostile input gets a small answer quickly.
//
// Size limits are the caller's: read the input through a limit first.
// Nothing is kept between calls; Unmarshal is safe for concurrent use.
package strictjson

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
)

// DefaultMaxProblems is how many problems an Error lists when
// Options.MaxProblems is zero.
const DefaultMaxProblems = 20

// Options tune a decode. The zero value is the default.
type Options struct {
	// MaxProblems bounds Error.Problems; further problems are only counted
	// in Error.More. Zero or less means DefaultMaxProblems.
	MaxProblems int
	// MaxElements, if positive, bounds every JSON array: one with more
	// elements is a KindLimit problem, and the elements past the bound
	// are only checked for syntax. A size limit on the input bounds the
	// bytes; this bounds what decoding them would allocate (a megabyte of
	// "{}," is 340,000 structs).
	MaxElements int
}

// Unmarshal decodes data, which must hold exactly one JSON value, into v,
// a non-nil pointer. On any problem it returns an *Error and leaves *v
// unchanged; on success *v is replaced, not merged into.
func Unmarshal(data []byte, v any) error { return Options{}.Unmarshal(data, v) }

// Decode reads r to its end and decodes what it read as Unmarshal does.
// Bound r first (io.LimitReader, http.MaxBytesReader): an error from r is
// returned wrapped, so errors.As finds an *http.MaxBytesError.
func Decode(r io.Reader, v any) error { return Options{}.Decode(r, v) }

// Decode is the package's Decode with these options.
func (o Options) Decode(r io.Reader, v any) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("reading JSON: %w", err)
	}
	return o.Unmarshal(data, v)
}

// Unmarshal is the package's Unmarshal with these options.
func (o Options) Unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return &json.InvalidUnmarshalError{Type: reflect.TypeOf(v)}
	}
	if e := check(data, rv.Type(), o.max(), o.MaxElements); e != nil {
		return e
	}
	fresh := reflect.New(rv.Type().Elem())
	if err := json.Unmarshal(data, fresh.Interface()); err != nil {
		// The walk found nothing wrong, so this comes from a method that
		// behaved differently the second time, or from a case the walk
		// does not model. Report it rather than decode half.
		return &Error{Problems: []Problem{afterCheck(data, err)}}
	}
	rv.Elem().Set(fresh.Elem())
	return nil
}

func (o Options) max() int {
	if o.MaxProblems <= 0 {
		return DefaultMaxProblems
	}
	return o.MaxProblems
}

// Error is what Unmarshal returns for a refused input: the problems in the
// order of the input, at most Options.MaxProblems of them, and how many
// more were found. A syntax error, which ends the walk, is always listed,
// last; so is an array over Options.MaxElements, in its place.
type Error struct {
	Problems []Problem
	More     int // problems found beyond those listed
}

// Problem is one thing wrong with the input.
type Problem struct {
	Kind Kind
	// Path leads to the value or key at fault: `Clients[0].PublicKey`,
	// `[3].ListenPort`, `ServiceToLocalAddrMap["web"]`. Object members
	// are `.Name` when the name is a plain identifier, else `["name"]`;
	// map keys are always `["key"]`; array elements are `[i]`. It is ""
	// for the top-level value.
	Path string
	// Where the offending value, key or byte starts (for an early end of
	// input, the end): Line and Column are 1-based (Column counts bytes,
	// as Go's tools do), Offset is 0-based from the start of the input.
	Line, Column, Offset int
	Message              string
}

// Kind says what sort of Problem it is, so callers need not match on
// messages. Its values are short lowercase words, fit for an API.
type Kind string

// The kinds of problem.
const (
	KindSyntax    Kind = "syntax"    // not JSON; the walk stops here
	KindEmpty     Kind = "empty"     // no value at all
	KindTrailing  Kind = "trailing"  // something after the value
	KindUnknown   Kind = "unknown"   // an unknown field, or an element past a Go array's end
	KindCase      Kind = "case"      // a field name whose case differs
	KindDuplicate Kind = "duplicate" // a key given twice in one object, or a field set twice
	KindType      Kind = "type"      // a value of the wrong type or out of range
	KindValue     Kind = "value"     // refused by the type's own decoding (UnmarshalJSON, UnmarshalText, base64, json.Number)
	KindLimit     Kind = "limit"     // an array longer than Options.MaxElements
)

// String is the problem on one line: where, what, why.
func (p Problem) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "line %d, column %d (offset %d): ", p.Line, p.Column, p.Offset)
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error lists the problems, one a line after a count when there are
// several.
func (e *Error) Error() string {
	if len(e.Problems) == 1 && e.More == 0 {
		return e.Problems[0].String()
	}
	var b strings.Builder
	n := len(e.Problems) + e.More
	b.WriteString(strconv.Itoa(n))
	b.WriteString(" problems in JSON:")
	for _, p := range e.Problems {
		b.WriteString("\n\t")
		b.WriteString(p.String())
	}
	if e.More > 0 {
		fmt.Fprintf(&b, "\n\tand %d more", e.More)
	}
	return b.String()
}

// Shaper lets a type with its own UnmarshalJSON be checked strictly too.
// A type accepting several JSON shapes, say a string or an object, returns
// one example value per shape: []any{"", target{}}. For each value, the
// first shape that accepts its JSON kind (string, number, bool, object,
// array) is walked as any other type, with unknown fields, case,
// duplicates and types checked and positions kept; a value no shape
// accepts is a type problem naming the shapes. A shape may be the type
// itself: its own UnmarshalJSON is then ignored for the walk, so
// []any{"", T{}} checks an object against T's fields. Then, unless the
// walk found a value of the wrong type, UnmarshalJSON runs, and its error
// is a problem too, so a type's own rules (say, ProxyProtocol is 1 or 2)
// are reported with the rest.
//
// JSONShapes is called on a zero value, and only for types that have
// UnmarshalJSON. Such types without JSONShapes are checked by what
// UnmarshalJSON returns alone. The other seam: an UnmarshalJSON that calls
// Unmarshal on the whole of its raw bytes returns an *Error, and its
// problems are moved to their place in the outer input (path and
// position), just as if the walk had found them.
type Shaper interface {
	JSONShapes() []any
}
