package netstack

import (
	"errors"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ListenUDPBuffered opens an unconnected UDP socket like ListenUDP, with
// receive and send buffers of bufSize bytes each (at most 4 MiB, the
// stack's limit; the stack counts payload bytes only). Port 0 picks a free
// port.
//
// Datagrams larger than the MTU are fragmented (IPv6 fragment headers)
// by the sending stack and reassembled by the receiving one, so anything
// up to the 65,527 bytes UDP can carry arrives whole.
func (s *Stack) ListenUDPBuffered(at netip.AddrPort, bufSize int) (*gonet.UDPConn, error) {
	fa, proto := fullAddr(at)
	if at.Addr().IsUnspecified() {
		fa.Addr = tcpip.Address{}
	}
	var wq waiter.Queue
	ep, err := s.stack.NewEndpoint(udp.ProtocolNumber, proto, &wq)
	if err != nil {
		return nil, errors.New(err.String())
	}
	ep.SocketOptions().SetReceiveBufferSize(int64(bufSize), true)
	ep.SocketOptions().SetSendBufferSize(int64(bufSize), true)
	if err := ep.Bind(fa); err != nil {
		ep.Close()
		return nil, fmt.Errorf("netstack: binding UDP %s: %s", at, err)
	}
	return gonet.NewUDPConn(&wq, ep), nil
}
