//go:build !linux

package forward

import "net"

// rawIO is c: raw syscalls for kernel sockets are Linux's only (see
// rawio_linux.go).
func rawIO(c net.Conn) net.Conn { return c }
