package forward

import "net"

// plainReader reads conn with a buffer of its own, held while it waits:
// for connections that are not sockets.
func plainReader(conn net.Conn) func(off int, fn func(buf []byte, n int)) error {
	buf := make([]byte, udpShortLen+1<<16)
	return func(off int, fn func([]byte, int)) error {
		n, err := conn.Read(buf[off:])
		if err != nil {
			return err
		}
		fn(buf, n)
		return nil
	}
}
