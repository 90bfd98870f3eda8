package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCPConn is a TCP connection on the stack: a gonet.TCPConn that can also
// tell when it becomes readable without a goroutine blocked in Read, so
// that an idle connection costs no goroutine stack (see NotifyReadable).
type TCPConn struct {
	*gonet.TCPConn
	wq *waiter.Queue
	ep tcpip.Endpoint
}

func newTCPConn(wq *waiter.Queue, ep tcpip.Endpoint) *TCPConn {
	return &TCPConn{TCPConn: gonet.NewTCPConn(wq, ep), wq: wq, ep: ep}
}

// SetLinger is net.TCPConn's: with 0, Close resets the connection at once,
// dropping what it still buffers to send, instead of sending that and a
// FIN (forward.Join uses it to pass a reset on); negative restores the
// default.
func (c *TCPConn) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: time.Duration(sec) * time.Second})
	return nil
}

// readableEvents wake a reader: data, the peer's FIN, or an error.
const readableEvents = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// NotifyReadable calls f once, on a goroutine of the stack, as soon as a
// Read would not block (data, end of stream or an error are waiting),
// which may be at once. f must not block; it typically starts a goroutine.
// stop cancels the notification; it is idempotent and must not be called
// from f itself. Until f runs or stop is called, the connection holds only
// a small waiter entry.
func (c *TCPConn) NotifyReadable(f func()) (stop func()) {
	var fired atomic.Bool
	fire := func() {
		if fired.CompareAndSwap(false, true) {
			f()
		}
	}
	e := waiter.NewFunctionEntry(readableEvents, func(waiter.EventMask) { fire() })
	c.wq.EventRegister(&e)
	// Whatever arrived before the registration raised no event.
	if c.ep.Readiness(readableEvents) != 0 {
		fire()
	}
	var once sync.Once
	return func() { once.Do(func() { c.wq.EventUnregister(&e) }) }
}

// dialTCP is gonet.DialContextTCP keeping the waiter queue for TCPConn.
func (s *Stack) dialTCP(ctx context.Context, remote tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*TCPConn, error) {
	wq := new(waiter.Queue)
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, proto, wq)
	if terr != nil {
		return nil, fmt.Errorf("netstack: %s", terr)
	}
	// Connect completes with a writable (or error) event.
	entry, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if err := ctx.Err(); err != nil {
		ep.Close()
		return nil, err
	}
	terr = ep.Connect(remote)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-ch:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "connect", Net: "tcp", Addr: tcpAddr(remote), Err: errors.New(terr.String())}
	}
	return newTCPConn(wq, ep), nil
}

func tcpAddr(a tcpip.FullAddress) net.Addr {
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

// listener accepts TCP connections on the stack as *TCPConn.
type listener struct {
	*gonet.TCPListener // Addr, and Close of the endpoint
	ep                 tcpip.Endpoint
	wq                 *waiter.Queue
	closed             chan struct{}
	closeOnce          sync.Once
}

const listenBacklog = 4096

func (s *Stack) listenTCP(addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*listener, error) {
	wq := new(waiter.Queue)
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, proto, wq)
	if terr != nil {
		return nil, fmt.Errorf("netstack: %s", terr)
	}
	if terr := ep.Bind(addr); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: tcpAddr(addr), Err: errors.New(terr.String())}
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: tcpAddr(addr), Err: errors.New(terr.String())}
	}
	return &listener{TCPListener: gonet.NewTCPListener(s.stack, wq, ep), ep: ep, wq: wq, closed: make(chan struct{})}, nil
}

// Accept waits for a connection; after Close it fails with net.ErrClosed.
func (l *listener) Accept() (net.Conn, error) {
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		ep, wq, terr := l.ep.Accept(nil)
		if terr == nil {
			return newTCPConn(wq, ep), nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			select {
			case <-l.closed:
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
			default:
			}
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(terr.String())}
		}
		select {
		case <-l.closed:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		case <-ch:
		}
	}
}

// Close stops the listener; Accept calls return. Idempotent.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		l.TCPListener.Close()
	})
	return nil
}

var _ net.Listener = (*listener)(nil)
var _ stack.LinkEndpoint = (*link)(nil)
