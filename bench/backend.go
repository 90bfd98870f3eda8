package main

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The backend's modes, chosen by the first byte a connection sends.
const (
	modeSink = 'S' // read to EOF, then answer the byte count (8 bytes, big endian)
	// modeFramed reads frames (a 4-byte big-endian length, then that many
	// bytes) up to one of length zero, then answers the byte count of the
	// frames, headers included (8 bytes, big endian). Uploads use it, not
	// modeSink, because some tunnels (frp) do not carry a half-close.
	modeFramed = 'F'
	modeSource = 'D' // send until the peer goes away (or maxSourceBytes)
	modeEcho   = 'E' // echo everything, the mode byte included
	// modeCount reads to EOF like modeSink, adding what it reads (after
	// the mode byte and an 8-byte big-endian id) to the counter that
	// counter(id) made, so that the bench reads progress while it runs.
	modeCount = 'C'
)

const (
	// Bounds on one backend connection, so that nothing runs forever.
	maxSourceBytes  = 64 << 30
	backendConnLife = 15 * time.Minute
	backendBufSize  = 256 << 10
)

// backend is the in-process loopback TCP server every path ends at.
type backend struct {
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	counters map[uint64]*atomic.Int64 // of modeCount connections, by id
}

// counter makes the counter that a modeCount connection naming id adds to.
func (b *backend) counter(id uint64) *atomic.Int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.counters == nil {
		b.counters = map[uint64]*atomic.Int64{}
	}
	c := &atomic.Int64{}
	b.counters[id] = c
	return c
}

// forget drops a counter.
func (b *backend) forget(id uint64) {
	b.mu.Lock()
	delete(b.counters, id)
	b.mu.Unlock()
}

func startBackend() (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return newBackend(ln), nil
}

// newBackend serves on ln until close.
func newBackend(ln net.Listener) *backend {
	b := &backend{ln: ln, conns: make(map[net.Conn]struct{})}
	b.wg.Add(1)
	go b.serve()
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

func (b *backend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // out of descriptors and the like
			continue
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.handle(c)
			b.mu.Lock()
			delete(b.conns, c)
			b.mu.Unlock()
			c.Close()
		}()
	}
}

func (b *backend) handle(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(backendConnLife))
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeSink:
		buf := make([]byte, backendBufSize)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				if errors.Is(err, io.EOF) {
					var out [8]byte
					binary.BigEndian.PutUint64(out[:], uint64(n))
					c.Write(out[:])
				}
				return
			}
		}
	case modeFramed:
		buf := make([]byte, backendBufSize)
		var n int64
		for {
			var hdr [4]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			size := int64(binary.BigEndian.Uint32(hdr[:]))
			if size == 0 {
				var out [8]byte
				binary.BigEndian.PutUint64(out[:], uint64(n))
				c.Write(out[:])
				return
			}
			n += 4
			for size > 0 {
				m, err := c.Read(buf[:min(int64(len(buf)), size)])
				n += int64(m)
				size -= int64(m)
				if err != nil {
					return
				}
			}
		}
	case modeCount:
		var id [8]byte
		if _, err := io.ReadFull(c, id[:]); err != nil {
			return
		}
		b.mu.Lock()
		ctr := b.counters[binary.BigEndian.Uint64(id[:])]
		b.mu.Unlock()
		if ctr == nil {
			return // not asked for: refuse rather than count nowhere
		}
		buf := make([]byte, backendBufSize)
		for {
			m, err := c.Read(buf)
			ctr.Add(int64(m))
			if err != nil {
				return
			}
		}
	case modeSource:
		buf := make([]byte, backendBufSize)
		for sent := int64(0); sent < maxSourceBytes; {
			m, err := c.Write(buf)
			sent += int64(m)
			if err != nil {
				return
			}
		}
	case modeEcho:
		if _, err := c.Write(mode[:]); err != nil {
			return
		}
		buf := make([]byte, 4<<10) // small: thousands of these sit idle
		for {
			m, err := c.Read(buf)
			if m > 0 {
				if _, werr := c.Write(buf[:m]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

// close stops the backend and every connection it holds.
func (b *backend) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}
