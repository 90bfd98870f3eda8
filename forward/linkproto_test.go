package forward

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func TestRequestRoundTrip(t *testing.T) {
	ap := netip.MustParseAddrPort
	cases := []struct {
		name             string
		src, dst         netip.AddrPort
		wantSrc, wantDst netip.AddrPort
	}{
		{"ipv4", ap("203.0.113.7:40001"), ap("192.0.2.1:443"), ap("203.0.113.7:40001"), ap("192.0.2.1:443")},
		{"ipv6", ap("[2001:db8::7]:40001"), ap("[2001:db8::1]:443"), ap("[2001:db8::7]:40001"), ap("[2001:db8::1]:443")},
		// A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6:
		// they travel, and come back, as plain IPv4.
		{"ipv4-mapped", ap("[::ffff:203.0.113.7]:40001"), ap("[::ffff:192.0.2.1]:443"), ap("203.0.113.7:40001"), ap("192.0.2.1:443")},
		{"mapped source, ipv4 destination", ap("[::ffff:203.0.113.7]:1"), ap("192.0.2.1:65535"), ap("203.0.113.7:1"), ap("192.0.2.1:65535")},
		// Mixed families travel as IPv6, the IPv4 end mapped.
		{"ipv6 source, ipv4 destination", ap("[2001:db8::7]:40001"), ap("192.0.2.1:443"), ap("[2001:db8::7]:40001"), ap("[::ffff:192.0.2.1]:443")},
	}
	for _, c := range cases {
		for v := 0; v <= 2; v++ {
			t.Run(fmt.Sprintf("%s/backend v%d", c.name, v), func(t *testing.T) {
				client, server := ftTCPPair(t)
				in := Request{Service: "svc.name-1", Source: c.src, Destination: c.dst, BackendProxyProtocol: v}
				if err := WriteRequest(client, in); err != nil {
					t.Fatalf("WriteRequest: %v", err)
				}
				// Bytes after the header must not be lost to read-ahead.
				client.Write([]byte("payload after header"))
				pc, got, err := ReadRequest(server, ftPrompt)
				if err != nil {
					t.Fatalf("ReadRequest: %v", err)
				}
				want := Request{Service: in.Service, Source: c.wantSrc, Destination: c.wantDst, BackendProxyProtocol: v}
				if got != want {
					t.Fatalf("ReadRequest = %+v\nwant          %+v", got, want)
				}
				ftReadExactly(t, pc, []byte("payload after header"))
			})
		}
	}
}

func TestRequestRoundTripLongService(t *testing.T) {
	client, server := ftTCPPair(t)
	name := strings.Repeat("s", MaxServiceNameLen)
	in := Request{Service: name, Source: netip.MustParseAddrPort("127.0.0.1:1"), Destination: netip.MustParseAddrPort("127.0.0.1:2")}
	if err := WriteRequest(client, in); err != nil {
		t.Fatal(err)
	}
	_, got, err := ReadRequest(server, ftPrompt)
	if err != nil || got.Service != name {
		t.Fatalf("ReadRequest = %q, %v", got.Service, err)
	}
}

func TestWriteRequestRejects(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.1:1000")
	dst := netip.MustParseAddrPort("192.0.2.2:80")
	cases := map[string]Request{
		"no service":         {Source: src, Destination: dst},
		"service too long":   {Service: strings.Repeat("x", MaxServiceNameLen+1), Source: src, Destination: dst},
		"backend version -1": {Service: "a", Source: src, Destination: dst, BackendProxyProtocol: -1},
		"backend version 3":  {Service: "a", Source: src, Destination: dst, BackendProxyProtocol: 3},
		"no source":          {Service: "a", Destination: dst},
		"no destination":     {Service: "a", Source: src},
	}
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteRequest(&buf, r); err == nil {
				t.Fatal("WriteRequest accepted it")
			}
			if buf.Len() != 0 {
				t.Errorf("WriteRequest wrote %d bytes of a refused request", buf.Len())
			}
		})
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("boom") }

func TestWriteRequestWriteError(t *testing.T) {
	r := Request{Service: "a", Source: netip.MustParseAddrPort("192.0.2.1:1"), Destination: netip.MustParseAddrPort("192.0.2.2:2")}
	if err := WriteRequest(failingWriter{}, r); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("WriteRequest to a failing writer = %v", err)
	}
}

// rawHeader encodes a v2 header with the given TLVs, for requests that
// WriteRequest would refuse to produce.
func rawHeader(t *testing.T, version byte, src, dst net.Addr, tlvs []proxyproto.TLV) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, src, dst)
	if tlvs != nil {
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadRequestRejects(t *testing.T) {
	src := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1).To4(), Port: 1000}
	dst := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 2).To4(), Port: 80}
	svc := proxyproto.TLV{Type: tlvService, Value: []byte("web")}
	v := func(b ...byte) proxyproto.TLV { return proxyproto.TLV{Type: tlvBackendProxy, Value: b} }
	cases := map[string][]byte{
		"missing service":              rawHeader(t, 2, src, dst, []proxyproto.TLV{v(0)}),
		"empty service":                rawHeader(t, 2, src, dst, []proxyproto.TLV{{Type: tlvService, Value: []byte{}}, v(0)}),
		"missing backend version":      rawHeader(t, 2, src, dst, []proxyproto.TLV{svc}),
		"backend version 3":            rawHeader(t, 2, src, dst, []proxyproto.TLV{svc, v(3)}),
		"backend version of two bytes": rawHeader(t, 2, src, dst, []proxyproto.TLV{svc, v(1, 0)}),
		"no TLVs":                      rawHeader(t, 2, src, dst, nil),
		"PROXY v1 header":              rawHeader(t, 1, src, dst, nil),
		"PROXY v1 text":                []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nrest"),
		"UDP header":                   rawHeader(t, 2, &net.UDPAddr{IP: src.IP, Port: 1}, &net.UDPAddr{IP: dst.IP, Port: 2}, []proxyproto.TLV{svc, v(0)}),
		"LOCAL header":                 localHeader(t),
		// Issue 15: LOCAL with TCP addresses and a full request's TLVs
		// was taken as a request.
		"LOCAL header with a request":   withCommand(t, rawHeader(t, 2, src, dst, []proxyproto.TLV{svc, v(1)}), proxyproto.LOCAL),
		"garbage":                       []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
		"binary garbage":                bytes.Repeat([]byte{0xff, 0x00}, 64),
		"truncated v2 header":           rawHeader(t, 2, src, dst, []proxyproto.TLV{svc, v(0)})[:20],
		"v2 signature then nonsense":    append(append([]byte{}, rawHeader(t, 2, src, dst, nil)[:12]...), bytes.Repeat([]byte{0xee}, 40)...),
		"service TLV longer than frame": corruptTLVLength(t, rawHeader(t, 2, src, dst, []proxyproto.TLV{svc, v(0)})),
	}
	for name, wire := range cases {
		t.Run(name, func(t *testing.T) {
			client, server := ftTCPPair(t)
			client.Write(wire)
			if name == "truncated v2 header" {
				client.CloseWrite() // otherwise it would wait for the rest
			}
			start := time.Now()
			var r Request
			var err error
			ftWithin(t, ftPrompt, "ReadRequest", func() { _, r, err = ReadRequest(server, 5*time.Second) })
			if err == nil {
				t.Fatalf("ReadRequest accepted it: %+v", r)
			}
			if !errors.Is(err, ErrBadRequest) {
				t.Errorf("error %v does not wrap ErrBadRequest", err)
			}
			if statusFor(err) != StatusBadRequest {
				t.Errorf("statusFor(%v) = %d, want StatusBadRequest", err, statusFor(err))
			}
			if r != (Request{}) {
				t.Errorf("refused request returned %+v, want zero", r)
			}
			// Refusing what is there must not wait for the header timeout.
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("took %v to refuse", el)
			}
		})
	}
}

// withCommand sets the command of a PROXY v2 header (its 13th byte's low
// nibble), leaving addresses and TLVs as they are.
func withCommand(t *testing.T, b []byte, cmd proxyproto.ProtocolVersionAndCommand) []byte {
	t.Helper()
	b = append([]byte{}, b...)
	b[12] = b[12]&0xf0 | byte(cmd)&0x0f
	return b
}

func localHeader(t *testing.T) []byte {
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// corruptTLVLength makes the first TLV claim more bytes than the header holds.
func corruptTLVLength(t *testing.T, b []byte) []byte {
	b = append([]byte{}, b...)
	// v2: 16 byte preamble, 12 bytes of IPv4 addresses, then TLVs.
	if b[28] != byte(tlvService) {
		t.Fatalf("unexpected layout: % x", b[:32])
	}
	b[29], b[30] = 0x00, 0xff
	return b
}

func TestReadRequestTimesOut(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for name, send := range map[string][]byte{
		"nothing":          nil,
		"partial preamble": []byte("\r\n\r\n\x00"),
	} {
		t.Run(name, func(t *testing.T) {
			client, server := ftTCPPair(t)
			client.Write(send)
			start := time.Now()
			var err error
			ftWithin(t, ftPrompt, "ReadRequest", func() { _, _, err = ReadRequest(server, timeout) })
			el := time.Since(start)
			if err == nil || !errors.Is(err, ErrBadRequest) {
				t.Fatalf("ReadRequest = %v, want ErrBadRequest", err)
			}
			if el < timeout*3/4 || el > ftPrompt {
				t.Errorf("gave up after %v, want about %v", el, timeout)
			}
		})
	}
}

func TestReadRequestPeerCloses(t *testing.T) {
	client, server := ftTCPPair(t)
	client.Close()
	start := time.Now()
	var err error
	ftWithin(t, ftPrompt, "ReadRequest", func() { _, _, err = ReadRequest(server, 5*time.Second) })
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("ReadRequest = %v, want ErrBadRequest", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v to notice the closed peer", el)
	}
}

// The header timeout must not linger: a conn that got its header can idle
// afterwards without a deadline firing.
func TestReadRequestClearsDeadline(t *testing.T) {
	client, server := ftTCPPair(t)
	in := Request{Service: "a", Source: netip.MustParseAddrPort("192.0.2.1:1"), Destination: netip.MustParseAddrPort("192.0.2.2:2")}
	if err := WriteRequest(client, in); err != nil {
		t.Fatal(err)
	}
	pc, _, err := ReadRequest(server, 150*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var b [5]byte
		_, err := io.ReadFull(pc, b[:])
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("read ended early: %v", err)
	case <-time.After(450 * time.Millisecond): // three header timeouts
	}
	client.Write([]byte("later"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read after the header timeout: %v", err)
		}
	case <-time.After(ftPrompt):
		t.Fatal("read never completed")
	}
}

func TestWriteBackendHeader(t *testing.T) {
	ap := netip.MustParseAddrPort
	cases := []struct {
		name     string
		src, dst netip.AddrPort
		v1       string
	}{
		{"ipv4", ap("203.0.113.7:40001"), ap("192.0.2.1:443"), "PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n"},
		{"ipv6", ap("[2001:db8::7]:40001"), ap("[2001:db8::1]:443"), "PROXY TCP6 2001:db8::7 2001:db8::1 40001 443\r\n"},
		{"ipv4-mapped", ap("[::ffff:203.0.113.7]:40001"), ap("[::ffff:192.0.2.1]:443"), "PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n"},
		{"mixed", ap("[2001:db8::7]:40001"), ap("192.0.2.1:443"), "PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 40001 443\r\n"},
	}
	for _, c := range cases {
		r := Request{Service: "x", Source: c.src, Destination: c.dst}
		t.Run(c.name+"/v0", func(t *testing.T) {
			var buf bytes.Buffer
			r.BackendProxyProtocol = 0
			if err := writeBackendHeader(&buf, r); err != nil || buf.Len() != 0 {
				t.Fatalf("v0 wrote %q, %v; want nothing", buf.Bytes(), err)
			}
		})
		for _, v := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s/v%d", c.name, v), func(t *testing.T) {
				var buf bytes.Buffer
				r.BackendProxyProtocol = v
				if err := writeBackendHeader(&buf, r); err != nil {
					t.Fatal(err)
				}
				if v == 1 && buf.String() != c.v1 {
					t.Errorf("v1 header %q, want %q", buf.String(), c.v1)
				}
				if v == 2 && !bytes.HasPrefix(buf.Bytes(), []byte("\r\n\r\n\x00\r\nQUIT\n")) {
					t.Errorf("v2 header lacks the v2 signature: % x", buf.Bytes())
				}
				buf.WriteString("body")
				br := bufio.NewReader(&buf)
				h, err := proxyproto.Read(br)
				if err != nil {
					t.Fatalf("go-proxyproto cannot parse it: %v", err)
				}
				if int(h.Version) != v || h.Command != proxyproto.PROXY {
					t.Errorf("parsed version %d command %v", h.Version, h.Command)
				}
				s, d, ok := h.TCPAddrs()
				if !ok {
					t.Fatalf("not a TCP header: %+v", h)
				}
				if got := s.AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != netip.AddrPortFrom(c.src.Addr().Unmap(), c.src.Port()) {
					t.Errorf("source %v, want %v", got, c.src)
				}
				if got := d.AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != netip.AddrPortFrom(c.dst.Addr().Unmap(), c.dst.Port()) {
					t.Errorf("destination %v, want %v", got, c.dst)
				}
				if rest, _ := io.ReadAll(br); string(rest) != "body" {
					t.Errorf("header overran: rest %q", rest)
				}
			})
		}
	}
}

func TestWriteBackendHeaderWriteError(t *testing.T) {
	r := Request{Service: "x", Source: netip.MustParseAddrPort("192.0.2.1:1"), Destination: netip.MustParseAddrPort("192.0.2.2:2"), BackendProxyProtocol: 2}
	if err := writeBackendHeader(failingWriter{}, r); err == nil {
		t.Fatal("no error from a failing writer")
	}
}

func TestStatusErr(t *testing.T) {
	cases := []struct {
		s    Status
		want error
	}{
		{StatusOK, nil},
		{StatusUnknownService, ErrUnknownService},
		{StatusBackendUnreachable, ErrBackendUnreachable},
		{StatusBadRequest, ErrBadRequest},
		{StatusRefused, ErrRefused},
		{Status(5), ErrBadRequest},
		{Status(255), ErrBadRequest},
	}
	for _, c := range cases {
		err := c.s.Err()
		if c.want == nil {
			if err != nil {
				t.Errorf("Status(%d).Err() = %v, want nil", c.s, err)
			}
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("Status(%d).Err() = %v, want %v", c.s, err, c.want)
		}
	}
	if errors.Is(Status(9).Err(), ErrUnknownService) || !strings.Contains(Status(9).Err().Error(), "9") {
		t.Errorf("unknown status error %q", Status(9).Err())
	}
}

func TestStatusFor(t *testing.T) {
	cases := []struct {
		err  error
		want Status
	}{
		{ErrUnknownService, StatusUnknownService},
		{fmt.Errorf("%w: %q", ErrUnknownService, "x"), StatusUnknownService},
		{ErrBackendUnreachable, StatusBackendUnreachable},
		{fmt.Errorf("%w: %w", ErrBackendUnreachable, errors.New("refused")), StatusBackendUnreachable},
		{ErrBadRequest, StatusBadRequest},
		{errors.New("anything else"), StatusBadRequest},
	}
	for _, c := range cases {
		if got := statusFor(c.err); got != c.want {
			t.Errorf("statusFor(%v) = %d, want %d", c.err, got, c.want)
		}
		// Round trip: the error the status stands for maps back to it.
		if got := statusFor(c.want.Err()); got != c.want {
			t.Errorf("statusFor(Status(%d).Err()) = %d", c.want, got)
		}
	}
}

func TestStatusConn(t *testing.T) {
	cases := []struct {
		status byte
		want   error
	}{
		{byte(StatusUnknownService), ErrUnknownService},
		{byte(StatusBackendUnreachable), ErrBackendUnreachable},
		{byte(StatusBadRequest), ErrBadRequest},
		{200, ErrBadRequest},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.status), func(t *testing.T) {
			client, server := ftTCPPair(t)
			server.Write([]byte{c.status})
			server.Write([]byte("must not be seen"))
			sc := &statusConn{Conn: client}
			sc.SetReadDeadline(time.Now().Add(ftPrompt))
			n, err := sc.Read(make([]byte, 64))
			if n != 0 || !errors.Is(err, c.want) {
				t.Fatalf("Read = %d, %v; want 0, %v", n, err, c.want)
			}
			for _, other := range []error{ErrUnknownService, ErrBackendUnreachable} {
				if other != c.want && errors.Is(err, other) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
		})
	}
	t.Run("ok", func(t *testing.T) {
		client, server := ftTCPPair(t)
		server.Write([]byte{byte(StatusOK)})
		server.Write([]byte("data"))
		server.CloseWrite()
		sc := &statusConn{Conn: client}
		got, err := ftReadAll(t, sc, ftPrompt)
		if err != nil || string(got) != "data" {
			t.Fatalf("read %q, %v; want \"data\"", got, err)
		}
	})
	t.Run("ok then a byte that looks like a status", func(t *testing.T) {
		client, server := ftTCPPair(t)
		server.Write([]byte{byte(StatusOK), byte(StatusUnknownService), byte(StatusBadRequest)})
		sc := &statusConn{Conn: client}
		ftReadExactly(t, sc, []byte{byte(StatusUnknownService)})
		ftReadExactly(t, sc, []byte{byte(StatusBadRequest)})
	})
	t.Run("closed before answering", func(t *testing.T) {
		client, server := ftTCPPair(t)
		server.Close()
		sc := &statusConn{Conn: client}
		sc.SetReadDeadline(time.Now().Add(ftPrompt))
		_, err := sc.Read(make([]byte, 1))
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("Read = %v, want ErrBadRequest", err)
		}
	})
	t.Run("timeout is passed through", func(t *testing.T) {
		client, server := ftTCPPair(t)
		sc := &statusConn{Conn: client}
		sc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := sc.Read(make([]byte, 1))
		if !isTimeout(err) {
			t.Fatalf("Read = %v, want a timeout", err)
		}
		// Not checked yet: a later status byte is still honoured.
		server.Write([]byte{byte(StatusUnknownService)})
		sc.SetReadDeadline(time.Now().Add(ftPrompt))
		if _, err := sc.Read(make([]byte, 1)); !errors.Is(err, ErrUnknownService) {
			t.Fatalf("Read after timeout = %v, want ErrUnknownService", err)
		}
	})
}

func TestAddrPair(t *testing.T) {
	ap := netip.MustParseAddrPort
	cases := []struct {
		src, dst         netip.AddrPort
		wantSrc, wantDst string
	}{
		{ap("1.2.3.4:5"), ap("6.7.8.9:10"), "1.2.3.4:5", "6.7.8.9:10"},
		{ap("[::ffff:1.2.3.4]:5"), ap("6.7.8.9:10"), "1.2.3.4:5", "6.7.8.9:10"},
		{ap("1.2.3.4:5"), ap("[::ffff:6.7.8.9]:10"), "1.2.3.4:5", "6.7.8.9:10"},
		{ap("[::1]:5"), ap("6.7.8.9:10"), "[::1]:5", "[::ffff:6.7.8.9]:10"},
		{ap("1.2.3.4:5"), ap("[::1]:10"), "[::ffff:1.2.3.4]:5", "[::1]:10"},
	}
	for _, c := range cases {
		sa, da := addrPair(c.src, c.dst)
		s, d := sa.(*net.TCPAddr).AddrPort(), da.(*net.TCPAddr).AddrPort()
		if s.String() != c.wantSrc || d.String() != c.wantDst {
			t.Errorf("addrPair(%v, %v) = %v, %v; want %v, %v", c.src, c.dst, s, d, c.wantSrc, c.wantDst)
		}
	}
}

func TestPingInstance(t *testing.T) {
	p := Ping(7)
	if !IsPing(p) || PingInstance(p) != 0 {
		t.Fatalf("a ping carries instance %d", PingInstance(p))
	}
	SetPingInstance(p, 0xdeadbeef)
	if !IsPing(p) || PingInstance(p) != 0xdeadbeef || binary.BigEndian.Uint64(p[4:]) != 7 {
		t.Fatalf("echo % x", p)
	}
}
