//go:build unix

package forward

import (
	"net"
	"syscall"
)

const canWaitReadable = true

// waitReadable blocks until c has data, its end of stream or an error to
// read, or is closed, without reading anything: it peeks at one byte
// through the runtime's poller.
func waitReadable(c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	var b [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err != syscall.EINTR {
				return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
			}
		}
	})
}
