package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Shapes like the callers': PUT /tunnels and the client's config.

type tunnel struct {
	HaProxyProxyProtocol        bool
	HaProxyProxyProtocolVersion int `json:",omitempty"`
	ListenAddress               string
	ListenHostnameGlob          string
	ListenPort                  int
	BackEndService              string
	ClientId                    string   `json:",omitempty"`
	ClientIds                   []string `json:",omitempty"`
}

type registration struct {
	ClientId      string
	PublicKey     string
	Socks5Enabled *bool `json:",omitempty"`
}

type serverConfig struct {
	DebugLog                   bool
	TunnelControlPort          int
	ManagementAddress          string
	Clients                    []registration
	ShutdownGracePeriodSeconds float64
	Socks5AllowPorts           []string
}

type clientConfig struct {
	ClientId              string
	ServiceToLocalAddrMap map[string]string
}

// want is a problem as a test states it.
type want struct {
	kind      Kind
	path      string
	line, col int
	msg       string // a part of the message
}

func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want an *Error, got %T %v", err, err)
	}
	return e.Problems
}

func expect(t *testing.T, err error, ws ...want) {
	t.Helper()
	ps := problemsOf(t, err)
	if len(ps) != len(ws) {
		t.Fatalf("%d problems, want %d:\n%v", len(ps), len(ws), err)
	}
	for i, w := range ws {
		p := ps[i]
		if p.Kind != w.kind || p.Path != w.path || p.Line != w.line || p.Column != w.col || !strings.Contains(p.Message, w.msg) {
			t.Errorf("problem %d: %+v\nwant %+v", i, p, w)
		}
	}
}

func TestEveryProblemWithPathAndPosition(t *testing.T) {
	body := `[
  {"ListenPort": 80, "ClientId": "a"},
  {"ListenPort": "443", "LISTENADDRESS": "0.0.0.0", "Extra": 1},
  {"ListenPort": 1, "ListenPort": 2, "ClientIds": ["a", 7]},
  {"ListenPrt": 22, "BackEndService": ["x"]}
]`
	var ts []tunnel
	expect(t, Unmarshal([]byte(body), &ts),
		want{KindType, "[1].ListenPort", 3, 18, "want an integer, got a string"},
		want{KindCase, "[1].LISTENADDRESS", 3, 25, `did you mean "ListenAddress"`},
		want{KindUnknown, "[1].Extra", 3, 53, `unknown field "Extra"`},
		want{KindDuplicate, "[2].ListenPort", 4, 21, `field "ListenPort" set twice: first at line 4, column 4`},
		want{KindType, "[2].ClientIds[1]", 4, 57, "want a string, got a number"},
		want{KindUnknown, "[3].ListenPrt", 5, 4, `did you mean "ListenPort"?`},
		want{KindType, "[3].BackEndService", 5, 39, "want a string, got an array"},
	)
	if ts != nil {
		t.Fatalf("destination changed: %v", ts)
	}
}

func TestPathNotation(t *testing.T) {
	cfg := "{\n\t\"Clients\": [{\"ClientId\": \"a\", \"PublicKey\": 1}],\n\t\"TunnelControlPort\": true\n}"
	var sc serverConfig
	expect(t, Unmarshal([]byte(cfg), &sc),
		want{KindType, "Clients[0].PublicKey", 2, 45, "want a string, got a number"},
		want{KindType, "TunnelControlPort", 3, 23, "want an integer, got a boolean"},
	)

	cc := `{"ServiceToLocalAddrMap": {"web": 9001, "a.b c": "x", "web": "y"}, "clientId": "x"}`
	var c clientConfig
	expect(t, Unmarshal([]byte(cc), &c),
		want{KindType, `ServiceToLocalAddrMap["web"]`, 1, 35, "want a string, got a number"},
		want{KindDuplicate, `ServiceToLocalAddrMap["web"]`, 1, 55, `duplicate key "web": first at line 1, column 28`},
		want{KindCase, "clientId", 1, 68, `did you mean "ClientId"`},
	)

	// A member whose name is no identifier is bracketed, escapes decoded.
	var m map[string]map[string]int
	expect(t, Unmarshal([]byte(`{"x\"y": {"\u00e9": "1"}}`), &m),
		want{KindType, `["x\"y"]["é"]`, 1, 21, "want an integer"})
	var s struct{ A []struct{ B int } }
	expect(t, Unmarshal([]byte(`{"A": [{}, {"B": {}}], "a.b": 1}`), &s),
		want{KindType, "A[1].B", 1, 18, "want an integer, got an object"},
		want{KindUnknown, `["a.b"]`, 1, 24, "unknown field"})
}

func TestSyntaxErrorKeepsEarlierProblems(t *testing.T) {
	body := "[\n {\"ListenPort\": \"x\"},\n {\"ListenPort\": 2 \"BackEndService\": \"b\"}\n]"
	var ts []tunnel
	err := Unmarshal([]byte(body), &ts)
	expect(t, err,
		want{KindType, "[0].ListenPort", 2, 17, "want an integer"},
		want{KindSyntax, "[1]", 3, 19, "want ',' or '}' after the object member (a comma is missing?)"},
	)
	if p := problemsOf(t, err)[1]; p.Offset != strings.Index(body, `"BackEndService"`) {
		t.Fatalf("offset %d", p.Offset)
	}
}

func TestSyntaxErrors(t *testing.T) {
	for _, c := range []struct {
		in        string
		line, col int
		msg       string
	}{
		{`{"a": 1,}`, 1, 9, "(a comma before the end is not allowed)"},
		{`[1, 2,]`, 1, 7, "(a comma before the end is not allowed)"},
		{`{'a': 1}`, 1, 2, "(strings take double quotes)"},
		{"{\n  // comment\n}", 2, 3, "(JSON has no comments)"},
		{`{"a": tru}`, 1, 10, "in literal true"},
		{`{"a" 1}`, 1, 6, "want ':' after the key"},
		{`{"a": 01}`, 1, 8, "want ',' or '}'"},
		{`{"a": -}`, 1, 8, "want a digit after '-'"},
		{`{"a": 1.}`, 1, 9, "want a digit after '.'"},
		{`{"a": 1e}`, 1, 9, "want a digit in the exponent"},
		{"{\"a\": \"x\ty\"}", 1, 9, "control characters must be escaped"},
		{`{"a": "\q"}`, 1, 9, "not an escape"},
		{`{"a": "\u12x4"}`, 1, 12, "want a hex digit"},
		{"{\"a\": [1,\n  2", 2, 4, "unexpected end of input: want ',' or ']'; the array at line 1, column 7 is not closed"},
		{`{"a": "open`, 1, 12, "in the string at line 1, column 7"},
		{`{"a"`, 1, 5, "want ':' after the key; the object at line 1, column 1 is not closed"},
		{`[nul`, 1, 5, `want "null"`},
		{"\xef\xbb\xbf{}", 1, 1, "byte 0xef: want a value (a byte order mark"},
	} {
		var v any
		err := Unmarshal([]byte(c.in), &v)
		ps := problemsOf(t, err)
		p := ps[len(ps)-1]
		if p.Kind != KindSyntax || p.Line != c.line || p.Column != c.col || !strings.Contains(p.Message, c.msg) {
			t.Errorf("%q: %v\nwant line %d, column %d, %q", c.in, err, c.line, c.col, c.msg)
		}
		if json.Valid([]byte(c.in)) {
			t.Errorf("%q is valid to encoding/json", c.in)
		}
	}
}

func TestEmptyAndTrailing(t *testing.T) {
	var v tunnel
	expect(t, Unmarshal(nil, &v), want{KindEmpty, "", 1, 1, "empty input"})
	expect(t, Unmarshal([]byte(" \n\t"), &v), want{KindEmpty, "", 2, 2, "only white space"})
	expect(t, Unmarshal([]byte(`{} {}`), &v), want{KindTrailing, "", 1, 4, "only one value"})
	expect(t, Unmarshal([]byte("{\"ListenPort\": \"1\"}\n]"), &v),
		want{KindType, "ListenPort", 1, 16, "want an integer"},
		want{KindTrailing, "", 2, 1, "unexpected ']' after the JSON value"})
	if err := Unmarshal([]byte(" \r\n{}\r\n "), &v); err != nil {
		t.Fatalf("white space around the value: %v", err)
	}
}

func TestLineAndColumn(t *testing.T) {
	in := "{\r\n\t\"a\": 1,\r\n\t\"b\": \"é\", \"c\": 3\r\n}"
	var v struct{ A, C int }
	ps := problemsOf(t, Unmarshal([]byte(in), &v))
	// "b" is unknown (line 3, after a tab); "c" comes after a two-byte é.
	if ps[1].Line != 3 || ps[1].Column != 2 || ps[2].Kind != KindCase || ps[2].Line != 3 || ps[2].Column != 13 {
		t.Fatalf("%v", &Error{Problems: ps})
	}
	for _, p := range ps {
		if in[p.Offset] != '"' {
			t.Fatalf("offset %d points at %q", p.Offset, in[p.Offset])
		}
	}
}

func TestBound(t *testing.T) {
	body := "[" + strings.Repeat(`"",`, 99) + `""]`
	var ts []tunnel
	err := Unmarshal([]byte(body), &ts)
	var e *Error
	if !errors.As(err, &e) || len(e.Problems) != DefaultMaxProblems || e.More != 100-DefaultMaxProblems {
		t.Fatalf("%d listed, %d more", len(e.Problems), e.More)
	}
	if e.Problems[19].Path != "[19]" || !strings.HasSuffix(err.Error(), "\n\tand 80 more") ||
		!strings.HasPrefix(err.Error(), "100 problems in JSON:\n\tline 1, column 2 (offset 1): [0]: want an object, got a string\n") {
		t.Fatalf("%v", err)
	}

	err = Options{MaxProblems: 3}.Unmarshal([]byte(body), &ts)
	if !errors.As(err, &e) || len(e.Problems) != 3 || e.More != 97 {
		t.Fatalf("%v", err)
	}

	// A syntax error after the bound is still shown, in the last place.
	err = Options{MaxProblems: 3}.Unmarshal([]byte(body[:len(body)-1]), &ts)
	if !errors.As(err, &e) || len(e.Problems) != 3 || e.More != 98 || e.Problems[2].Kind != KindSyntax || e.Problems[1].Path != "[1]" {
		t.Fatalf("%v", err)
	}
}

func TestDestinationUnchangedOrReplaced(t *testing.T) {
	ts := []tunnel{{ListenPort: 1}}
	if err := Unmarshal([]byte(`[{"ListenPort": 2}, {"ListenPort": 3, "x": 1}]`), &ts); err == nil {
		t.Fatal("accepted an unknown field")
	}
	if !reflect.DeepEqual(ts, []tunnel{{ListenPort: 1}}) {
		t.Fatalf("changed on error: %+v", ts)
	}
	m := map[string]string{"old": "1"}
	if err := Unmarshal([]byte(`{"new": "2", "new": "3"}`), &m); err == nil || len(m) != 1 || m["old"] != "1" {
		t.Fatalf("%v %v", err, m)
	}
	// On success the value is replaced, not merged into.
	if err := Unmarshal([]byte(`{"new": "2"}`), &m); err != nil || !reflect.DeepEqual(m, map[string]string{"new": "2"}) {
		t.Fatalf("%v %v", err, m)
	}
	c := clientConfig{ClientId: "kept?"}
	if err := Unmarshal([]byte(`{"ServiceToLocalAddrMap": {}}`), &c); err != nil || c.ClientId != "" || c.ServiceToLocalAddrMap == nil {
		t.Fatalf("%v %+v", err, c)
	}
}

type textKey string

func (k *textKey) UnmarshalText(b []byte) error {
	if strings.ToLower(string(b)) != string(b) {
		return fmt.Errorf("key %q is not lower case", b)
	}
	*k = textKey(b)
	return nil
}

type Base struct {
	ID   int `json:"id"`
	Name string
}

type Extra struct{ Note string }

type all struct {
	Base
	*Extra
	Name      string // hides Base.Name
	Renamed   int    `json:"renamed,omitempty"`
	Ignored   int    `json:"-"`
	Dash      int    `json:"-,"`
	Count     int64  `json:",string"`
	Ratio     float32
	Small     int8
	Flag      *bool
	Ptr       **string
	List      []uint16
	Pair      [2]string
	Bytes     []byte
	ByName    map[string][]int
	ByNum     map[int]string
	ByText    map[textKey]bool
	Anything  any
	Number    json.Number
	Raw       json.RawMessage
	Addr      netip.Addr
	When      time.Time
	Duration  time.Duration
	Nested    struct{ Deep []map[string]*Base }
	Interface fmt.Stringer
	unexp     int
}

func TestEncodingJSONSemantics(t *testing.T) {
	in := `{
  "id": 7, "Name": "outer", "Note": "n", "renamed": 3, "-": 4, "Count": "12",
  "Ratio": 0.5, "Small": -128, "Flag": true, "Ptr": "p", "List": [1, 65535],
  "Pair": ["a", "b"], "Bytes": "aGk=", "ByName": {"x": [1, 2]}, "ByNum": {"-3": "m"},
  "ByText": {"k": true}, "Anything": {"a": [1, "b", null, true, {"c": 1.5}]},
  "Number": 1e3, "Raw": {"keep": [1, 2]}, "Addr": "192.0.2.1",
  "When": "2026-05-01T10:00:00Z", "Duration": 1500,
  "Nested": {"Deep": [{"a": {"id": 1}, "b": null}]}, "Interface": null
}`
	var got, ref all
	if err := Unmarshal([]byte(in), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(in), &ref); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ref) {
		t.Fatalf("differs from encoding/json:\n%+v\n%+v", got, ref)
	}
	if got.Name != "outer" || got.Base.Name != "" || got.Extra.Note != "n" || got.Dash != 4 || got.Count != 12 || **got.Ptr != "p" || string(got.Bytes) != "hi" {
		t.Fatalf("%+v", got)
	}

	var v all
	expect(t, Unmarshal([]byte(`{"Ignored": 1, "Small": 128, "Count": 12, "Bytes": "!", "ByNum": {"x": ""},
"ByText": {"K": true}, "Number": "1.2.3", "Addr": "nope", "When": "yesterday", "List": [-1],
"Pair": ["a", "b", "c"], "Interface": "s", "unexp": 1, "Anything": 1e999, "Ratio": 1e39}`), &v),
		want{KindUnknown, "Ignored", 1, 2, `unknown field "Ignored"`},
		want{KindType, "Small", 1, 25, "128 is out of range (-128 to 127)"},
		want{KindType, "Count", 1, 39, `want a string holding an integer (the field has the ",string" option), got a number`},
		want{KindValue, "Bytes", 1, 52, "want base64"},
		want{KindType, `ByNum["x"]`, 1, 67, `want an integer key, got "x"`},
		want{KindValue, `ByText["K"]`, 2, 12, `key "K" is not lower case`},
		want{KindValue, "Number", 2, 34, "want a number in the string"},
		want{KindValue, "Addr", 2, 51, "ParseAddr"},
		want{KindValue, "When", 2, 67, "cannot parse"},
		want{KindType, "List[0]", 2, 89, "-1 is out of range (0 to 65535)"},
		want{KindUnknown, "Pair[2]", 3, 20, "too many elements: the array holds 2"},
		want{KindType, "Interface", 3, 39, "cannot be decoded"},
		want{KindUnknown, "unexp", 3, 44, "unknown field"},
		want{KindType, "Anything", 3, 68, "number 1e999 is out of range"},
		want{KindType, "Ratio", 3, 84, "number 1e39 is out of range"},
	)
}

func TestStringOption(t *testing.T) {
	type q struct {
		N int     `json:",string"`
		F float64 `json:",string"`
		B *bool   `json:",string"`
		S string  `json:",string"`
	}
	var v q
	if err := Unmarshal([]byte(`{"N": "-4", "F": "2.5", "B": "true", "S": "\"x\""}`), &v); err != nil || v.N != -4 || v.F != 2.5 || !*v.B || v.S != "x" {
		t.Fatalf("%v %+v", err, v)
	}
	if err := Unmarshal([]byte(`{"B": null}`), &v); err != nil || v.B != nil {
		t.Fatalf("%v %+v", err, v)
	}
	expect(t, Unmarshal([]byte(`{"N": "x", "F": "", "B": "yes", "S": "x"}`), &v),
		want{KindType, "N", 1, 7, `want a string holding an integer (the field has the ",string" option), got "x"`},
		want{KindType, "F", 1, 17, "got an empty string"},
		want{KindType, "B", 1, 26, `got "yes"`},
		want{KindType, "S", 1, 38, `want a string holding a string`},
	)
}

func TestEmbeddedPointerToUnexported(t *testing.T) {
	type inner struct{ X int }
	type outer struct{ *inner }
	var v outer
	expect(t, Unmarshal([]byte(`{"X": 1}`), &v), want{KindType, "X", 1, 2, "embedded pointer to an unexported struct"})
	if err := json.Unmarshal([]byte(`{"X": 1}`), &v); err == nil {
		t.Fatal("encoding/json accepts it now: drop the problem")
	}
}

func TestAmbiguousEmbeddedFieldIsUnknown(t *testing.T) {
	type A struct{ X int }
	type B struct{ X int }
	type both struct {
		A
		B
	}
	var v both
	expect(t, Unmarshal([]byte(`{"X": 1}`), &v), want{KindUnknown, "X", 1, 2, "this object takes no fields"})
}

func TestNull(t *testing.T) {
	// null is no type error anywhere, as in encoding/json.
	var v all
	in := `{"id": null, "Flag": null, "List": null, "ByName": null, "Anything": null, "Addr": null, "When": null, "Interface": null, "Pair": [null, null]}`
	if err := Unmarshal([]byte(in), &v); err != nil {
		t.Fatal(err)
	}
	var p *int
	if err := Unmarshal([]byte(`null`), &p); err != nil || p != nil {
		t.Fatal(err, p)
	}
}

func TestDepth(t *testing.T) {
	var v any
	ok := strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)
	if err := Unmarshal([]byte(ok), &v); err != nil {
		t.Fatal(err)
	}
	deep := "[" + ok + "]"
	// A deep path shows its two ends.
	path := strings.Repeat("[0]", 8) + "...(9984 more)..." + strings.Repeat("[0]", 8)
	expect(t, Unmarshal([]byte(deep), &v), want{KindSyntax, path, 1, maxDepth + 1, "nested too deeply"})
	if json.Valid([]byte(deep)) {
		t.Fatal("encoding/json takes deeper nesting now")
	}
}

func TestInvalidDestination(t *testing.T) {
	var ie *json.InvalidUnmarshalError
	var v tunnel
	if err := Unmarshal([]byte(`{}`), v); !errors.As(err, &ie) {
		t.Fatalf("non-pointer: %v", err)
	}
	if err := Unmarshal([]byte(`{}`), nil); !errors.As(err, &ie) {
		t.Fatalf("nil: %v", err)
	}
	if err := Unmarshal([]byte(`{}`), (*tunnel)(nil)); !errors.As(err, &ie) {
		t.Fatalf("nil pointer: %v", err)
	}
}

type failingReader struct{}

var errBroken = errors.New("broken")

func (failingReader) Read([]byte) (int, error) { return 0, errBroken }

func TestDecodeReader(t *testing.T) {
	var reg registration
	if err := Decode(strings.NewReader(`{"ClientId": "a", "PublicKey": "k", "Socks5Enabled": false}`), &reg); err != nil || reg.ClientId != "a" || *reg.Socks5Enabled {
		t.Fatalf("%v %+v", err, reg)
	}
	if err := Decode(failingReader{}, &reg); !errors.Is(err, errBroken) {
		t.Fatalf("%v", err)
	}
	// Through http.MaxBytesReader the caller still tells "too large".
	rec := httptest.NewRecorder()
	r := http.MaxBytesReader(rec, io.NopCloser(strings.NewReader(`{"ClientId": "`+strings.Repeat("a", 100)+`"}`)), 64)
	var tooBig *http.MaxBytesError
	if err := (Options{MaxProblems: 5}).Decode(r, &reg); !errors.As(err, &tooBig) {
		t.Fatalf("%v", err)
	}
}

func TestErrorText(t *testing.T) {
	var ts []tunnel
	err := Unmarshal([]byte(`[{"ListenPort": "80"}]`), &ts)
	if got := err.Error(); got != `line 1, column 17 (offset 16): [0].ListenPort: want an integer, got a string` {
		t.Fatalf("%q", got)
	}
	err = Unmarshal([]byte(`"x"`), &ts)
	if got := err.Error(); got != `line 1, column 1 (offset 0): want an array, got a string` {
		t.Fatalf("%q", got)
	}
	// The structured problems are ready to be sent as an API's list.
	var e *Error
	errors.As(Unmarshal([]byte(`{"a":1,"a":2}`), new(map[string]int)), &e)
	out, _ := json.Marshal(e.Problems)
	if string(out) != `[{"Kind":"duplicate","Path":"[\"a\"]","Line":1,"Column":8,"Offset":7,"Message":"duplicate key \"a\": first at line 1, column 2"}]` {
		t.Fatalf("%s", out)
	}
}

func TestNumbersAtTheLimits(t *testing.T) {
	var v struct {
		I  int64
		U  uint64
		F  float64
		F3 float32
	}
	ok := fmt.Sprintf(`{"I": %d, "U": %d, "F": %g, "F3": %g}`, int64(math.MinInt64), uint64(math.MaxUint64), math.MaxFloat64, math.MaxFloat32)
	if err := Unmarshal([]byte(ok), &v); err != nil {
		t.Fatal(err)
	}
	expect(t, Unmarshal([]byte(`{"I": 9223372036854775808, "U": 18446744073709551616, "F": 1.5e308e}`), &v),
		want{KindType, "I", 1, 7, "out of range (-9223372036854775808 to 9223372036854775807)"},
		want{KindType, "U", 1, 33, "out of range (0 to 18446744073709551615)"},
		want{KindSyntax, "", 1, 67, "want ',' or '}'"},
	)
	expect(t, Unmarshal([]byte(`{"I": 1.0, "U": -0}`), &v),
		want{KindType, "I", 1, 7, "want an integer, got a number"},
		want{KindType, "U", 1, 17, "want a non-negative integer, got a number"},
	)
}

func TestUnquoteMatchesEncodingJSON(t *testing.T) {
	for _, lit := range []string{
		`""`, `"plain"`, `"\ud83d\ude00"`, `"\ud800"`, `"\ud800x"`, `"\udc00"`, `"\ud800\u0041"`,
		`"\ud800\udbff"`, `"\uD83D\uDE00"`, "\"\xff\xfe\"", "\"\xe2\x82\"", `"\b\f\n\r\t\/\\\""`,
		`"\u00e9\u00C9"`, `"tab\u0009"`, "\"é\"",
	} {
		var want string
		if err := json.Unmarshal([]byte(lit), &want); err != nil {
			t.Fatalf("%s: %v", lit, err)
		}
		got, ok := unquote([]byte(lit), nil)
		if !ok || string(got) != want {
			t.Errorf("%s: %q, want %q", lit, got, want)
		}
		// As a key, too: matched as encoding/json matches it.
		var m map[string]int
		if err := Unmarshal([]byte(`{`+lit+`: 1}`), &m); err != nil || m[want] != 1 {
			t.Errorf("%s as a key: %v %v", lit, err, m)
		}
	}
	for _, bad := range []string{`"`, `x`, `"\"`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"a\nb\"", `"a"b"`} {
		if _, ok := unquote([]byte(bad), nil); ok {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// FuzzUnquote checks string decoding, which keys and the ",string" option
// rely on, against encoding/json's.
func FuzzUnquote(f *testing.F) {
	for _, s := range []string{`"a"`, `"\ud83d\ude00"`, `"\ud800\ud800"`, "\"\xff\"", `"\u0000"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, lit []byte) {
		var want string
		jerr := json.Unmarshal(lit, &want)
		lit = bytes.Trim(lit, " \t\r\n") // encoding/json takes white space around
		got, ok := unquote(lit, nil)
		if jerr == nil && (!ok || string(got) != want) {
			t.Fatalf("%q: %q %v, want %q", lit, got, ok, want)
		}
	})
}

// flaky passes the walk's call and fails encoding/json's: the walk cannot
// see that coming, so Unmarshal must report the failure, not decode half.
type flaky struct{ N int }

var flakyCalls int

func (f *flaky) UnmarshalJSON(b []byte) error {
	flakyCalls++
	if flakyCalls%2 == 0 {
		return &json.UnmarshalTypeError{Value: "number", Type: reflect.TypeFor[flaky](), Offset: 9, Field: "F"}
	}
	return nil
}

func TestFailureAfterTheWalk(t *testing.T) {
	v := struct{ F flaky }{F: flaky{N: 1}}
	err := Unmarshal([]byte("{\n\"F\": 12345}"), &v)
	expect(t, err, want{KindType, "F.F", 2, 8, "cannot unmarshal number"})
	if v.F.N != 1 {
		t.Fatal("changed")
	}
}

// jsonKey has both methods: as a map key, encoding/json calls
// UnmarshalJSON with the quoted key.
type jsonKey string

func (k *jsonKey) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' {
		return errors.New("want a quoted key")
	}
	if string(b) == `"bad"` {
		return errors.New("bad key")
	}
	*k = jsonKey(b[1 : len(b)-1])
	return nil
}

func (k *jsonKey) UnmarshalText(b []byte) error { return errors.New("not to be called") }

func TestMapKeyMethods(t *testing.T) {
	var m map[jsonKey]int
	if err := Unmarshal([]byte(`{"a": 1}`), &m); err != nil || m["a"] != 1 {
		t.Fatal(err, m)
	}
	expect(t, Unmarshal([]byte(`{"a": 1, "bad": 2}`), &m), want{KindValue, `["bad"]`, 1, 10, "bad key"})
	var bad map[[2]int]int
	expect(t, Unmarshal([]byte(`{"a": 1}`), &bad), want{KindType, "", 1, 1, "cannot be decoded), got an object"})
}

func TestLiteralEdges(t *testing.T) {
	var v struct {
		Addr netip.Addr
		F    float64 `json:",string"`
		B    *bool   `json:",string"`
		I    fmt.Stringer
		Ok   bool
	}
	expect(t, Unmarshal([]byte(`{"Addr": {}, "F": "1x", "B": "nul", "I": 5, "Ok": false}`), &v),
		want{KindType, "Addr", 1, 10, "want a string, got an object"},
		want{KindType, "F", 1, 19, `want a string holding a number (the field has the ",string" option), got "1x"`},
		want{KindType, "B", 1, 30, `got "nul"`},
		want{KindType, "I", 1, 42, "cannot be decoded), got a number"},
	)
	expect(t, Unmarshal([]byte(`{"Addr": 1, "Ok": "`+strings.Repeat("x", 50)+`"}`), &v),
		want{KindType, "Addr", 1, 10, "want a string, got a number"},
		want{KindType, "Ok", 1, 19, "want true or false, got a string"},
	)
}

// Embedding layouts, checked against encoding/json by the fuzz test's
// properties.
type (
	EmA   struct{ X, A int }
	EmB   struct{ X, B int }
	EmC   struct{ C int }
	EmTag struct {
		X int `json:"X"`
	}
	EmTwoC struct {
		EmA
		EmC
	}
	EmTwoC2 struct {
		EmB
		EmC
	}
	EmCycle struct {
		*EmCycle
		Z int
	}
	emUnexp  int
	embedAll struct {
		EmTwoC  // C at depth 2 ...
		EmTwoC2 // ... twice: it cancels out
		EmTag   // a tagged X beats the untagged ones at the same depth
		EmCycle
		emUnexp     // an unexported non-struct: ignored
		Bad     int `json:"a\"b"` // an unusable tag name: the Go name counts
		Uni     int `json:"ünï"`
	}
)

func TestEmbeddingRulesAgree(t *testing.T) {
	typ := reflect.TypeFor[embedAll]()
	for _, in := range []string{
		`{"X": 1}`, `{"A": 1, "B": 2, "C": 3}`, `{"Z": 4}`, `{"EmCycle": {}}`, `{"emUnexp": 1}`,
		`{"Bad": 1}`, `{"a\"b": 1}`, `{"ünï": 1}`, `{"ÜNÏ": 1}`, `{"x": 1}`,
	} {
		agree(t, typ, []byte(in))
	}
	var v embedAll
	if err := Unmarshal([]byte(`{"X": 1, "A": 2, "Z": 3, "Bad": 4, "ünï": 5}`), &v); err != nil || v.EmTag.X != 1 || v.EmTwoC.EmA.A != 2 || v.Z != 3 || v.Bad != 4 {
		t.Fatal(err, v)
	}
	expect(t, Unmarshal([]byte(`{"C": 1, "ÜNÏ": 2}`), &v),
		want{KindUnknown, "C", 1, 2, "unknown field"},
		want{KindCase, `["ÜNÏ"]`, 1, 10, `did you mean "ünï"?`})
}

// Whatever the input holds, an answer of 20 problems stays small: long
// keys, literals and messages are cut short.
func TestLongInputsGiveShortAnswers(t *testing.T) {
	long := strings.Repeat("é", 100_000)
	esc := strings.Repeat(`\u00e9`, 50_000)
	var v struct {
		Addr netip.Addr
		N    int
		M    map[string]int
	}
	in := `{"` + long + `": 1, "` + esc + `": 2, "Addr": "` + long + `", "N": ` + strings.Repeat("9", 100_000) +
		`, "M": {"` + long + `": "x"}}`
	err := Unmarshal([]byte(in), &v)
	ps := problemsOf(t, err)
	if len(ps) != 5 || len(err.Error()) > 2000 {
		t.Fatalf("%d problems, %d bytes: %.3000s", len(ps), len(err.Error()), err)
	}
	short := `"` + strings.Repeat("é", 32) + `..."`
	if !strings.HasPrefix(ps[0].Message, "unknown field "+short) || ps[0].Path != `[`+short+`]` || ps[4].Path != `M[`+short+`]` {
		t.Fatalf("%v", err)
	}
}
