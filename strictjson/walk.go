package strictjson

import (
	"bytes"
	"encoding"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxDepth is encoding/json's limit on nesting.
const maxDepth = 10000

// walker checks one input against one type in a single pass: it is both
// the JSON scanner and the type check. It allocates per problem listed,
// never per problem counted, so a hostile input costs time linear in its
// size and memory bounded by the list, the nesting, and the keys of maps
// (which decoding would keep anyway).
type walker struct {
	data  []byte
	pos   int
	max   int
	elems int // Options.MaxElements; 0 for no bound
	probs []Problem
	more  int
	hard  int // problems of KindType and KindValue, listed or not

	depth int
	opens []int      // offsets of the open objects and arrays
	path  []pathElem // where the walk is
	types map[reflect.Type]*typeInfo
	last  *typeInfo         // the last looked up, most often the next too
	seen  [][]spot          // per depth: where each struct field was set (line 0: not yet)
	keys  []map[string]spot // per depth: where each key of a map or any-object was
	buf   []byte            // keys unescaped
	fold  []byte            // keys folded

	// lineCol's cursor: the line and line start at offset lcOff.
	lcOff, lcLine, lcStart int
}

// spot is where a key was, kept to say where a duplicate was first set
// without counting lines back from the start.
type spot struct{ line, col int }

type pathElem struct {
	kind       byte // 'f' struct member, 'k' map or any-object key, 'i' index
	start, end int  // 'f', 'k': the key as written, quotes included
	index      int  // 'i'
}

// check walks data against ptr, the type of the pointer handed to
// Unmarshal, and returns the problems found, or nil.
func check(data []byte, ptr reflect.Type, max, elems int) *Error {
	w := &walker{data: data, max: max, elems: elems, types: map[reflect.Type]*typeInfo{}, lcLine: 1}
	w.skipSpace()
	switch {
	case w.pos == len(data) && len(data) == 0:
		w.stop(KindEmpty, w.pos, "empty input: want a JSON value")
	case w.pos == len(data):
		w.stop(KindEmpty, w.pos, "only white space: want a JSON value")
	case w.value(ptr, fTop):
		w.skipSpace()
		if w.pos < len(data) {
			w.stop(KindTrailing, w.pos, "unexpected "+quoteChar(data[w.pos])+" after the JSON value: only one value is allowed")
		}
	}
	if len(w.probs) == 0 {
		return nil
	}
	return &Error{Problems: w.probs, More: w.more}
}

// room reports whether one more problem may be listed, and counts it if
// not. Callers build a message only when it says yes.
func (w *walker) room(kind Kind) bool {
	if kind == KindType || kind == KindValue {
		w.hard++
	}
	if len(w.probs) < w.max {
		return true
	}
	w.more++
	return false
}

func (w *walker) add(kind Kind, off int, msg string) {
	line, col := w.lineCol(off)
	w.probs = append(w.probs, Problem{Kind: kind, Path: w.pathString(), Line: line, Column: col, Offset: off, Message: msg})
}

func (w *walker) problem(kind Kind, off int, format string, args ...any) {
	if w.room(kind) {
		w.add(kind, off, fmt.Sprintf(format, args...))
	}
}

// stop records what ends the walk, or what decides it (an array over
// MaxElements). It is always listed: if the list is full, it takes the
// last place.
func (w *walker) stop(kind Kind, off int, msg string) {
	if len(w.probs) >= w.max {
		w.probs = w.probs[:w.max-1]
		w.more++
	}
	w.add(kind, off, msg)
}

func (w *walker) syntax(off int, format string, args ...any) bool {
	w.stop(KindSyntax, off, fmt.Sprintf(format, args...))
	return false
}

// eof is the syntax error for input that ends inside a value.
func (w *walker) eof(want string) bool {
	msg := "unexpected end of input: want " + want
	if n := len(w.opens); n > 0 {
		what := "array"
		if w.data[w.opens[n-1]] == '{' {
			what = "object"
		}
		line, col := w.lineCol(w.opens[n-1])
		msg += fmt.Sprintf("; the %s at line %d, column %d is not closed", what, line, col)
	}
	return w.syntax(len(w.data), "%s", msg)
}

// lineCol turns an offset into a line and a column, both 1-based. The
// problems come mostly in input order, so a cursor makes this linear; a
// look back (where a duplicate was first set) counts again from the start.
func (w *walker) lineCol(off int) (line, col int) {
	if off < w.lcOff {
		w.lcOff, w.lcLine, w.lcStart = 0, 1, 0
	}
	seg := w.data[w.lcOff:off]
	if n := bytes.Count(seg, []byte{'\n'}); n > 0 {
		w.lcLine += n
		w.lcStart = w.lcOff + bytes.LastIndexByte(seg, '\n') + 1
	}
	w.lcOff = off
	return w.lcLine, off - w.lcStart + 1
}

func (w *walker) pathString() string {
	var b strings.Builder
	for i, e := range w.path {
		if len(w.path) > maxPath && i >= maxPath/2 && i < len(w.path)-maxPath/2 {
			if i == maxPath/2 {
				fmt.Fprintf(&b, "...(%d more)...", len(w.path)-maxPath)
			}
			continue
		}
		switch e.kind {
		case 'i':
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(e.index))
			b.WriteByte(']')
		default:
			name := w.name(e.start, e.end)
			if e.kind == 'f' && isIdent(name) {
				if i > 0 {
					b.WriteByte('.')
				}
				b.WriteString(name)
			} else {
				b.WriteByte('[')
				b.WriteString(strconv.Quote(name))
				b.WriteByte(']')
			}
		}
	}
	return b.String()
}

// name is the key at start (a valid string literal) decoded for display,
// cut short if long, without decoding more of a long key than it shows.
func (w *walker) name(start, end int) string {
	raw := w.data[start:end]
	if len(raw) > 6*maxName {
		i := 1
		for i < 6*maxName {
			if raw[i] == '\\' && raw[i+1] == 'u' {
				i += 6
			} else if raw[i] == '\\' {
				i += 2
			} else {
				i++
			}
		}
		raw = append(raw[:i:i], '"')
	}
	s, _ := unquote(raw, nil)
	return cut(string(s[:min(len(s), maxName+utf8.UTFMax)]), maxName)
}

func isIdent(s string) bool {
	if len(s) == 0 || '0' <= s[0] && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func joinPath(outer, inner string) string {
	switch {
	case inner == "":
		return outer
	case outer == "" || strings.HasPrefix(inner, "["):
		return outer + inner
	}
	return outer + "." + inner
}

func (w *walker) skipSpace() {
	for w.pos < len(w.data) {
		switch w.data[w.pos] {
		case ' ', '\t', '\n', '\r':
			w.pos++
		default:
			return
		}
	}
}

// value walks the value at w.pos (space skipped) against t; t == nil
// checks only its syntax. It returns false after a syntax error.
func (w *walker) value(t reflect.Type, fl int) bool {
	if w.pos >= len(w.data) {
		return w.eof("a value")
	}
	start := w.pos
	c := w.data[start]
	var r resolved
	if t != nil {
		r = w.resolve(t, fl, c == 'n')
		switch {
		case r.m == viaJSON:
			return w.viaJSON(r, start)
		case r.m == viaText && (c == '{' || c == '['):
			w.mismatch(start, nil, 0, c)
			t = nil
		}
	}
	switch c {
	case '{':
		return w.object(r.t, t == nil, start)
	case '[':
		return w.array(r.t, t == nil, start)
	case '"':
		if !w.scanString() {
			return false
		}
	case 't':
		if !w.word("true") {
			return false
		}
	case 'f':
		if !w.word("false") {
			return false
		}
	case 'n':
		if !w.word("null") {
			return false
		}
	default:
		if c != '-' && (c < '0' || c > '9') {
			return w.syntax(start, "unexpected %s: want a value%s", quoteChar(c), w.hint(start, c))
		}
		if !w.scanNumber() {
			return false
		}
	}
	if t != nil {
		w.literal(r, w.data[start:w.pos], start, false)
	}
	return true
}

// hint guesses what the user meant by a byte that cannot start a value.
func (w *walker) hint(off int, c byte) string {
	switch {
	case off == 0 && len(w.data) >= 3 && string(w.data[:3]) == "\xef\xbb\xbf":
		return " (a byte order mark: save the file as UTF-8 without one)"
	case c == '\'':
		return " (strings take double quotes)"
	case c == '/' || c == '#':
		return " (JSON has no comments)"
	case c == ']' || c == '}':
		i := off - 1
		for i >= 0 && (w.data[i] == ' ' || w.data[i] == '\t' || w.data[i] == '\n' || w.data[i] == '\r') {
			i--
		}
		if i >= 0 && w.data[i] == ',' {
			return " (a comma before the end is not allowed)"
		}
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		return " (strings take double quotes)"
	}
	return ""
}

// viaJSON walks a value whose type has its own UnmarshalJSON: against its
// shapes if it declares any, then by calling UnmarshalJSON.
func (w *walker) viaJSON(r resolved, start int) bool {
	shapes := w.shapesOf(r.elem)
	if len(shapes) == 0 {
		if !w.value(nil, 0) {
			return false
		}
		w.callJSON(r.elem, w.data[start:w.pos], start, true)
		return true
	}
	c := w.data[start]
	for _, s := range shapes {
		fl := shapeFlags(s, r.elem)
		if !w.accepts(s, fl, c) {
			continue
		}
		// UnmarshalJSON has its say unless the shape's types are already
		// wrong, when it would only repeat that.
		before := w.hard
		if !w.value(s, fl) {
			return false
		}
		if w.hard == before {
			w.callJSON(r.elem, w.data[start:w.pos], start, true)
		}
		return true
	}
	w.mismatch(start, reflect.PointerTo(r.elem), fTop, c)
	return w.value(nil, 0)
}

// callJSON runs UnmarshalJSON on a new value. raw is the value's bytes at
// offset at; rebase says they are exactly the input's, so that the
// positions of a nested *Error can be moved into the input.
func (w *walker) callJSON(elem reflect.Type, raw []byte, at int, rebase bool) {
	err := reflect.New(elem).Interface().(json.Unmarshaler).UnmarshalJSON(raw)
	if err == nil {
		return
	}
	var inner *Error
	if rebase && errors.As(err, &inner) {
		outer := w.pathString()
		for _, p := range inner.Problems {
			if w.room(p.Kind) {
				line, col := w.lineCol(at + p.Offset)
				w.probs = append(w.probs, Problem{Kind: p.Kind, Path: joinPath(outer, p.Path),
					Line: line, Column: col, Offset: at + p.Offset, Message: p.Message})
			}
		}
		w.more += inner.More
		w.hard += inner.More // of unknown kinds: count them as the worst
		return
	}
	if w.room(KindValue) {
		w.add(KindValue, at, cut(err.Error(), maxMessage))
	}
}

func (w *walker) callText(elem reflect.Type, s []byte, at int) {
	if err := reflect.New(elem).Interface().(encoding.TextUnmarshaler).UnmarshalText(s); err != nil && w.room(KindValue) {
		w.add(KindValue, at, cut(err.Error(), maxMessage))
	}
}

// mismatch reports a value starting with c where t (resolved with fl)
// wants another kind; t == nil stands for a TextUnmarshaler.
func (w *walker) mismatch(at int, t reflect.Type, fl int, c byte) {
	if !w.room(KindType) {
		return
	}
	want := "a string"
	if t != nil {
		want = w.describe(t, fl)
	}
	w.add(KindType, at, "want "+want+", got "+jsonKind(c))
}

func jsonKind(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// open enters an object or array at w.pos.
func (w *walker) open() bool {
	if w.depth >= maxDepth {
		return w.syntax(w.pos, "nested too deeply: more than %d levels", maxDepth)
	}
	w.depth++
	w.opens = append(w.opens, w.pos)
	w.pos++
	return true
}

func (w *walker) close() {
	w.depth--
	w.opens = w.opens[:len(w.opens)-1]
	w.pos++
}

// object walks an object into t (after resolve), or only its syntax.
func (w *walker) object(t reflect.Type, skip bool, start int) bool {
	const (
		mSkip = iota
		mStruct
		mMap
		mAny
	)
	mode := mSkip
	var si *structInfo
	var keyT, elemT reflect.Type
	if !skip {
		switch k := t.Kind(); {
		case k == reflect.Interface && t.NumMethod() == 0:
			mode, elemT = mAny, t
		case k == reflect.Map && mapKeyOK(t.Key()):
			mode, keyT, elemT = mMap, t.Key(), t.Elem()
		case k == reflect.Struct:
			mode, si = mStruct, w.fields(t)
		default:
			w.mismatch(start, t, fPlain, '{')
		}
	}
	if !w.open() {
		return false
	}
	var seen []spot
	var keys map[string]spot
	switch mode {
	case mStruct:
		seen = w.seenAt(len(si.fields))
	case mMap, mAny:
		keys = w.keysAt()
	}
	w.skipSpace()
	if w.pos < len(w.data) && w.data[w.pos] == '}' {
		w.close()
		return true
	}
	for {
		w.skipSpace()
		if w.pos >= len(w.data) {
			return w.eof("a key string")
		}
		if c := w.data[w.pos]; c != '"' {
			return w.syntax(w.pos, "unexpected %s: want a key string%s", quoteChar(c), w.hint(w.pos, c))
		}
		ks := w.pos
		if !w.scanString() {
			return false
		}
		ke := w.pos
		w.skipSpace()
		if w.pos >= len(w.data) {
			return w.eof("':' after the key")
		}
		if c := w.data[w.pos]; c != ':' {
			return w.syntax(w.pos, "unexpected %s: want ':' after the key", quoteChar(c))
		}
		w.pos++
		w.skipSpace()

		kind := byte('k')
		if mode == mStruct || mode == mSkip {
			kind = 'f'
		}
		w.path = append(w.path, pathElem{kind: kind, start: ks, end: ke})
		var vt reflect.Type
		quoted := false
		switch mode {
		case mStruct:
			key, _ := unquote(w.data[ks:ke], &w.buf)
			i, exact := si.lookup(key, &w.fold)
			switch {
			case i < 0:
				w.unknown(si, ks, ke)
			case !exact && w.room(KindCase):
				msg := fmt.Sprintf("unknown field %s; did you mean %q? (names are case-sensitive)", w.keyText(ks, ke), si.fields[i].name)
				if seen[i].line > 0 {
					msg += fmt.Sprintf("; that field is set already at line %d, column %d", seen[i].line, seen[i].col)
				}
				w.add(KindCase, ks, msg)
			case exact && seen[i].line > 0:
				w.duplicate(ks, ke, seen[i], si.fields[i].name)
			}
			if i >= 0 {
				f := &si.fields[i]
				if seen[i].line == 0 {
					seen[i] = w.spot(ks)
				}
				if f.unsettable {
					w.problem(KindType, ks, "field %q is promoted through an embedded pointer to an unexported struct, which cannot be set", f.name)
				} else {
					vt, quoted = f.typ, f.quoted
				}
			}
		case mMap, mAny:
			key, _ := unquote(w.data[ks:ke], &w.buf)
			if first, dup := keys[string(key)]; dup {
				w.duplicate(ks, ke, first, "")
			} else {
				keys[string(key)] = w.spot(ks)
			}
			if mode == mMap {
				w.mapKey(keyT, key, ks, ke)
			}
			vt = elemT
		}
		var ok bool
		if quoted {
			ok = w.quotedValue(vt)
		} else {
			ok = w.value(vt, 0)
		}
		if !ok {
			return false
		}
		w.path = w.path[:len(w.path)-1]
		w.skipSpace()
		if w.pos >= len(w.data) {
			return w.eof("',' or '}'")
		}
		switch c := w.data[w.pos]; c {
		case ',':
			w.pos++
		case '}':
			w.close()
			return true
		default:
			return w.syntax(w.pos, "unexpected %s: want ',' or '}' after the object member%s", quoteChar(c), missingComma(c))
		}
	}
}

func missingComma(c byte) string {
	if c == '"' || c == '{' || c == '[' || c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n' {
		return " (a comma is missing?)"
	}
	return ""
}

// seenAt gives the object at the current depth its field table, reusing
// the one of the last object at that depth.
func (w *walker) seenAt(n int) []spot {
	for len(w.seen) <= w.depth {
		w.seen = append(w.seen, nil)
	}
	s := w.seen[w.depth]
	if cap(s) < n {
		s = make([]spot, n)
		w.seen[w.depth] = s
	}
	s = s[:n]
	clear(s)
	return s
}

func (w *walker) keysAt() map[string]spot {
	for len(w.keys) <= w.depth {
		w.keys = append(w.keys, nil)
	}
	m := w.keys[w.depth]
	if m == nil {
		m = map[string]spot{}
		w.keys[w.depth] = m
	}
	clear(m)
	return m
}

func (w *walker) spot(off int) spot {
	line, col := w.lineCol(off)
	return spot{line, col}
}

func (w *walker) unknown(si *structInfo, ks, ke int) {
	if !w.room(KindUnknown) {
		return
	}
	msg := "unknown field " + w.keyText(ks, ke)
	if near := nearest(si, w.name(ks, ke)); near != "" {
		msg += fmt.Sprintf("; did you mean %q?", near)
	} else if n := len(si.fields); n == 0 {
		msg += "; this object takes no fields"
	} else if n <= 12 && !si.listed {
		si.listed = true // once is enough: a list of problems is not to repeat it
		names := make([]string, n)
		for i, f := range si.fields {
			names[i] = f.name
		}
		msg += "; the fields are " + strings.Join(names, ", ")
	}
	w.add(KindUnknown, ks, msg)
}

// duplicate reports the key at ks as given already at first: a field set
// twice, or else a key of a map or any-object.
func (w *walker) duplicate(ks, ke int, first spot, field string) {
	if !w.room(KindDuplicate) {
		return
	}
	what := "duplicate key " + w.keyText(ks, ke)
	if field != "" {
		what = fmt.Sprintf("field %q set twice", field)
	}
	w.add(KindDuplicate, ks, fmt.Sprintf("%s: first at line %d, column %d", what, first.line, first.col))
}

// nearest names the field a mistyped key most likely meant, if any is
// close enough.
func nearest(si *structInfo, key string) string {
	if len(key) > maxName {
		return ""
	}
	key = strings.ToLower(key)
	best, bestD := "", 3
	for _, f := range si.fields {
		if d := distance(key, strings.ToLower(f.name), bestD); d < bestD && d <= len(f.name)/3 {
			best, bestD = f.name, d
		}
	}
	return best
}

// distance is the edit distance of a and b, or limit when it is at least
// that.
func distance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		low := cur[0]
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
			low = min(low, cur[j])
		}
		if low >= limit {
			return limit
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}

// mapKey checks a key as encoding/json converts it to the map's key type.
func (w *walker) mapKey(kt reflect.Type, key []byte, ks, ke int) {
	switch {
	case reflect.PointerTo(kt).Implements(textUnmarshalerType):
		if reflect.PointerTo(kt).Implements(jsonUnmarshalerType) {
			w.callJSON(kt, w.data[ks:ke], ks, true)
		} else {
			w.callText(kt, key, ks)
		}
	case isInt(kt.Kind()):
		n, err := strconv.ParseInt(string(key), 10, 64)
		if err != nil || reflect.Zero(kt).OverflowInt(n) {
			w.problem(KindType, ks, "want an integer key, got %s", w.keyText(ks, ke))
		}
	case isUint(kt.Kind()):
		n, err := strconv.ParseUint(string(key), 10, 64)
		if err != nil || reflect.Zero(kt).OverflowUint(n) {
			w.problem(KindType, ks, "want a non-negative integer key, got %s", w.keyText(ks, ke))
		}
	}
}

// array walks an array into t (after resolve), or only its syntax.
func (w *walker) array(t reflect.Type, skip bool, start int) bool {
	var elemT reflect.Type
	limit := -1
	if !skip {
		switch k := t.Kind(); {
		case k == reflect.Interface && t.NumMethod() == 0:
			elemT = t
		case k == reflect.Slice:
			elemT = t.Elem()
		case k == reflect.Array:
			elemT, limit = t.Elem(), t.Len()
		default:
			w.mismatch(start, t, fPlain, '[')
		}
	}
	if !w.open() {
		return false
	}
	w.skipSpace()
	if w.pos < len(w.data) && w.data[w.pos] == ']' {
		w.close()
		return true
	}
	for i := 0; ; i++ {
		w.skipSpace()
		w.path = append(w.path, pathElem{kind: 'i', index: i})
		vt := elemT
		if i >= limit && limit >= 0 {
			if i == limit {
				w.problem(KindUnknown, w.pos, "too many elements: the array holds %d", limit)
			}
			vt = nil
		}
		if w.elems > 0 && i >= w.elems {
			if i == w.elems {
				// Listed whatever else was found: it is the verdict on
				// the whole array, and it is why decoding never runs.
				w.path = w.path[:len(w.path)-1]
				w.stop(KindLimit, start, fmt.Sprintf("more than %d elements: at most %d are allowed", w.elems, w.elems))
				w.path = append(w.path, pathElem{kind: 'i', index: i})
			}
			vt = nil
		}
		if !w.value(vt, 0) {
			return false
		}
		w.path = w.path[:len(w.path)-1]
		w.skipSpace()
		if w.pos >= len(w.data) {
			return w.eof("',' or ']'")
		}
		switch c := w.data[w.pos]; c {
		case ',':
			w.pos++
		case ']':
			w.close()
			return true
		default:
			return w.syntax(w.pos, "unexpected %s: want ',' or ']' after the array element%s", quoteChar(c), missingComma(c))
		}
	}
}

// quotedValue walks the value of a field with the ",string" option: null,
// or a string holding the literal.
func (w *walker) quotedValue(t reflect.Type) bool {
	if w.pos >= len(w.data) {
		return w.eof("a value")
	}
	start := w.pos
	switch w.data[start] {
	case 'n':
		if !w.word("null") {
			return false
		}
		w.literal(w.resolve(t, 0, true), w.data[start:w.pos], start, false)
		return true
	case '"':
		if !w.scanString() {
			return false
		}
		content, _ := unquote(w.data[start:w.pos], nil)
		if len(content) == 0 {
			w.problem(KindType, start, "want a string holding %s (the field has the \",string\" option), got an empty string", w.describe(t, 0))
			return true
		}
		w.literal(w.resolve(t, 0, content[0] == 'n'), content, start, true)
		return true
	}
	w.problem(KindType, start, "want a string holding %s (the field has the \",string\" option), got %s", w.describe(t, 0), jsonKind(w.data[start]))
	return w.value(nil, 0)
}

// literal checks a scalar against a resolved type as encoding/json's
// literalStore does. item is the literal as written; for a ",string"
// field (quoted), what the string holds, which may be anything.
func (w *walker) literal(r resolved, item []byte, at int, quoted bool) {
	switch r.m {
	case viaJSON:
		w.callJSON(r.elem, item, at, !quoted)
		return
	case viaText:
		if item[0] != '"' {
			w.bad(nil, "a string", item, at, quoted)
			return
		}
		s, ok := unquote(item, nil)
		if !ok {
			w.bad(nil, "a string", item, at, quoted)
			return
		}
		w.callText(r.elem, s, at)
		return
	}
	t := r.t
	k := t.Kind()
	anyT := k == reflect.Interface && t.NumMethod() == 0
	switch c := item[0]; c {
	case 'n':
		if quoted && string(item) != "null" {
			w.bad(t, "", item, at, quoted)
		}
	case 't', 'f':
		if quoted && string(item) != "true" && string(item) != "false" || k != reflect.Bool && !anyT {
			w.bad(t, "", item, at, quoted)
		}
	case '"':
		var s []byte
		if quoted || t == numberType || k == reflect.Slice {
			var ok bool
			if s, ok = unquote(item, &w.buf); !ok {
				w.bad(t, "", item, at, quoted)
				return
			}
		}
		switch {
		case k == reflect.String:
			if t == numberType && !validNumber(s) {
				w.problem(KindValue, at, "want a number in the string, got %s", clip(item))
			}
		case k == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
			if _, err := base64.StdEncoding.Decode(make([]byte, base64.StdEncoding.DecodedLen(len(s))), s); err != nil {
				w.problem(KindValue, at, "want base64: %v", err)
			}
		case !anyT:
			w.bad(t, "", item, at, quoted)
		}
	default:
		if c != '-' && (c < '0' || c > '9') {
			w.bad(t, "", item, at, quoted)
			return
		}
		w.number(t, item, at, quoted)
	}
}

// bad reports a literal of the wrong type: want says what would do, or is
// "" to describe t.
func (w *walker) bad(t reflect.Type, want string, item []byte, at int, quoted bool) {
	if !w.room(KindType) {
		return
	}
	if want == "" {
		want = w.describe(t, fPlain)
	}
	if quoted {
		w.add(KindType, at, fmt.Sprintf("want a string holding %s (the field has the \",string\" option), got %q", want, clip(item)))
	} else {
		w.add(KindType, at, "want "+want+", got "+jsonKind(item[0]))
	}
}

func (w *walker) number(t reflect.Type, item []byte, at int, quoted bool) {
	shown := clip(item)
	if quoted {
		shown = strconv.Quote(shown)
	}
	switch k := t.Kind(); {
	case k == reflect.Interface:
		if _, err := strconv.ParseFloat(string(item), 64); err != nil {
			w.problem(KindType, at, "number %s is out of range", shown)
		} else if t.NumMethod() != 0 {
			w.bad(t, "", item, at, quoted)
		}
	case isInt(k):
		n, err := strconv.ParseInt(string(item), 10, 64)
		switch {
		case err != nil && errors.Is(err, strconv.ErrRange), err == nil && reflect.Zero(t).OverflowInt(n):
			lo, hi := -1<<(t.Bits()-1), 1<<(t.Bits()-1)-1
			w.problem(KindType, at, "%s is out of range (%d to %d)", shown, lo, hi)
		case err != nil:
			w.bad(t, "an integer", item, at, quoted)
		}
	case isUint(k):
		n, err := strconv.ParseUint(string(item), 10, 64)
		// -1 is out of range, but -0 is just refused, as encoding/json does.
		negative := err != nil && item[0] == '-' && len(item) > 1 && allDigits(item[1:]) && strings.Trim(string(item[1:]), "0") != ""
		switch {
		case negative, err != nil && errors.Is(err, strconv.ErrRange), err == nil && reflect.Zero(t).OverflowUint(n):
			w.problem(KindType, at, "%s is out of range (0 to %d)", shown, uint64(1)<<(t.Bits()-1)*2-1)
		case err != nil:
			w.bad(t, "a non-negative integer", item, at, quoted)
		}
	case k == reflect.Float32 || k == reflect.Float64:
		n, err := strconv.ParseFloat(string(item), t.Bits())
		if err != nil || reflect.Zero(t).OverflowFloat(n) {
			if errors.Is(err, strconv.ErrRange) || err == nil {
				w.problem(KindType, at, "number %s is out of range", shown)
			} else {
				w.bad(t, "a number", item, at, quoted)
			}
		}
	case t == numberType:
	default:
		w.bad(t, "", item, at, quoted)
	}
}

// keyText is the key at ks for a message: decoded, quoted, cut short if
// long.
func (w *walker) keyText(ks, ke int) string { return strconv.Quote(w.name(ks, ke)) }

// afterCheck turns an error of encoding/json after a clean walk into a
// problem, placed as well as its error allows.
func afterCheck(data []byte, err error) Problem {
	p := Problem{Kind: KindValue, Message: cut(err.Error(), maxMessage)}
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		p.Kind, p.Offset, p.Path = KindType, int(te.Offset), te.Field
	case errors.As(err, &se):
		p.Kind, p.Offset = KindSyntax, int(se.Offset)
	}
	p.Offset = max(0, min(p.Offset, len(data)))
	w := walker{data: data, lcLine: 1}
	p.Line, p.Column = w.lineCol(p.Offset)
	return p
}
