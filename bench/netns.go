package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netHost is a network namespace in which the bench makes sockets and
// starts processes: the zero value is the bench's own namespace (the
// loopback benchmark), a name one of the namespaces the WAN benchmark
// makes. A socket stays in the namespace it was made in whatever thread
// later uses it, so only its creation needs the namespace: listeners,
// dials and the management API client of one process can live in several
// namespaces at once.
type netHost struct {
	ns string // under /run/netns; "" is the bench's own
}

// do runs f on a thread switched into h's namespace, then switches the
// thread back. The thread must not die: a child process started with
// Pdeathsig is killed when the thread that forked it exits, and a locked
// thread exits with its goroutine. So the goroutine unlocks the thread
// once it is back in its own namespace, and only if that fails does it
// leave it locked, to die with it, rather than let another goroutine run
// in the wrong namespace. (Threads the runtime starts meanwhile come from
// its template thread, not from this one: Go does that for locked threads.)
func (h netHost) do(f func() error) error {
	if h.ns == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open(filepath.Join("/run/netns", h.ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network namespace %s: %w", h.ns, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", h.ns, err)
			return
		}
		err = f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// dial is h's dialFunc.
func (h netHost) dial(addr string) (c *net.TCPConn, err error) {
	if h.ns == "" {
		return dial(addr)
	}
	err = h.do(func() error {
		c, err = dial(addr)
		return err
	})
	return c, err
}

func (h netHost) dialContext(ctx context.Context, network, addr string) (c net.Conn, err error) {
	err = h.do(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func (h netHost) listen(network, addr string) (ln net.Listener, err error) {
	err = h.do(func() error {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// freePort picks a free port on 127.0.0.1 in h.
func (h netHost) freePort(network string) (port int, err error) {
	err = h.do(func() error {
		port, err = freePort(network)
		return err
	})
	return port, err
}

// httpClient talks to servers in h (the management API on its loopback).
func (h netHost) httpClient() *http.Client {
	if h.ns == "" {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{DialContext: h.dialContext, DisableKeepAlives: true}}
}

// command is the argv that runs bin in h.
func (h netHost) command(bin string, args ...string) []string {
	if h.ns == "" {
		return append([]string{bin}, args...)
	}
	return append([]string{"ip", "netns", "exec", h.ns, bin}, args...)
}

// packets is the count of frames dev has sent and received in h, from
// /proc/thread-self/net/dev (the calling thread's namespace: /proc/self
// would be the process's).
func (h netHost) packets(dev string) (n int64, err error) {
	err = h.do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/dev")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			name, rest, ok := strings.Cut(line, ":")
			if !ok || strings.TrimSpace(name) != dev {
				continue
			}
			// rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
			f := strings.Fields(rest)
			if len(f) < 10 {
				return fmt.Errorf("/proc/net/dev: short line for %s", dev)
			}
			rx, err1 := strconv.ParseInt(f[1], 10, 64)
			tx, err2 := strconv.ParseInt(f[9], 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return err
			}
			n = rx + tx
			return nil
		}
		return fmt.Errorf("%s: no device %s", h.ns, dev)
	})
	return n, err
}
