package forward

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawTCP is a kernel TCP socket that a join reads and writes with raw
// syscalls. The socket is non-blocking (the runtime's poller waits for it,
// with its deadlines, through RawConn), so read and write never block in
// the kernel; made as plain syscalls, they tell the runtime the goroutine
// may be gone a while, and sysmon, which looks every 20 us, hands the P of
// one that lasts longer (a 64 KiB write to a loopback socket runs the
// receiver's side too) to another thread, waking it: a context switch per
// copy at high rates. Everything but Read and Write is the TCPConn's.
type rawTCP struct {
	*net.TCPConn
	rc syscall.RawConn

	// The calls' arguments and results, with the functions made once, so
	// that a call allocates nothing; apart for each way, as a join reads
	// a socket on one goroutine while it writes to it on another.
	rp, wp         []byte
	rn, wn         int
	rerrno, werrno syscall.Errno
	readFn         func(fd uintptr) bool
	writeFn        func(fd uintptr) bool
}

// rawIO returns c as a rawTCP if it is a kernel TCP socket itself, c made
// again over a rawTCP if it is a rewrapper over one (the gateway's probe
// guard and peek replay wrap every public connection), else c: another
// wrapper may hold bytes of its own.
func rawIO(c net.Conn) net.Conn {
	return rawIODepth(c, 8)
}

func rawIODepth(c net.Conn, depth int) net.Conn {
	if w, ok := c.(rewrapper); ok {
		inner := w.Raw()
		if depth == 0 || inner == nil {
			return c
		}
		if r := rawIODepth(inner, depth-1); r != inner {
			return w.Rewrap(r)
		}
		return c
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawTCP{TCPConn: tc, rc: rc}
	r.readFn = func(fd uintptr) bool {
		for {
			m, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.rp))), uintptr(len(r.rp)))
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			r.rn, r.rerrno = int(m), e
			return true
		}
	}
	r.writeFn = func(fd uintptr) bool {
		for len(r.wp) > 0 {
			m, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.wp))), uintptr(len(r.wp)))
			switch e {
			case 0:
				r.wn += int(m)
				r.wp = r.wp[m:]
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				r.werrno = e
				return true
			}
		}
		return true
	}
	return r
}

// Read is net.Conn's: an error wraps the errno (errors.Is finds
// ECONNRESET), a deadline gives os.ErrDeadlineExceeded, a closed socket
// net.ErrClosed, the end of stream io.EOF.
func (r *rawTCP) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerrno = p, 0, 0
	err := r.rc.Read(r.readFn)
	n, errno := r.rn, r.rerrno
	r.rp = nil
	if err := r.opError("read", err, errno); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write is net.Conn's: it writes all of p or returns an error, as Read
// describes.
func (r *rawTCP) Write(p []byte) (int, error) {
	r.wp, r.wn, r.werrno = p, 0, 0
	err := r.rc.Write(r.writeFn)
	n, errno := r.wn, r.werrno
	r.wp = nil
	return n, r.opError("write", err, errno)
}

// opError is the error of a call: the poller's (deadline, closed), else
// the syscall's errno, as net.Conn gives them; nil if neither.
func (r *rawTCP) opError(op string, err error, errno syscall.Errno) error {
	if err == nil && errno == 0 {
		return nil
	}
	if err == nil {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: r.LocalAddr(), Addr: r.RemoteAddr(), Err: err}
}

// rewrapper is a wrapper whose reads and writes reach the connection it
// wraps (Raw) after bytes of its own, and which can be made again, with
// the same state, over another connection to the same socket. rawIO puts a
// rawTCP under one that way. The join then reads and writes only the new
// wrapper; the old one stays what it closes and waits on.
type rewrapper interface {
	Raw() net.Conn
	Rewrap(inner net.Conn) net.Conn
}
