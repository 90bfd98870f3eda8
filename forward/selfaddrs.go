package forward

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// SelfAddrs is the host's own addresses, read again when they are asked
// for and the last reading is older than MaxAge: an address added after
// start (IPv6 privacy addresses, DHCP, a floating IP) is known within
// MaxAge, at the cost of at most one reading per MaxAge however many
// connections are checked.
type SelfAddrs struct {
	// Read lists the addresses (net.InterfaceAddrs, unmapped). Required.
	Read func() ([]netip.Addr, error)
	// MaxAge is how long a reading is used; DefaultSelfAddrsMaxAge if zero.
	MaxAge time.Duration
	// Logger, if set, is told when a reading fails (then the last good
	// one is kept).
	Logger *slog.Logger
	now    func() time.Time // time.Now; tests replace it

	mu    sync.Mutex
	at    time.Time
	addrs []netip.Addr
	read  bool
}

// DefaultSelfAddrsMaxAge is how long the server's own addresses are
// trusted before they are read again.
const DefaultSelfAddrsMaxAge = time.Second

// Addrs returns the addresses, reading them again if the last reading is
// too old. The slice must not be changed.
func (s *SelfAddrs) Addrs() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	maxAge := s.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultSelfAddrsMaxAge
	}
	t := now()
	if s.read && t.Sub(s.at) < maxAge && t.Sub(s.at) >= 0 {
		return s.addrs
	}
	addrs, err := s.Read()
	s.at, s.read = t, true
	if err != nil {
		if s.Logger != nil {
			s.Logger.Warn("reading the server's own addresses; keeping the last ones", "err", err, "addresses", len(s.addrs))
		}
		return s.addrs
	}
	for i, a := range addrs {
		addrs[i] = a.WithZone("").Unmap()
	}
	s.addrs = addrs
	return s.addrs
}
