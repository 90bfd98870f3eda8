package forward

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// state is where a forwarder is in its life. It only moves forward.
type state int

const (
	stateUp       state = iota // serving
	stateDraining              // Shutdown began: no new listeners or sessions are taken
	stateClosed                // everything stopped
)

// lifecycle is what every forwarder (Gateway, Connector, Relay, Egress)
// owns: a context its goroutines watch, the WaitGroup Close waits on, the
// listeners it serves, its live sessions and an explicit state. Close and
// Shutdown behave the same for all of them.
type lifecycle struct {
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	state     state
	listeners map[net.Listener]struct{}

	live sessions
	// poll waits for the quiet kernel sockets of this forwarder's joins;
	// its goroutine starts with the first wait and ends in close.
	poll *readyPoller
}

func (l *lifecycle) init(log *slog.Logger) {
	l.log = log
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.listeners = make(map[net.Listener]struct{})
	l.poll = newReadyPoller()
}

// up reports whether new work is taken.
func (l *lifecycle) up() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == stateUp
}

// enter counts one call (a Serve, a ServeConn) that Close must wait for; it
// reports false once the forwarder is draining or closed.
func (l *lifecycle) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateUp {
		return false
	}
	l.wg.Add(1)
	return true
}

func (l *lifecycle) leave() { l.wg.Done() }

// hold counts work that outlives the handler starting it (a join that
// calls back when done), so that Close waits for it too; the caller must
// be counted itself (a handler of accept, or between enter and leave).
// release must be called once.
func (l *lifecycle) hold() (release func()) {
	l.wg.Add(1)
	return l.wg.Done
}

// serve accepts on ln until ln is closed or the forwarder stops, handling
// each connection in a goroutine Close waits for. It owns ln: ln is closed
// when serve returns. It returns ErrClosed when the forwarder stopped it.
func (l *lifecycle) serve(ln net.Listener, handle func(net.Conn)) error {
	if !l.register(ln) {
		return ErrClosed
	}
	return l.accept(ln, handle)
}

// goServe is serve in a goroutine of the forwarder's own; it reports false
// (and closes ln) once the forwarder is stopping.
func (l *lifecycle) goServe(ln net.Listener, handle func(net.Conn)) bool {
	if !l.register(ln) {
		return false
	}
	go l.accept(ln, handle)
	return true
}

// register adds ln to the listeners Close closes, counting its accept loop
// in the WaitGroup before that loop starts (so Close cannot miss it).
func (l *lifecycle) register(ln net.Listener) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateUp {
		ln.Close()
		return false
	}
	l.listeners[ln] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *lifecycle) accept(ln net.Listener, handle func(net.Conn)) error {
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		delete(l.listeners, ln)
		l.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil || !l.up() {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Transient (out of file descriptors): back off, don't spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed", "address", ln.Addr().String(), "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return ErrClosed
			}
			continue
		}
		backoff = 0
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			handle(c)
		}()
	}
}

// stopListening closes every listener served and refuses new sessions'
// listeners; live sessions go on. It reports false if already stopped.
func (l *lifecycle) stopListening() bool {
	l.mu.Lock()
	if l.state != stateUp {
		l.mu.Unlock()
		return false
	}
	l.state = stateDraining
	lns := l.takeListeners()
	l.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	return true
}

func (l *lifecycle) takeListeners() []net.Listener {
	lns := make([]net.Listener, 0, len(l.listeners))
	for ln := range l.listeners {
		lns = append(lns, ln)
	}
	clear(l.listeners)
	return lns
}

// shutdown stops accepting, lets live sessions finish until ctx ends, then
// closes whatever is left, like close. It returns how many sessions had to
// be cut.
func (l *lifecycle) shutdown(ctx context.Context) int {
	l.stopListening()
	cut := 0
	for delay := 5 * time.Millisecond; l.live.count() > 0; delay = min(2*delay, 100*time.Millisecond) {
		select {
		case <-ctx.Done():
			cut = l.live.count()
			l.close()
			return cut
		case <-time.After(delay):
		}
	}
	l.close()
	return cut
}

// close stops every listener, closes every session and waits for every
// goroutine of the forwarder. It is idempotent, and every call waits.
func (l *lifecycle) close() {
	l.mu.Lock()
	first := l.state != stateClosed
	l.state = stateClosed
	lns := l.takeListeners()
	l.mu.Unlock()
	if first {
		l.cancel()
		for _, ln := range lns {
			ln.Close()
		}
		l.live.shutdown()
	}
	l.wg.Wait()
	l.poll.close() // every join has ended
}

// session is one proxied connection: the conns on both sides of it, closed
// together when its tunnel or client goes away or its owner shuts down.
type session struct {
	mu     sync.Mutex
	route  string      // Tunnel.RouteKey, on the server
	client string      // the ClientId it belongs to, on the server
	conns  []io.Closer // conns, and whatever else must end with them
	closed bool
}

// add attaches c; if the session was closed meanwhile it closes c instead
// and reports false.
func (s *session) add(c io.Closer) bool {
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

// sessions is the set of live sessions of a forwarder.
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

// closeAll closes every live session and returns how many there were.
func (ss *sessions) closeAll() int { return ss.closeMatching(func(*session) bool { return true }) }

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
