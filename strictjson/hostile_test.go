package strictjson

import (
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

// hostileEntries is the red-team body of issue 15: 340,000 bad entries in
// about 1 MB (within the API's 1 MiB limit), each one a problem.
const hostileEntries = 340_000

func hostileBodies() []struct{ name, body string } {
	list := func(entry string, n int) string {
		if n == 0 { // as many as fit in 1 MiB
			n = (1<<20 - 1) / (len(entry) + 1)
		}
		return "[" + strings.TrimSuffix(strings.Repeat(entry+",", n), ",") + "]"
	}
	return []struct{ name, body string }{
		// A string where a tunnel object goes: 3 bytes an entry.
		{"type", list(`""`, hostileEntries)},
		// An unknown field in every entry.
		{"unknown", list(`{"x":1}`, 0)},
		// A duplicate key in every entry.
		{"duplicate", list(`{"ListenPort":1,"ListenPort":1}`, 0)},
		// A case-folded name in every entry.
		{"case", list(`{"listenport":1}`, 0)},
	}
}

func TestHostileBodyGetsASmallAnswer(t *testing.T) {
	for _, h := range hostileBodies() {
		if len(h.body) > 1<<20 {
			t.Fatalf("%s: %d bytes, over the API's limit", h.name, len(h.body))
		}
		var ts []tunnel
		err := Unmarshal([]byte(h.body), &ts)
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: %v", h.name, err)
		}
		entries := strings.Count(h.body, ",") + 1
		if h.name == "duplicate" {
			entries /= 2
		}
		if len(e.Problems) != DefaultMaxProblems || len(e.Problems)+e.More != entries {
			t.Fatalf("%s: %d listed + %d more, want %d", h.name, len(e.Problems), e.More, entries)
		}
		if n := len(err.Error()); n > 4096 {
			t.Fatalf("%s: the answer is %d bytes", h.name, n)
		}
		if h.name == "type" && e.More != hostileEntries-DefaultMaxProblems {
			t.Fatalf("%d more", e.More)
		}
	}
}

// BenchmarkHostileBody measures the answer to the red-team bodies: the old
// path answered the 340,000-entry body with 86 MB in 4.4 s. Targets for one
// decode: under 50 ms, under 1 MB allocated, an answer under 4 KB. For
// comparison, encoding/json (which stops at the first problem) on the same
// body.
func BenchmarkHostileBody(b *testing.B) {
	const (
		maxTime  = 50 * time.Millisecond
		maxAlloc = 1 << 20
		maxReply = 4096
	)
	for _, h := range hostileBodies() {
		data := []byte(h.body)
		b.Run(h.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			var reply int
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			for b.Loop() {
				var ts []tunnel
				reply = len(Unmarshal(data, &ts).Error())
			}
			elapsed := time.Since(start) / time.Duration(b.N)
			runtime.ReadMemStats(&after)
			alloc := (after.TotalAlloc - before.TotalAlloc) / uint64(b.N)
			b.ReportMetric(float64(reply), "reply-bytes")
			verdict := "PASS"
			if elapsed > maxTime || alloc > maxAlloc || reply > maxReply {
				verdict = "MISS"
			}
			b.Logf("%s: %d bytes in, %d-byte reply, %.2f ms, %d bytes allocated per decode (targets %v, %d, %d): %s",
				h.name, len(data), reply, float64(elapsed)/1e6, alloc, maxTime, maxAlloc, maxReply, verdict)
		})
		b.Run(h.name+"/encoding-json", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				var ts []tunnel
				dec := json.NewDecoder(strings.NewReader(h.body))
				dec.DisallowUnknownFields()
				_ = dec.Decode(&ts)
			}
		})
	}
}

// BenchmarkValidConfig is the common case: a small valid config.
func BenchmarkValidConfig(b *testing.B) {
	data := []byte(`{"DebugLog": false, "TunnelControlPort": 9056, "ManagementAddress": "127.0.0.1",
"Clients": [{"ClientId": "TestClient1", "PublicKey": "tT4ERdFTeX5517bP9/6Ixbvi7WoLaZVhSFfyfb2Z2m4="}],
"ShutdownGracePeriodSeconds": 10, "Socks5AllowPorts": ["25", "465", "587"]}`)
	b.Run("strictjson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var c serverConfig
			if err := Unmarshal(data, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var c serverConfig
			if err := json.Unmarshal(data, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// MaxElements refuses the red-team body of empty objects, which has no
// other problem, without decoding it: one problem, and no allocation per
// element.
func TestMaxElements(t *testing.T) {
	body := []byte("[" + strings.TrimSuffix(strings.Repeat("{},", hostileEntries), ",") + "]")
	var ts []tunnel
	opts := Options{MaxElements: 1000}
	expect(t, opts.Unmarshal(body, &ts), want{KindLimit, "", 1, 1, "more than 1000 elements: at most 1000 are allowed"})
	if ts != nil {
		t.Fatal("destination changed")
	}
	allocs := testing.AllocsPerRun(3, func() { opts.Unmarshal(body, &ts) })
	if allocs > 100 {
		t.Errorf("%.0f allocations for a refused body of %d elements", allocs, hostileEntries)
	}
	// Nested arrays are bounded too, and the limit is listed even when
	// the list is full; elements past it are still checked for syntax.
	var c struct{ Clients []registration }
	in := `{"Clients": [` + strings.Repeat(`{"x":1},`, 30) + `{}]}`
	err := Options{MaxElements: 25}.Unmarshal([]byte(in), &c)
	ps := problemsOf(t, err)
	if last := ps[len(ps)-1]; last.Kind != KindLimit || last.Path != "Clients" || len(ps) != DefaultMaxProblems {
		t.Fatalf("%v", err)
	}
	expect(t, Options{MaxElements: 2}.Unmarshal([]byte(`[{}, {}, {}, {"ListenPort": ]`), &ts),
		want{KindLimit, "", 1, 1, "at most 2"}, want{KindSyntax, "[3].ListenPort", 1, 29, "want a value"})
	if err := (Options{MaxElements: 3}).Unmarshal([]byte(`[{}, {}, {}]`), &ts); err != nil || len(ts) != 3 {
		t.Fatal(err, ts)
	}
}
