//go:build unix

package forward

import (
	"net"
	"sync"
	"syscall"
)

// replyBufs hold one datagram each, with room for a frame header.
var replyBufs = sync.Pool{New: func() any {
	b := make([]byte, udpShortLen+1<<16)
	return &b
}}

// readerOf returns a function that waits until conn has a datagram, reads
// it at offset off of a pooled buffer and hands it to fn, returning the
// buffer to the pool after. A session waiting for its service holds no
// buffer: with thousands of idle sessions that is most of their memory.
func readerOf(conn net.Conn) func(off int, fn func(buf []byte, n int)) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return plainReader(conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return plainReader(conn)
	}
	return func(off int, fn func([]byte, int)) error {
		var bp *[]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			bp = replyBufs.Get().(*[]byte)
			n, rerr = syscall.Read(int(fd), (*bp)[off:])
			if rerr == syscall.EAGAIN || rerr == syscall.EINTR {
				replyBufs.Put(bp)
				bp = nil
				return false
			}
			return true
		})
		if bp != nil {
			defer replyBufs.Put(bp)
		}
		if err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
		fn(*bp, n)
		return nil
	}
}
