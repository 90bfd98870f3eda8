package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// The fuzz types exercise every rule of encoding/json the walk mirrors.

type fzInner struct {
	A int    `json:"a"`
	B string `json:"b,omitempty"`
	C *fzInner
	D []int
}

type FzEmbed struct {
	E1     int
	Shadow string // hidden by fzT.Shadow
	Tie    int    // ties with FzEmbedP.Tie: neither is a field
}

type FzEmbedP struct {
	P1  string
	Tie int
}

type fzHidden struct{ H1 int } // unexported, embedded: H1 is promoted

type fzHiddenP struct{ HP int } // embedded through a pointer: HP cannot be set

type fzT struct {
	FzEmbed
	*FzEmbedP
	fzHidden
	*fzHiddenP
	Shadow int
	I8     int8
	U16    uint16
	I      int
	F32    float32
	F64    float64
	S      string
	Bl     bool
	Q      int         `json:",string"`
	QS     string      `json:"qs,string"`
	QB     *bool       `json:",string"`
	QF     float64     `json:"qf,string"`
	QN     json.Number `json:",string"`
	Skip   int         `json:"-"`
	Dash   int         `json:"-,"`
	Tagged int         `json:"tagged"`
	Bytes  []byte
	Arr    [2]int8
	Sl     []fzInner
	M      map[string]*fzInner
	MI     map[int8]string
	MU     map[uint]bool
	MA     map[netip.Addr]int
	Any    any
	Num    json.Number
	Raw    json.RawMessage
	Addr   netip.Addr
	PAddr  *netip.Addr
	Time   *time.Time
	U      fzUnion
	PU     *fzUnion
	MUn    map[string]fzUnion
	Str    fmt.Stringer
	Anon   struct{ X, Y int }
	Ptr2   **int
	hidden int
}

// fzUnion takes "host:port" or {"Address": ..., "ProxyProtocol": ...},
// the shape the client's ServiceToLocalAddrMap values are to take.
type fzUnion struct {
	Address       string
	ProxyProtocol uint8
}

func (u *fzUnion) UnmarshalJSON(b []byte) error {
	type plain fzUnion
	var err error
	if len(b) > 0 && b[0] == '"' {
		err = json.Unmarshal(b, &u.Address)
	} else {
		err = json.Unmarshal(b, (*plain)(u))
	}
	if err == nil && u.ProxyProtocol > 2 {
		err = errors.New("ProxyProtocol must be 0, 1 or 2")
	}
	return err
}

func (fzUnion) JSONShapes() []any { return []any{"", fzUnion{}} }

var fuzzTypes = []reflect.Type{
	reflect.TypeFor[fzT](),
	reflect.TypeFor[[]fzT](),
	reflect.TypeFor[map[string]any](),
	reflect.TypeFor[any](),
	reflect.TypeFor[[2]fzInner](),
	reflect.TypeFor[*int](),
	reflect.TypeFor[fzUnion](),
	reflect.TypeFor[map[int]fzUnion](),
	reflect.TypeFor[[]byte](),
	reflect.TypeFor[json.RawMessage](),
}

var fuzzSeeds = []string{
	``, ` `, `null`, `{}`, `[]`, `0`, `-0.5e+3`, `"x"`, `true`, `{} {}`, `[1,]`, `{"a":1,}`,
	`{"E1":1,"Shadow":2,"Tie":3,"P1":"p","H1":4,"HP":5}`,
	`{"I8":127,"U16":65535,"I":-1,"F32":3.4e38,"F64":1e308,"S":"\u00e9\ud83d\ude00","Bl":false}`,
	`{"I8":128,"U16":-1,"I":1.5,"F32":1e39,"F64":1e309,"S":1,"Bl":"true"}`,
	`{"Q":"12","qs":"\"s\"","QB":"true","qf":"-1.5","QN":"1x"}`,
	`{"Q":12,"qs":"s","QB":"maybe","qf":"","QN":null}`,
	`{"Skip":1,"-":2,"Dash":3,"tagged":4,"Tagged":5,"TAGGED":6}`,
	`{"Bytes":"aGVsbG8=","Arr":[1,2,3],"Sl":[{"a":1,"b":"x","C":{"a":2},"D":[1]}]}`,
	`{"Bytes":"!!","Arr":[1],"Sl":[{"A":1,"a":2}]}`,
	`{"M":{"k":{"a":1},"k":null},"MI":{"1":"a","-129":"b","x":"c"},"MU":{"0":true,"-1":false}}`,
	`{"MA":{"192.0.2.1":1,"bogus":2},"Addr":"2001:db8::1","PAddr":"x","Time":"2026-01-02T03:04:05Z"}`,
	`{"Any":{"a":[1,"2",{"b":null}],"a":1e400},"Num":"12","Raw":{"x":[1,2]}}`,
	`{"U":"127.0.0.1:9001","PU":{"Address":"127.0.0.1:9002","ProxyProtocol":2},"MUn":{"web":"a","db":{"address":"b"}}}`,
	`{"U":{"ProxyProtocol":3},"PU":5,"MUn":{"x":{"Address":"a","Port":1}}}`,
	`{"Str":null,"Anon":{"X":1,"Y":2,"Z":3},"Ptr2":7,"hidden":1}`,
	`{"Str":"s","Anon":[],"Ptr2":null}`,
	`[{"I":1},{"I":"1"},3,null]`,
	`{"1":{"Address":"x"},"2":"y","z":"q"}`,
	`[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]`,
	`{"S":"a\tb"}`, `{"S":"\x"}`, `{"S":"\u12"}`, `"\ud800"`, "{\"\xff\":1}", `{"K":1}`, "{\"\u212a\":1}",
	"{\n \"I\": 1,\n \"I\": 2\n}\n",
}

func FuzzUnmarshal(f *testing.F) {
	for _, s := range fuzzSeeds {
		for i := range fuzzTypes {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		typ := fuzzTypes[int(which)%len(fuzzTypes)]
		agree(t, typ, data)
	})
}

// agree checks the walk against encoding/json on one input:
//   - the input is JSON exactly when encoding/json says so;
//   - encoding/json fails exactly when the walk finds a problem of a kind
//     it would fail on (type, value, syntax, empty, trailing); every other
//     problem is one encoding/json lets through;
//   - an unknown field that DisallowUnknownFields refuses is found;
//   - a duplicate is only claimed where the input has one;
//   - when both accept, the values are equal; when Unmarshal refuses, the
//     destination is untouched;
//   - positions are within the input and line and column match the offset;
//   - a bounded list is the head of the full one, with the same total.
func agree(t *testing.T, typ reflect.Type, data []byte) {
	t.Helper()
	full := check(data, reflect.PointerTo(typ), 1<<30, 0)
	kinds := map[Kind]int{}
	if full != nil {
		if full.More != 0 {
			t.Fatalf("unbounded check counted %d more", full.More)
		}
		for _, p := range full.Problems {
			kinds[p.Kind]++
			if p.Offset < 0 || p.Offset > len(data) {
				t.Fatalf("offset %d outside input of %d bytes: %v", p.Offset, len(data), p)
			}
			line := 1 + bytes.Count(data[:p.Offset], []byte("\n"))
			col := p.Offset - (bytes.LastIndexByte(data[:p.Offset], '\n') + 1) + 1
			if p.Line != line || p.Column != col {
				t.Fatalf("%v: want line %d column %d", p, line, col)
			}
		}
	}
	syntaxBad := kinds[KindSyntax]+kinds[KindEmpty]+kinds[KindTrailing] > 0
	if syntaxBad == json.Valid(data) {
		t.Fatalf("json.Valid=%v but problems %v", json.Valid(data), full)
	}
	hard := syntaxBad || kinds[KindType]+kinds[KindValue] > 0

	plain := reflect.New(typ)
	jerr := json.Unmarshal(data, plain.Interface())
	if (jerr != nil) != hard {
		t.Fatalf("encoding/json: %v\nstrictjson: %v", jerr, full)
	}
	if jerr == nil && full == nil {
		// Nothing strict could refuse, so DisallowUnknownFields passes.
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(reflect.New(typ).Interface()); err != nil {
			t.Fatalf("DisallowUnknownFields: %v, strictjson: none", err)
		}
	}
	if jerr == nil && kinds[KindUnknown] == 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(reflect.New(typ).Interface()); err != nil {
			t.Fatalf("DisallowUnknownFields: %v, strictjson found no unknown field: %v", err, full)
		}
	}
	if kinds[KindDuplicate] > 0 && !syntaxBad && !hasDuplicateKey(data) {
		// (Duplicate struct fields may differ in case; map keys may not.)
		t.Fatalf("duplicate claimed where there is none: %v", full)
	}

	// Unmarshal: equal to encoding/json on success, untouched on failure.
	dst := reflect.New(typ)
	sentinel(dst.Elem())
	before := fmt.Sprintf("%#v", dst.Elem().Interface())
	err := Unmarshal(data, dst.Interface())
	if (err == nil) != (full == nil) {
		t.Fatalf("Unmarshal: %v, check: %v", err, full)
	}
	if err != nil {
		if after := fmt.Sprintf("%#v", dst.Elem().Interface()); after != before {
			t.Fatalf("destination changed on error:\n%s\n%s", before, after)
		}
	} else if !reflect.DeepEqual(dst.Elem().Interface(), plain.Elem().Interface()) {
		t.Fatalf("values differ:\n%#v\n%#v", dst.Elem().Interface(), plain.Elem().Interface())
	}

	// A bound keeps the head of the list and the total.
	if full != nil {
		for _, n := range []int{1, 2, 3} {
			b := check(data, reflect.PointerTo(typ), n, 0)
			if len(b.Problems) > n || len(b.Problems)+b.More != len(full.Problems) {
				t.Fatalf("bound %d: %d listed + %d more, want %d in all", n, len(b.Problems), b.More, len(full.Problems))
			}
			last := full.Problems[len(full.Problems)-1]
			fatal := last.Kind == KindSyntax || last.Kind == KindEmpty || last.Kind == KindTrailing
			for i, p := range b.Problems {
				want := full.Problems[i]
				if fatal && i == len(b.Problems)-1 {
					want = last
				}
				if p != want {
					t.Fatalf("bound %d, problem %d: %v, want %v", n, i, p, want)
				}
			}
		}
	}
}

// sentinel fills a destination with something decoding would change.
func sentinel(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		if f := v.FieldByName("I"); f.IsValid() {
			f.SetInt(424242)
		}
		if f := v.FieldByName("Address"); f.IsValid() {
			f.SetString("sentinel")
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
	case reflect.Interface:
		v.Set(reflect.ValueOf("sentinel"))
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
	}
}

// hasDuplicateKey reports whether any object in data, however deep, has a
// key twice, or two that fold to the same field name, by encoding/json's
// own tokenizer.
func hasDuplicateKey(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // or 1e700 ends the tokens
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // the next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return false
		}
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.key {
			if s, ok := tok.(string); ok {
				s = string(appendFolded(nil, []byte(s)))
				if top.keys[s] {
					return true
				}
				top.keys[s] = true
				top.key = false
				continue
			}
		}
		if top != nil && top.obj {
			top.key = true // after this value, a key comes
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].obj {
				stack[len(stack)-1].key = true
			}
		}
	}
}
