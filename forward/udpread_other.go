//go:build !unix

package forward

import "net"

func readerOf(conn net.Conn) func(off int, fn func(buf []byte, n int)) error {
	return plainReader(conn)
}
