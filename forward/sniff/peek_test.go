package sniff

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---- helpers ----

var (
	peekCertOnce sync.Once
	peekCert     tls.Certificate
	peekPool     *x509.CertPool
)

// testPeekCert returns a self-signed certificate for example.com,
// *.example.com and 127.0.0.1, and a pool that trusts it.
func testPeekCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	peekCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "threshold peek test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              []string{"example.com", "*.example.com"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		peekCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		peekPool = x509.NewCertPool()
		peekPool.AddCert(leaf)
	})
	return peekCert, peekPool
}

func peekClientConfig(t testing.TB, serverName string) *tls.Config {
	_, pool := testPeekCert(t)
	return &tls.Config{RootCAs: pool, ServerName: serverName}
}

type peekConnPair func(t *testing.T) (client, server net.Conn)

func peekPipePair(t *testing.T) (net.Conn, net.Conn) {
	c, s := net.Pipe()
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func peekTCPPair(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		c.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c.Close(); r.c.Close() })
	return c, r.c
}

var peekPairs = []struct {
	name string
	pair peekConnPair
}{{"pipe", peekPipePair}, {"tcp", peekTCPPair}}

// peekChunkConn writes in chunks of at most n bytes, one Write per chunk.
type peekChunkConn struct {
	net.Conn
	n int
}

func (c *peekChunkConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k, err := c.Conn.Write(p[done:min(len(p), done+c.n)])
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// peekReframeConn re-frames the first record written, a ClientHello, into
// several TLS records, cut at the given offsets of the handshake message.
type peekReframeConn struct {
	net.Conn
	cuts []int
	done bool
	t    testing.TB
}

func (c *peekReframeConn) Write(p []byte) (int, error) {
	if c.done {
		return c.Conn.Write(p)
	}
	c.done = true
	if len(p) < 5 || p[0] != 0x16 || int(binary.BigEndian.Uint16(p[3:5])) != len(p)-5 {
		c.t.Errorf("first write is not exactly one handshake record (%d bytes)", len(p))
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(peekReframe(p, c.cuts...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// reframe splits the handshake message of the TLS record rec into
// several records, cut at the given offsets of the message.
func peekReframe(rec []byte, cuts ...int) []byte {
	msg := rec[5:]
	var out []byte
	prev := 0
	for _, cut := range append(append([]int(nil), cuts...), len(msg)) {
		out = append(out, rec[0], rec[1], rec[2], byte((cut-prev)>>8), byte(cut-prev))
		out = append(out, msg[prev:cut]...)
		prev = cut
	}
	return out
}

// peekCaptureHello returns the first TLS record a client with cfg sends.
func peekCaptureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(c, cfg).Handshake() // fails once s closes
		c.Close()
	}()
	defer func() { s.Close(); <-done }()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 5+int(binary.BigEndian.Uint16(hdr[3:5])))
	copy(rec, hdr)
	if _, err := io.ReadFull(s, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// tlsPeekThenHandshake runs a real TLS client (over wrap of the client
// conn) against Hostname followed by a real tls.Server on the replay
// conn, exchanges data both ways, and returns what the peek found.
func tlsPeekThenHandshake(t *testing.T, pair peekConnPair, wrap func(net.Conn) net.Conn, ccfg *tls.Config) (string, Proto) {
	t.Helper()
	cert, _ := testPeekCert(t)
	client, server := pair(t)
	if wrap != nil {
		client = wrap(client)
	}
	clientErr := make(chan error, 1)
	go func() {
		clientErr <- func() error {
			tc := tls.Client(client, ccfg)
			// Not tc.Close: its close_notify would block on a net.Pipe.
			defer client.Close()
			if err := tc.Handshake(); err != nil {
				return err
			}
			if _, err := tc.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(tc, buf); err != nil {
				return err
			}
			if string(buf) != "pong" {
				return errors.New("client got " + string(buf))
			}
			return nil
		}()
	}()

	host, proto, replay, err := Hostname(server, 5*time.Second, 16<<10)
	if err != nil {
		server.Close()
		t.Fatalf("Hostname: %v (client: %v)", err, <-clientErr)
	}
	srv := tls.Server(replay, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := srv.Handshake(); err != nil {
		server.Close()
		t.Fatalf("handshake on replay conn: %v (client: %v)", err, <-clientErr)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	if _, err := srv.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := <-clientErr; err != nil {
		t.Fatalf("client: %v", err)
	}
	if got := srv.ConnectionState().ServerName; got != strings.TrimSuffix(ccfg.ServerName, ".") && net.ParseIP(ccfg.ServerName) == nil {
		t.Errorf("real handshake saw SNI %q, want %q", got, ccfg.ServerName)
	}
	replay.Close()
	return host, proto
}

// peekBytes feeds input to Hostname over a pipe, written in chunks of
// chunk bytes (all at once if 0), then closed. It returns the peek's
// results and everything read back from the replay conn.
func peekBytes(t testing.TB, input []byte, chunk int, timeout time.Duration, maxBytes int) (host string, proto Proto, err error, consumed, replayed []byte) {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		defer c.Close()
		var w io.Writer = c
		if chunk > 0 {
			w = &peekChunkConn{Conn: c, n: chunk}
		}
		w.Write(input)
	}()
	host, proto, replay, err := Hostname(s, timeout, maxBytes)
	if replay == nil {
		t.Fatal("replay is nil")
	}
	rc := replay.(*replayConn)
	consumed = append([]byte(nil), rc.pending...)
	replayed, rerr := io.ReadAll(replay)
	if rerr != nil {
		t.Fatalf("reading replay: %v", rerr)
	}
	<-wrote
	return host, proto, err, consumed, replayed
}

// ---- TLS ----

func TestPeekTLSSNI(t *testing.T) {
	for _, p := range peekPairs {
		t.Run(p.name, func(t *testing.T) {
			for _, tc := range []struct{ sni, want string }{
				{"www.example.com", "www.example.com"},
				{"WWW.Example.COM", "www.example.com"},
				{"example.com.", "example.com"}, // the Go client drops the dot
			} {
				host, proto := tlsPeekThenHandshake(t, p.pair, nil, peekClientConfig(t, tc.sni))
				if host != tc.want || proto != TLS {
					t.Errorf("SNI %q: got %q, %v; want %q, tls", tc.sni, host, proto, tc.want)
				}
			}
		})
	}
}

func TestPeekTLSNoSNI(t *testing.T) {
	// An IP address as ServerName is verified but not sent as SNI.
	host, proto := tlsPeekThenHandshake(t, peekTCPPair, nil, peekClientConfig(t, "127.0.0.1"))
	if host != "" || proto != TLS {
		t.Errorf("got %q, %v; want \"\", tls", host, proto)
	}
	host, proto = tlsPeekThenHandshake(t, peekPipePair, nil, &tls.Config{InsecureSkipVerify: true})
	if host != "" || proto != TLS {
		t.Errorf("no ServerName: got %q, %v; want \"\", tls", host, proto)
	}
}

func TestPeekTLSOneByteAtATime(t *testing.T) {
	for _, p := range peekPairs {
		t.Run(p.name, func(t *testing.T) {
			wrap := func(c net.Conn) net.Conn {
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetNoDelay(true)
				}
				return &peekChunkConn{Conn: c, n: 1}
			}
			host, proto := tlsPeekThenHandshake(t, p.pair, wrap, peekClientConfig(t, "a.example.com"))
			if host != "a.example.com" || proto != TLS {
				t.Errorf("got %q, %v", host, proto)
			}
		})
	}
}

func TestPeekTLSSplitRecords(t *testing.T) {
	helloLen := len(peekCaptureHello(t, peekClientConfig(t, "x.example.com"))) - 5
	for _, cuts := range [][]int{{1}, {4}, {100}, {helloLen / 2}, {helloLen - 1}, {2, 300, 301, helloLen - 10}} {
		wrap := func(c net.Conn) net.Conn { return &peekReframeConn{Conn: c, cuts: cuts, t: t} }
		host, proto := tlsPeekThenHandshake(t, peekPipePair, wrap, peekClientConfig(t, "x.example.com"))
		if host != "x.example.com" || proto != TLS {
			t.Errorf("cuts %v: got %q, %v", cuts, host, proto)
		}
	}
	// The same, split in records and written a few bytes at a time.
	wrap := func(c net.Conn) net.Conn {
		return &peekReframeConn{Conn: &peekChunkConn{Conn: c, n: 3}, cuts: []int{7, 500}, t: t}
	}
	host, _ := tlsPeekThenHandshake(t, peekTCPPair, wrap, peekClientConfig(t, "y.example.com"))
	if host != "y.example.com" {
		t.Errorf("got %q", host)
	}
}

func TestPeekTLSLargeClientHello(t *testing.T) {
	hello := peekCaptureHello(t, peekClientConfig(t, "big.example.com"))
	t.Logf("default Go client ClientHello record: %d bytes", len(hello))
	if len(hello) <= 1500 {
		t.Errorf("ClientHello is %d bytes; expected > 1500 with a post-quantum key share", len(hello))
	}
	var curves []tls.CurveID
	c, s := net.Pipe()
	go func() { c.Write(hello); c.Close() }()
	tls.Server(s, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		curves = h.SupportedCurves
		return nil, errors.New("enough")
	}}).Handshake()
	s.Close()
	if !slices.Contains(curves, tls.X25519MLKEM768) {
		t.Errorf("ClientHello offers %v; expected X25519MLKEM768", curves)
	}
	// Exactly fits the limit.
	host, proto, err, consumed, replayed := peekBytes(t, hello, 0, 5*time.Second, len(hello))
	if err != nil || host != "big.example.com" || proto != TLS {
		t.Errorf("limit = hello size: got %q, %v, %v", host, proto, err)
	}
	if !bytes.Equal(consumed, hello) || !bytes.Equal(replayed, hello) {
		t.Errorf("consumed %d bytes, replayed %d; want the %d of the hello", len(consumed), len(replayed), len(hello))
	}
	// Reframed into many small records, sent in odd chunks.
	split := peekReframe(hello, 10, 200, 1000, 1001, len(hello)-6)
	host, _, err, _, replayed = peekBytes(t, split, 7, 5*time.Second, 0)
	if err != nil || host != "big.example.com" || !bytes.Equal(replayed, split) {
		t.Errorf("reframed: got %q, %v, replay equal %v", host, err, bytes.Equal(replayed, split))
	}
	// One byte short of the limit.
	_, proto, err, consumed, replayed = peekBytes(t, hello, 0, 5*time.Second, len(hello)-1)
	if !errors.Is(err, ErrTooLarge) || proto != TLS {
		t.Errorf("limit = hello size - 1: got %v, %v; want ErrTooLarge", proto, err)
	}
	if len(consumed) != len(hello)-1 || !bytes.Equal(replayed, hello) {
		t.Errorf("consumed %d bytes, replay equal %v", len(consumed), bytes.Equal(replayed, hello))
	}
}

func TestPeekTLSMalformed(t *testing.T) {
	for _, in := range []string{
		"\x16\x03\x01\x00\x05hello",            // handshake length way too big
		"\x16\x03\x01\x00\x04\x02\x00\x00\x00", // a ServerHello
		"\x16\x03\x01\x00\x00",                 // empty handshake record
		"\x16\x03\x01\x00\x08\x01\x00\x00\x04junk",
	} {
		_, proto, err, _, replayed := peekBytes(t, []byte(in), 0, 5*time.Second, 0)
		if !errors.Is(err, ErrMalformed) || proto != TLS {
			t.Errorf("%q: got %v, %v; want ErrMalformed", in, proto, err)
		}
		if string(replayed) != in {
			t.Errorf("%q: replayed %q", in, replayed)
		}
	}
	// Cut short by the client closing.
	hello := peekCaptureHello(t, peekClientConfig(t, "a.example.com"))
	_, proto, err, _, replayed := peekBytes(t, hello[:700], 0, 5*time.Second, 0)
	if !errors.Is(err, io.ErrUnexpectedEOF) || proto != TLS || !bytes.Equal(replayed, hello[:700]) {
		t.Errorf("truncated hello: got %v, %v; want io.ErrUnexpectedEOF", proto, err)
	}
}

// ---- HTTP and others ----

func TestPeekHTTP(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"port", "GET / HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n", "example.com"},
		{"ipv6 port", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "::1"},
		{"ipv6", "GET / HTTP/1.1\r\nhost: [2001:DB8::1]\r\n\r\n", "2001:db8::1"},
		{"ipv4", "GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n", "127.0.0.1"},
		{"spaces dot body", "POST /x HTTP/1.1\r\nContent-Length: 5\r\nHOST:   www.example.com.  \r\n\r\nhello", "www.example.com"},
		{"empty port", "GET / HTTP/1.1\r\nHost: a.example.com:\r\n\r\n", "a.example.com"},
		{"no host", "GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n", ""},
		{"empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", ""},
		{"absolute form", "GET http://user@Proxy.Example:80/x?y HTTP/1.1\r\nHost: other\r\n\r\n", "proxy.example"},
		{"bare LF", "GET / HTTP/1.1\nHost: lf.example\n\n", "lf.example"},
		{"pipelined", "GET / HTTP/1.1\r\nHost: one.example\r\n\r\nGET / HTTP/1.1\r\nHost: two.example\r\n\r\n", "one.example"},
		{"h2 prior knowledge", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ""},
		{"long method", "VERSION-CONTROL / HTTP/1.1\r\nHost: v.example\r\n\r\n", "v.example"},
	}
	for _, tt := range tests {
		for _, chunk := range []int{0, 1, 5} {
			host, proto, err, consumed, replayed := peekBytes(t, []byte(tt.in), chunk, 5*time.Second, 0)
			if err != nil || host != tt.want || proto != HTTP {
				t.Errorf("%s (chunk %d): got %q, %v, %v; want %q, http", tt.name, chunk, host, proto, err, tt.want)
			}
			if string(replayed) != tt.in || !strings.HasPrefix(tt.in, string(consumed)) {
				t.Errorf("%s (chunk %d): replayed %q (consumed %q)", tt.name, chunk, replayed, consumed)
			}
		}
	}
}

func TestPeekHTTPMalformed(t *testing.T) {
	for _, in := range []string{
		"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [127.0.0.1]\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.com:80x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.com/evil\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.com\r\n b.com\r\n\r\n",
	} {
		_, proto, err, _, replayed := peekBytes(t, []byte(in), 0, 5*time.Second, 0)
		if !errors.Is(err, ErrMalformed) || proto != HTTP {
			t.Errorf("%q: got %v, %v; want ErrMalformed", in, proto, err)
		}
		if string(replayed) != in {
			t.Errorf("%q: replayed %q", in, replayed)
		}
	}
}

func TestPeekOther(t *testing.T) {
	for _, in := range []string{
		"\x00\x01\x02\x03garbage",
		"\xff",
		"SSH-2.0-OpenSSH_9.6\r\n",
		"get",                           // closed before a space
		" GET / HTTP/1.1\r\n\r\n",       // no method
		"NICK foo\r\nUSER a 0 * :b\r\n", // not an HTTP request line
		"GET /\r\n\r\n",                 // HTTP/0.9
		"AVERYVERYVERYLONGMETHODNAME / HTTP/1.1\r\n\r\n",
		"\x15\x03\x01\x00\x02\x02\x28", // a TLS alert, not a handshake
	} {
		host, proto, err, consumed, replayed := peekBytes(t, []byte(in), 0, 5*time.Second, 0)
		if err != nil || host != "" || proto != Other {
			t.Errorf("%q: got %q, %v, %v; want \"\", other, nil", in, host, proto, err)
		}
		if string(replayed) != in || !strings.HasPrefix(in, string(consumed)) {
			t.Errorf("%q: replayed %q (consumed %q)", in, replayed, consumed)
		}
	}
}

func TestPeekMaxBytes(t *testing.T) {
	in := "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
	host, _, err, _, _ := peekBytes(t, []byte(in), 0, 5*time.Second, len(in))
	if err != nil || host != "a.example" {
		t.Errorf("limit = request size: got %q, %v", host, err)
	}
	big := "GET / HTTP/1.1\r\nCookie: " + strings.Repeat("x", 5000) + "\r\nHost: a.example\r\n\r\n"
	_, proto, err, consumed, replayed := peekBytes(t, []byte(big), 0, 5*time.Second, 4096)
	if !errors.Is(err, ErrTooLarge) || proto != HTTP {
		t.Errorf("big header: got %v, %v; want ErrTooLarge", proto, err)
	}
	if len(consumed) != 4096 || string(replayed) != big {
		t.Errorf("consumed %d bytes, replay equal %v", len(consumed), string(replayed) == big)
	}
	// A request line that never ends.
	_, _, err, _, _ = peekBytes(t, []byte("GET /"+strings.Repeat("a", 3000)), 0, 5*time.Second, 1000)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("endless request line: got %v; want ErrTooLarge", err)
	}
}

func TestPeekSilentClient(t *testing.T) {
	hello := peekCaptureHello(t, peekClientConfig(t, "a.example.com"))
	for _, p := range peekPairs {
		for _, prefix := range []string{"", "GET / HTTP/1.1\r\nHost: a.example\r\n", "GE", string(hello[:100])} {
			client, server := p.pair(t)
			if prefix != "" {
				go client.Write([]byte(prefix))
			}
			start := time.Now()
			_, _, replay, err := Hostname(server, 200*time.Millisecond, 0)
			elapsed := time.Since(start)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s %.20q: got %v; want os.ErrDeadlineExceeded", p.name, prefix, err)
			}
			if elapsed < 200*time.Millisecond || elapsed > 3*time.Second {
				t.Errorf("%s %.20q: returned after %v", p.name, prefix, elapsed)
			}
			// The deadline is gone: the replay conn works afterwards.
			go client.Write([]byte("!"))
			buf := make([]byte, len(prefix)+1)
			if _, err := io.ReadFull(replay, buf); err != nil || string(buf) != prefix+"!" {
				t.Errorf("%s %.20q: read %q, %v after the peek", p.name, prefix, buf, err)
			}
		}
	}
}

func TestPeekClientClosesAtOnce(t *testing.T) {
	client, server := peekTCPPair(t)
	client.Close()
	_, _, replay, err := Hostname(server, 5*time.Second, 0)
	if !errors.Is(err, io.EOF) || replay == nil {
		t.Errorf("got %v, %v; want io.EOF and a replay conn", replay, err)
	}
}

// peekDeadlineConn records the read deadlines set on it.
type peekDeadlineConn struct {
	net.Conn
	mu        sync.Mutex
	deadlines []time.Time
}

func (c *peekDeadlineConn) SetReadDeadline(d time.Time) error {
	c.mu.Lock()
	c.deadlines = append(c.deadlines, d)
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(d)
}

func TestPeekClearsDeadline(t *testing.T) {
	for _, in := range []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "\x00", "\x16\x03\x01\x00\x05hello"} {
		client, server := peekPipePair(t)
		dc := &peekDeadlineConn{Conn: server}
		go client.Write([]byte(in))
		start := time.Now()
		Hostname(dc, time.Minute, 0)
		dc.mu.Lock()
		d := dc.deadlines
		dc.mu.Unlock()
		if len(d) != 2 || d[0].Before(start.Add(59*time.Second)) || !d[1].IsZero() {
			t.Errorf("%q: read deadlines set: %v; want now+1m, then zero", in, d)
		}
	}
}

func TestPeekReplayConn(t *testing.T) {
	client, server := peekTCPPair(t)
	in := "GET / HTTP/1.1\r\nHost: a.example\r\n\r\nbody"
	go client.Write([]byte(in))
	host, proto, replay, err := Hostname(server, 5*time.Second, 0)
	if err != nil || host != "a.example" || proto != HTTP {
		t.Fatalf("got %q, %v, %v", host, proto, err)
	}
	if replay.LocalAddr().String() != server.LocalAddr().String() || replay.RemoteAddr().String() != server.RemoteAddr().String() {
		t.Errorf("addresses %v %v; want %v %v", replay.LocalAddr(), replay.RemoteAddr(), server.LocalAddr(), server.RemoteAddr())
	}
	buf := make([]byte, len(in))
	if _, err := io.ReadFull(replay, buf); err != nil || string(buf) != in {
		t.Fatalf("replay read %q, %v", buf, err)
	}
	if _, err := replay.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	// A half-close reaches the connection through Raw, as through
	// go-proxyproto's wrapper.
	raw, ok := replay.(interface{ Raw() net.Conn })
	if !ok || raw.Raw() != server {
		t.Fatalf("replay does not expose the peeked connection through Raw")
	}
	if err := replay.SetDeadline(time.Now()); err != nil {
		t.Errorf("SetDeadline: %v", err)
	}
	replay.Close()
	if _, err := server.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("after replay.Close, write to the conn: %v; want net.ErrClosed", err)
	}
}

func TestPeekProtoString(t *testing.T) {
	for p, want := range map[Proto]string{TLS: "tls", HTTP: "http", Other: "other", 9: "Proto(9)"} {
		if p.String() != want {
			t.Errorf("%d: %q, want %q", int(p), p.String(), want)
		}
	}
}

// ---- fuzzing ----

func FuzzPeekHostname(f *testing.F) {
	// Real ClientHellos, kept small (classic X25519 key share only) so that
	// the fuzzer's minimization of interesting inputs stays quick; the
	// full-size post-quantum hello is covered by TestPeekTLSLargeClientHello.
	cfg := peekClientConfig(f, "fuzz.example.com")
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	hello := peekCaptureHello(f, cfg)
	noSNI := peekCaptureHello(f, &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}})
	f.Add(hello, uint8(0))
	f.Add(hello, uint8(3))
	f.Add(peekReframe(hello, 4, 100), uint8(0))
	f.Add(noSNI, uint8(0))
	f.Add(hello[:100], uint8(0))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n"), uint8(0))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\nbody"), uint8(2))
	f.Add([]byte("GET http://a@b.c/ HTTP/1.1\nHost: x\n\n"), uint8(0))
	f.Add([]byte("\x00\x01\x02garbage"), uint8(0))
	f.Add([]byte("\x16\x03\x01\x00\x05hello"), uint8(1))
	f.Add([]byte("SSH-2.0-x\r\n"), uint8(0))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		const maxBytes = 4096
		start := time.Now()
		host, proto, err, consumed, replayed := peekBytes(t, in, int(chunk), 2*time.Second, maxBytes)
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("took %v", el)
		}
		if !bytes.Equal(replayed, in) {
			t.Fatalf("replayed %d bytes, not the %d of the input", len(replayed), len(in))
		}
		if !bytes.HasPrefix(in, consumed) || len(consumed) > maxBytes {
			t.Fatalf("consumed %d bytes, not an input prefix within the limit", len(consumed))
		}
		if err != nil && host != "" {
			t.Fatalf("error %v with host %q", err, host)
		}
		if host != lowerASCII(host) || strings.HasSuffix(host, ".") {
			t.Fatalf("host %q not normalized", host)
		}
		if proto == Other && host != "" {
			t.Fatalf("host %q for other", host)
		}
		if len(in) > 0 && (in[0] == 0x16) != (proto == TLS) {
			t.Fatalf("first byte %#x gave %v", in[0], proto)
		}
	})
}

// ALPN and Peeked expose what the peek saw, for the reachability probe.
func TestPeekALPNAndPeeked(t *testing.T) {
	cfg := peekClientConfig(t, "www.example.com")
	cfg.NextProtos = []string{"h2", "threshold-check/1.x"}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, cfg).Handshake()
	_, proto, replay, err := Hostname(b, time.Second, 0)
	if err != nil || proto != TLS {
		t.Fatalf("peek: %v %v", proto, err)
	}
	if got := ALPN(replay); len(got) != 2 || got[1] != "threshold-check/1.x" {
		t.Errorf("ALPN = %q", got)
	}
	peeked := Peeked(replay)
	if len(peeked) == 0 || peeked[0] != 0x16 {
		t.Errorf("Peeked = %x", peeked[:min(len(peeked), 8)])
	}
	buf := make([]byte, 1)
	replay.Read(buf)
	if Peeked(replay) != nil {
		t.Error("Peeked after a read")
	}
	if ALPN(a) != nil || Peeked(a) != nil {
		t.Error("ALPN or Peeked of a connection that was not peeked")
	}
}
