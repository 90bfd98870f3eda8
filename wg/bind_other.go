//go:build !linux

package wg

import "golang.zx2c4.com/wireguard/conn"

// BindStats are counters of the UDP sockets; only the Linux bind has them.
type BindStats struct {
	RxDropped            uint64
	RcvBuf, SndBuf       int
	TxOffload, RxOffload bool
}

// newBind is wireguard-go's own bind where ours (Linux only) is missing.
func newBind() conn.Bind { return conn.NewDefaultBind() }
