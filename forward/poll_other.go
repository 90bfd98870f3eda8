//go:build !linux

package forward

import "syscall"

// Without epoll, quiet kernel sockets are waited for by a goroutine each.
const canPollReady = false

type readyPoller struct{}

func newReadyPoller() *readyPoller { return &readyPoller{} }

func (*readyPoller) wait(syscall.RawConn, func()) (func() bool, error) { return nil, ErrClosed }

func (*readyPoller) close() {}
