package forward

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// admission bounds how many of something (live connections, peeks,
// handshakes) are held at once, in all and per key (a source network, a
// client), so that a flood from a few sources cannot take what everyone
// else needs. Limits of 0 bound nothing.
type admission[K comparable] struct {
	max, perKey int

	mu    sync.Mutex
	total int
	byKey map[K]int
}

// Why admission refused.
const (
	admitted = iota
	overTotal
	overKey
)

// acquire takes a slot for k, or says which limit is full. Every
// admitted acquire must be followed by one release with the same key.
func (a *admission[K]) acquire(k K) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max > 0 && a.total >= a.max {
		return overTotal
	}
	n := a.byKey[k]
	if a.perKey > 0 && n >= a.perKey {
		return overKey
	}
	if a.byKey == nil {
		a.byKey = make(map[K]int)
	}
	a.total++
	a.byKey[k] = n + 1
	return admitted
}

func (a *admission[K]) release(k K) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if n := a.byKey[k] - 1; n > 0 {
		a.byKey[k] = n
	} else {
		delete(a.byKey, k) // the map holds only keys in use
	}
}

// held reports the slots in use, in all and for k.
func (a *admission[K]) held(k K) (total, forKey int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total, a.byKey[k]
}

// sourceKey is the network a public connection counts against: its IPv4
// address, or the /64 of its IPv6 address (one host usually holds a
// whole /64, and could otherwise take a fresh address for every
// connection). The zero Prefix for a connection without an address.
func sourceKey(a net.Addr) netip.Prefix {
	ap := addrPortOf(a)
	addr := ap.Addr().WithZone("").Unmap()
	if !addr.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, _ := addr.Prefix(bits)
	return p
}

// refuse drops a connection that was not admitted at once: with a reset
// (linger 0), so that a flood leaves no TIME-WAIT state behind.
func refuse(c net.Conn) {
	if tc, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// throttle rate-limits a log line that anyone on the internet can cause
// (garbage connections, failed peeks, refused floods): a burst, then one
// line per interval; what it suppressed is counted and reported with the
// next line it lets through.
type throttle struct {
	burst    int
	interval time.Duration

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
	started    bool
}

// Defaults for a throttle: 10 lines at once, then one every 10 s.
const (
	throttleBurst    = 10
	throttleInterval = 10 * time.Second
)

func newThrottle() *throttle { return &throttle{burst: throttleBurst, interval: throttleInterval} }

// allow reports whether a line may be written now, and how many were
// suppressed since the last one written.
func (t *throttle) allow(now time.Time) (bool, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started {
		t.started, t.tokens, t.last = true, float64(t.burst), now
	}
	if d := now.Sub(t.last); d > 0 {
		t.tokens = min(float64(t.burst), t.tokens+d.Seconds()/t.interval.Seconds())
		t.last = now
	}
	if t.tokens < 1 {
		t.suppressed++
		return false, 0
	}
	t.tokens--
	n := t.suppressed
	t.suppressed = 0
	return true, n
}

// log writes a line through the throttle, with "suppressed": the count
// of like lines not written since the last one, when there were any.
func (t *throttle) log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	ok, n := t.allow(time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Log(context.Background(), level, msg, args...)
}

// LogThrottle throttles log lines that unauthenticated sources can cause,
// as the forwarders' own are (a burst, then one line every 10 s carrying
// the count of those held back), for other packages: the management API.
type LogThrottle struct{ t *throttle }

// NewLogThrottle returns a LogThrottle that has let nothing through yet.
func NewLogThrottle() *LogThrottle { return &LogThrottle{t: newThrottle()} }

// Log writes a line through the throttle.
func (l *LogThrottle) Log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	l.t.log(log, level, msg, args...)
}

// Suppressed reports how many lines the throttle is holding back now.
func (t *throttle) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.suppressed
}
