// Copyright 2026 The threshold Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package gonet

// Not upstream gVisor: errors a caller can test with errors.Is (the hooks
// are in TCPConn's Read and Write, gvisor-changes/003-gonet-errno.patch).
//
// Upstream turns every tcpip.Error into errors.New(err.String()), so a
// connection the peer reset reads as an error that only its text tells
// apart. A proxy must tell: it passes a reset on as a reset (SO_LINGER 0),
// and anything else as an orderly close, which for a tunneled connection
// first sends what is still buffered.

import (
	"errors"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// connError is err as an error that errors.Is matches against the errno a
// kernel socket would give (ECONNRESET, ECONNABORTED, EPIPE,
// ECONNREFUSED), keeping upstream's text for the others. A timeout
// (tcpip.ErrTimeout) keeps it too: as ETIMEDOUT, net.OpError.Timeout would
// report it as a deadline, and a caller waiting out deadlines would wait
// on a dead connection.
func connError(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrClosedForSend:
		return syscall.EPIPE
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	}
	return errors.New(err.String())
}
