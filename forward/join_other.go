//go:build !unix

package forward

import "net"

// Without a way to peek at a socket, joins copy with goroutines all along.
const canWaitReadable = false

func waitReadable(*net.TCPConn) {}
