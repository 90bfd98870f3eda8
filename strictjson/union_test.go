package strictjson

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// target is the coming ServiceToLocalAddrMap value: "host:port", or an
// object. It declares its shapes (the Shaper seam) and decodes with plain
// encoding/json, as it may: the walk has checked the input by then.
type target struct {
	Address       string
	ProxyProtocol int
}

func (t *target) UnmarshalJSON(b []byte) error {
	type plain target
	var p plain
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &p.Address); err != nil {
			return err
		}
	} else if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if p.ProxyProtocol < 0 || p.ProxyProtocol > 2 {
		return errors.New("ProxyProtocol must be 0 (none), 1 or 2")
	}
	*t = target(p)
	return nil
}

func (target) JSONShapes() []any { return []any{"", target{}} }

// helperTarget is the same union through the other seam: its
// UnmarshalJSON calls Unmarshal on its raw bytes, and the walk moves the
// problems it returns to their place in the whole input.
type helperTarget struct {
	Address       string
	ProxyProtocol int
}

func (t *helperTarget) UnmarshalJSON(b []byte) error {
	type plain helperTarget
	var p plain
	if len(b) > 0 && b[0] == '"' {
		if err := Unmarshal(b, &p.Address); err != nil {
			return err
		}
	} else if err := Unmarshal(b, &p); err != nil {
		return err
	}
	if p.ProxyProtocol < 0 || p.ProxyProtocol > 2 {
		return errors.New("ProxyProtocol must be 0 (none), 1 or 2")
	}
	*t = helperTarget(p)
	return nil
}

const unionConfig = `{
  "ClientId": "home",
  "ServiceToLocalAddrMap": {
    "web": "127.0.0.1:9001",
    "mail": { "Address": "127.0.0.1:25", "ProxyProtocol": 2 },
    "db": { "address": "127.0.0.1:5432", "Proxy": 1 },
    "ssh": 22,
    "imap": { "Address": "127.0.0.1:143", "ProxyProtocol": 3 },
    "pop": { "Address": 110 }
  }
}`

func TestUnionShapes(t *testing.T) {
	type config struct {
		ClientId              string
		ServiceToLocalAddrMap map[string]target
	}
	var c config
	expect(t, Unmarshal([]byte(unionConfig), &c),
		want{KindCase, `ServiceToLocalAddrMap["db"].address`, 6, 13, `did you mean "Address"?`},
		want{KindUnknown, `ServiceToLocalAddrMap["db"].Proxy`, 6, 42, "the fields are Address, ProxyProtocol"},
		want{KindType, `ServiceToLocalAddrMap["ssh"]`, 7, 12, "want a string or an object, got a number"},
		want{KindValue, `ServiceToLocalAddrMap["imap"]`, 8, 13, "ProxyProtocol must be 0 (none), 1 or 2"},
		want{KindType, `ServiceToLocalAddrMap["pop"].Address`, 9, 25, "want a string, got a number"},
	)
	if c.ServiceToLocalAddrMap != nil {
		t.Fatal("destination changed")
	}

	good := `{"ServiceToLocalAddrMap": {"web": "127.0.0.1:9001", "mail": {"Address": "127.0.0.1:25", "ProxyProtocol": 2}, "off": null}}`
	if err := Unmarshal([]byte(good), &c); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.ServiceToLocalAddrMap, map[string]target{
		"web": {Address: "127.0.0.1:9001"}, "mail": {Address: "127.0.0.1:25", ProxyProtocol: 2}, "off": {},
	}) {
		t.Fatalf("%+v", c.ServiceToLocalAddrMap)
	}
	// A union at the top, and through a pointer.
	var pt *target
	if err := Unmarshal([]byte(`"a:1"`), &pt); err != nil || pt.Address != "a:1" {
		t.Fatal(err, pt)
	}
	expect(t, Unmarshal([]byte(`[1]`), &pt), want{KindType, "", 1, 1, "want a string or an object, got an array"})
}

func TestUnionHelper(t *testing.T) {
	type config struct {
		ClientId              string
		ServiceToLocalAddrMap map[string]helperTarget
	}
	var c config
	expect(t, Unmarshal([]byte(unionConfig), &c),
		want{KindCase, `ServiceToLocalAddrMap["db"].address`, 6, 13, `did you mean "Address"?`},
		want{KindUnknown, `ServiceToLocalAddrMap["db"].Proxy`, 6, 42, "the fields are Address, ProxyProtocol"},
		want{KindType, `ServiceToLocalAddrMap["ssh"]`, 7, 12, "want an object, got a number"},
		want{KindValue, `ServiceToLocalAddrMap["imap"]`, 8, 13, "ProxyProtocol must be 0 (none), 1 or 2"},
		want{KindType, `ServiceToLocalAddrMap["pop"].Address`, 9, 25, "want a string, got a number"},
	)
	good := `{"ServiceToLocalAddrMap": {"web": "127.0.0.1:9001", "mail": {"Address": "127.0.0.1:25", "ProxyProtocol": 2}}}`
	if err := Unmarshal([]byte(good), &c); err != nil || c.ServiceToLocalAddrMap["mail"].ProxyProtocol != 2 {
		t.Fatal(err, c)
	}
}

// A type with UnmarshalJSON and no shapes is checked by what it returns.
type celsius float64

func (c *celsius) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	if f < -273.15 {
		return errors.New("below absolute zero")
	}
	*c = celsius(f)
	return nil
}

func TestUnmarshalerWithoutShapes(t *testing.T) {
	var v struct{ Temps []celsius }
	expect(t, Unmarshal([]byte(`{"Temps": [20, -300, "x"]}`), &v),
		want{KindValue, "Temps[1]", 1, 16, "below absolute zero"},
		want{KindValue, "Temps[2]", 1, 22, "cannot unmarshal string"},
	)
	if err := Unmarshal([]byte(`{"Temps": [20, -3]}`), &v); err != nil || v.Temps[1] != -3 {
		t.Fatal(err, v)
	}
}
