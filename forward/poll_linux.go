//go:build linux

package forward

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// readyPoller waits for many quiet kernel sockets at once: one epoll
// instance and one goroutine, instead of a goroutine per socket parked in
// the runtime's poller (a 2 KiB stack and a goroutine record each, which
// Go never frees). A wait is one-shot; its callback runs on a goroutine of
// its own.
//
// The kernel forgets a socket in an epoll set when the socket is closed,
// without an event, so a wait whose socket may be closed from outside must
// be cancelled by whoever closes it (join.closeBoth does).
//
// The goroutine starts with the first wait and ends when the poller is
// closed; close waits for it.
type readyPoller struct {
	mu     sync.Mutex
	epfd   int // -1 until the first wait
	stopfd int // an eventfd that ends the loop
	waits  map[uint64]func()
	next   uint64
	closed bool
	done   chan struct{}
}

const canPollReady = true

func newReadyPoller() *readyPoller {
	return &readyPoller{epfd: -1, stopfd: -1, waits: map[uint64]func(){}}
}

// wait calls f once, on a new goroutine, when rc's socket is readable (data,
// end of stream or an error). cancel removes the wait; it reports true if
// f will not run (it had not fired), and must not be called from f.
func (p *readyPoller) wait(rc syscall.RawConn, f func()) (cancel func() bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if p.epfd < 0 {
		if err := p.startLocked(); err != nil {
			return nil, err
		}
	}
	p.next++
	token := p.next
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	setToken(&ev, token)
	var cerr error
	// Through Control: the descriptor is ours for the call, not a number
	// a closed socket left to another.
	if err := rc.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		if errors.Is(cerr, unix.ENOENT) {
			cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, os.NewSyscallError("epoll_ctl", cerr)
	}
	p.waits[token] = f
	return func() bool {
		p.mu.Lock()
		_, ok := p.waits[token]
		delete(p.waits, token)
		p.mu.Unlock()
		// The registration stays disabled (one-shot) until the socket is
		// closed or waited for again.
		return ok
	}, nil
}

func (p *readyPoller) startLocked() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, 0) // token 0: stop
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stopfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(stopfd)
		return os.NewSyscallError("epoll_ctl", err)
	}
	p.epfd, p.stopfd = epfd, stopfd
	p.done = make(chan struct{})
	go p.loop(epfd)
	return nil
}

func (p *readyPoller) loop(epfd int) {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Only a bug gets here (EBADF, EINVAL); fail every wait
			// rather than strand it.
			p.mu.Lock()
			fs := make([]func(), 0, len(p.waits))
			for t, f := range p.waits {
				fs = append(fs, f)
				delete(p.waits, t)
			}
			p.closed = true
			p.mu.Unlock()
			for _, f := range fs {
				go f()
			}
			return
		}
		for i := range n {
			token := tokenOf(&events[i])
			if token == 0 {
				return
			}
			p.mu.Lock()
			f, ok := p.waits[token]
			delete(p.waits, token)
			p.mu.Unlock()
			if ok {
				go f()
			}
		}
	}
}

// close ends the loop and waits for it. Waits still registered never fire:
// their owners must have ended (or cancelled) them first.
// It is idempotent, and every call waits.
func (p *readyPoller) close() {
	p.mu.Lock()
	p.closed = true
	epfd, stopfd, done := p.epfd, p.stopfd, p.done
	p.epfd, p.stopfd = -1, -1
	p.mu.Unlock()
	if epfd >= 0 {
		one := [8]byte{1} // the eventfd counter: any nonzero value
		_, _ = unix.Write(stopfd, one[:])
		<-done
		unix.Close(epfd)
		unix.Close(stopfd)
	}
	if done != nil {
		<-done
	}
}

// A wait's token travels in the event's user data (Fd and Pad, 64 bits).
func setToken(ev *unix.EpollEvent, t uint64) { ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32)) }

func tokenOf(ev *unix.EpollEvent) uint64 { return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32 }
