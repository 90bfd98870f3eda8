package strictjson

import (
	"cmp"
	"encoding"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	shaperType          = reflect.TypeFor[Shaper]()
	numberType          = reflect.TypeFor[json.Number]()
)

// Flags for resolve: where a value sits.
const (
	fTop   = 1 << iota // the pointer handed to Unmarshal: not settable
	fPlain             // a Shaper's own shape: ignore its methods
)

type method uint8

const (
	none method = iota
	viaJSON
	viaText
)

// resolved is what encoding/json's indirect finds for a fresh value of a
// type: a method to call (on a new *elem), or the final type to fill.
type resolved struct {
	m    method
	elem reflect.Type // m != none: the method is on *elem
	t    reflect.Type // m == none
}

// resolve mirrors encoding/json's indirect on a new, zero value of type t:
// a named non-pointer type is first addressed (so pointer methods count),
// pointers are followed, and the first Unmarshaler (or TextUnmarshaler,
// except for null) wins. For null, a settable pointer is where it stops:
// null sets that pointer to nil.
func resolve(t reflect.Type, fl int, null bool) resolved {
	settable := fl&fTop == 0
	plain := fl&fPlain != 0
	cur, haveAddr := t, false
	if settable && t.Kind() != reflect.Pointer && t.Name() != "" {
		cur, haveAddr, settable = reflect.PointerTo(t), true, false
	}
	for cur.Kind() == reflect.Pointer {
		if null && settable {
			break
		}
		if !plain && cur.NumMethod() > 0 {
			if cur.Implements(jsonUnmarshalerType) {
				return resolved{m: viaJSON, elem: cur.Elem()}
			}
			if !null && cur.Implements(textUnmarshalerType) {
				return resolved{m: viaText, elem: cur.Elem()}
			}
		}
		if haveAddr {
			cur, haveAddr = t, false
		} else {
			cur = cur.Elem()
		}
		settable = true
	}
	return resolved{t: cur}
}

// typeInfo caches, for one type at a nested (settable) place, what the
// walk needs again and again.
type typeInfo struct {
	t          reflect.Type
	res        [2]resolved // [0] for non-null values, [1] for null
	fields     *structInfo // the final type's fields, if a struct
	shapes     []reflect.Type
	shapesDone bool
}

func (w *walker) info(t reflect.Type) *typeInfo {
	if w.last != nil && w.last.t == t {
		return w.last
	}
	ti, ok := w.types[t]
	if !ok {
		ti = &typeInfo{t: t, res: [2]resolved{resolve(t, 0, false), resolve(t, 0, true)}}
		w.types[t] = ti
	}
	w.last = ti
	return ti
}

func (w *walker) resolve(t reflect.Type, fl int, null bool) resolved {
	if fl != 0 {
		return resolve(t, fl, null)
	}
	ti := w.info(t)
	if null {
		return ti.res[1]
	}
	return ti.res[0]
}

// shapesOf returns the shapes a type with UnmarshalJSON declares, or nil.
func (w *walker) shapesOf(elem reflect.Type) []reflect.Type {
	ti := w.info(elem)
	if !ti.shapesDone {
		ti.shapesDone = true
		if reflect.PointerTo(elem).Implements(shaperType) {
			for _, s := range reflect.New(elem).Interface().(Shaper).JSONShapes() {
				if s != nil {
					ti.shapes = append(ti.shapes, reflect.TypeOf(s))
				}
			}
		}
	}
	return ti.shapes
}

func (w *walker) fields(t reflect.Type) *structInfo {
	ti := w.info(t)
	if ti.fields == nil {
		ti.fields = structFields(t)
	}
	return ti.fields
}

// field is one JSON member of a struct, as encoding/json sees it.
type field struct {
	name   string
	index  []int
	typ    reflect.Type // the Go field's type
	tagged bool
	quoted bool // the ",string" option applies
	// unsettable: reached through an embedded pointer to an unexported
	// struct type, which encoding/json cannot allocate.
	unsettable bool
}

type structInfo struct {
	fields []field
	exact  map[string]int
	folded map[string]int
	listed bool // a message has listed the fields
}

// lookup finds the field a key sets, as encoding/json does: by exact
// name, else by name folded for case.
func (si *structInfo) lookup(key []byte, buf *[]byte) (i int, exact bool) {
	if i, ok := si.exact[string(key)]; ok {
		return i, true
	}
	*buf = appendFolded((*buf)[:0], key)
	if i, ok := si.folded[string(*buf)]; ok {
		return i, false
	}
	return -1, false
}

// structFields lists the fields encoding/json decodes into for struct
// type t, following its rules: exported fields and the exported fields of
// embedded structs (breadth first, so shallower fields hide deeper ones,
// and a tagged field wins a tie), json tags for names, "-" to skip, and
// ",string" for scalars.
func structFields(t reflect.Type) *structInfo {
	type queued struct {
		typ   reflect.Type
		index []int
	}
	var fields []field
	next := []queued{{typ: t}}
	var count, nextCount map[reflect.Type]int
	visited := map[reflect.Type]bool{}
	for len(next) > 0 {
		current := next
		next = nil
		count, nextCount = nextCount, map[reflect.Type]int{}
		for _, q := range current {
			if visited[q.typ] {
				continue
			}
			visited[q.typ] = true
			for i := 0; i < q.typ.NumField(); i++ {
				sf := q.typ.Field(i)
				if sf.Anonymous {
					et := sf.Type
					if et.Kind() == reflect.Pointer {
						et = et.Elem()
					}
					if !sf.IsExported() && et.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, opts, _ := strings.Cut(tag, ",")
				if !validTag(name) {
					name = ""
				}
				index := append(slices.Clip(q.index), i)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if name != "" || !sf.Anonymous || ft.Kind() != reflect.Struct {
					f := field{name: name, index: index, typ: sf.Type, tagged: name != ""}
					if name == "" {
						f.name = sf.Name
					}
					if hasOption(opts, "string") {
						switch ft.Kind() {
						case reflect.Bool,
							reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
							reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
							reflect.Float32, reflect.Float64, reflect.String:
							f.quoted = true
						}
					}
					fields = append(fields, f)
					if count[q.typ] > 1 {
						// The same struct embedded twice at one depth:
						// a second copy makes its fields cancel out below.
						fields = append(fields, f)
					}
					continue
				}
				nextCount[ft]++
				if nextCount[ft] == 1 {
					next = append(next, queued{typ: ft, index: index})
				}
			}
		}
	}
	slices.SortFunc(fields, func(a, b field) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if c := cmp.Compare(len(a.index), len(b.index)); c != 0 {
			return c
		}
		if a.tagged != b.tagged {
			if a.tagged {
				return -1
			}
			return 1
		}
		return slices.Compare(a.index, b.index)
	})
	// Of fields sharing a name, the shallowest wins, a tagged one breaking
	// a tie; a tie that stays unbroken hides them all, as in Go.
	out := fields[:0]
	for i := 0; i < len(fields); {
		j := i + 1
		for j < len(fields) && fields[j].name == fields[i].name {
			j++
		}
		if j-i == 1 || len(fields[i].index) < len(fields[i+1].index) || fields[i].tagged != fields[i+1].tagged {
			out = append(out, fields[i])
		}
		i = j
	}
	fields = out
	slices.SortFunc(fields, func(a, b field) int { return slices.Compare(a.index, b.index) })

	si := &structInfo{fields: fields, exact: map[string]int{}, folded: map[string]int{}}
	for i := range fields {
		f := &fields[i]
		f.unsettable = throughUnexportedPointer(t, f.index)
		si.exact[f.name] = i
		k := string(appendFolded(nil, []byte(f.name)))
		if _, ok := si.folded[k]; !ok { // the first folded match wins
			si.folded[k] = i
		}
	}
	return si
}

// throughUnexportedPointer reports whether the way to a promoted field
// passes an embedded pointer to an unexported type, which encoding/json
// cannot allocate ("cannot set embedded pointer to unexported struct").
func throughUnexportedPointer(t reflect.Type, index []int) bool {
	for _, i := range index[:len(index)-1] {
		sf := t.Field(i)
		t = sf.Type
		if t.Kind() == reflect.Pointer {
			if !sf.IsExported() {
				return true
			}
			t = t.Elem()
		}
	}
	return false
}

func hasOption(opts, name string) bool {
	for opts != "" {
		var o string
		o, opts, _ = strings.Cut(opts, ",")
		if o == name {
			return true
		}
	}
	return false
}

// validTag is encoding/json's rule for a usable name in a tag.
func validTag(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}

// appendFolded appends name folded for case as encoding/json folds it:
// ASCII upper case, and every other rune to the smallest of its fold set.
func appendFolded(out, in []byte) []byte {
	for i := 0; i < len(in); {
		if c := in[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(in[i:])
		for {
			r2 := unicode.SimpleFold(r)
			if r2 <= r {
				r = r2
				break
			}
			r = r2
		}
		out = utf8.AppendRune(out, r)
		i += n
	}
	return out
}

// accepts reports whether a value of type t takes a JSON value starting
// with c without a type error (its content aside).
func (w *walker) accepts(t reflect.Type, fl int, c byte) bool {
	if c == 'n' {
		return true
	}
	r := w.resolve(t, fl, false)
	switch r.m {
	case viaJSON:
		return true
	case viaText:
		return c == '"'
	}
	k := r.t.Kind()
	if k == reflect.Interface && r.t.NumMethod() == 0 {
		return true
	}
	switch c {
	case '{':
		return k == reflect.Struct || k == reflect.Map && mapKeyOK(r.t.Key())
	case '[':
		return k == reflect.Slice || k == reflect.Array
	case '"':
		return k == reflect.String || k == reflect.Slice && r.t.Elem().Kind() == reflect.Uint8
	case 't', 'f':
		return k == reflect.Bool
	default:
		return isInt(k) || isUint(k) || k == reflect.Float32 || k == reflect.Float64 || r.t == numberType
	}
}

func mapKeyOK(kt reflect.Type) bool {
	return kt.Kind() == reflect.String || isInt(kt.Kind()) || isUint(kt.Kind()) ||
		reflect.PointerTo(kt).Implements(textUnmarshalerType)
}

func isInt(k reflect.Kind) bool { return k >= reflect.Int && k <= reflect.Int64 }

func isUint(k reflect.Kind) bool { return k >= reflect.Uint && k <= reflect.Uintptr }

// describe says in JSON words what a type takes, for messages.
func (w *walker) describe(t reflect.Type, fl int) string {
	r := w.resolve(t, fl, false)
	switch r.m {
	case viaText:
		return "a string"
	case viaJSON:
		if shapes := w.shapesOf(r.elem); len(shapes) > 0 {
			var ds []string
			for _, s := range shapes {
				d := w.describe(s, shapeFlags(s, r.elem))
				if !slices.Contains(ds, d) {
					ds = append(ds, d)
				}
			}
			return orList(ds)
		}
		return "a value"
	}
	t = r.t
	switch k := t.Kind(); {
	case t == numberType:
		return "a number"
	case k == reflect.String:
		return "a string"
	case k == reflect.Bool:
		return "true or false"
	case isInt(k):
		return "an integer"
	case isUint(k):
		return "a non-negative integer"
	case k == reflect.Float32 || k == reflect.Float64:
		return "a number"
	case k == reflect.Struct || k == reflect.Map && mapKeyOK(t.Key()):
		return "an object"
	case k == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
		return "a base64 string"
	case k == reflect.Slice || k == reflect.Array:
		return "an array"
	case k == reflect.Interface && t.NumMethod() == 0:
		return "a value"
	}
	return "nothing (Go type " + t.String() + " cannot be decoded)"
}

func orList(ds []string) string {
	switch len(ds) {
	case 0:
		return ""
	case 1:
		return ds[0]
	}
	return strings.Join(ds[:len(ds)-1], ", ") + " or " + ds[len(ds)-1]
}

// shapeFlags: a shape that is the Shaper's own type (or a pointer to it)
// is walked without its methods, which would only lead back to itself.
func shapeFlags(shape, elem reflect.Type) int {
	if shape == elem || shape.Kind() == reflect.Pointer && shape.Elem() == elem {
		return fPlain
	}
	return 0
}
