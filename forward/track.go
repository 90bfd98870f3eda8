package forward

import (
	"net"
	"sync"
)

// session is one proxied connection: the conns on both sides of it, closed
// together when its tunnel or client goes away or its owner shuts down.
type session struct {
	mu     sync.Mutex
	route  string // Tunnel.RouteKey, on the server
	client string // the ClientId it went to, on the server
	conns  []net.Conn
	closed bool
}

// add attaches c; if the session was closed meanwhile it closes c instead
// and reports false.
func (s *session) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

func (s *session) setRoute(route string) {
	s.mu.Lock()
	s.route = route
	s.mu.Unlock()
}

func (s *session) setClient(id string) {
	s.mu.Lock()
	s.client = id
	s.mu.Unlock()
}

// is reports whether the session belongs to a route or client ("" matches
// nothing).
func (s *session) is(route, client string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return (route != "" && s.route == route) || (client != "" && s.client == client)
}

func (s *session) routeKey() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.route
}

func (s *session) close() {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// sessions is the set of live sessions of a Gateway or Connector.
type sessions struct {
	mu     sync.Mutex
	m      map[*session]struct{}
	closed bool
}

// start registers a new session; it reports false once shut down.
func (ss *sessions) start(s *session) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return false
	}
	if ss.m == nil {
		ss.m = make(map[*session]struct{})
	}
	ss.m[s] = struct{}{}
	return true
}

func (ss *sessions) end(s *session) {
	ss.mu.Lock()
	delete(ss.m, s)
	ss.mu.Unlock()
}

// closeMatching closes the sessions for which match is true.
func (ss *sessions) closeMatching(match func(*session) bool) int {
	ss.mu.Lock()
	var victims []*session
	for s := range ss.m {
		if match(s) {
			victims = append(victims, s)
		}
	}
	ss.mu.Unlock()
	for _, s := range victims {
		s.close()
	}
	return len(victims)
}

// shutdown closes every session and refuses new ones.
func (ss *sessions) shutdown() {
	ss.mu.Lock()
	ss.closed = true
	ss.mu.Unlock()
	ss.closeMatching(func(*session) bool { return true })
}

func (ss *sessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.m)
}
