package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/wg"
)

// testCA issues certificates for the TLS backends; the test clients trust
// only it, so a certificate swapped or a handshake tampered with fails.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "threshold e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsBackend terminates TLS with its own certificate and answers each
// line with "<name> <line>".
func tlsBackend(t testing.TB, name string, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s", name, line)
			}()
		}
	}()
	return ln.Addr().String()
}

// tlsAsk opens a verified TLS connection for serverName through addr.
func tlsAsk(addr, serverName string, roots *x509.CertPool) (string, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello "+serverName+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

// httpBackend answers with its name and the Host it was asked for.
func httpBackend(t testing.TB, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s", name, r.Host, r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func httpAsk(addr, host, path string) (string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		return "", err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestHostnameRouting: several sites share one port, routed by TLS SNI or
// HTTP Host to different clients, without the server terminating TLS.
func TestHostnameRouting(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	srv := startServerWith(t, map[string]wg.Key{"home-a": ka, "home-b": kb}, map[string]any{"HostnamePeekTimeoutSeconds": 1})
	ca := newTestCA(t)
	siteA := tlsBackend(t, "site-a", ca.issue(t, "www.sites.test", "a.test"))
	siteB := tlsBackend(t, "site-b", ca.issue(t, "*.sites.test", "*.api.sites.test"))
	plain := startBackend(t, "plain", false)
	webA, webB := httpBackend(t, "web-a"), httpBackend(t, "web-b")
	startClient(t, srv, "home-a", ka, map[string]string{"https": siteA, "plain": plain.addr, "http": webA})
	startClient(t, srv, "home-b", kb, map[string]string{"https": siteB, "http": webB})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)

	tlsPort, httpPort := freePort(t, "tcp"), freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{
		{ListenAddress: "127.0.0.1", ListenPort: tlsPort, ListenHostnameGlob: "a.test", BackEndService: "https", ClientId: "home-a"},
		{ListenAddress: "127.0.0.1", ListenPort: tlsPort, ListenHostnameGlob: "www.sites.test", BackEndService: "https", ClientId: "home-a"},
		{ListenAddress: "127.0.0.1", ListenPort: tlsPort, ListenHostnameGlob: "*.sites.test", BackEndService: "https", ClientId: "home-b"},
		{ListenAddress: "127.0.0.1", ListenPort: tlsPort, ListenHostnameGlob: "*", BackEndService: "plain", ClientId: "home-a"},
		{ListenAddress: "127.0.0.1", ListenPort: httpPort, ListenHostnameGlob: "a.test", BackEndService: "http", ClientId: "home-a"},
		{ListenAddress: "127.0.0.1", ListenPort: httpPort, ListenHostnameGlob: "b.test", BackEndService: "http", ClientId: "home-b"},
	})
	addr := tcpAddr(tlsPort)
	for _, tc := range []struct{ name, want string }{
		{"a.test", "site-a"},
		{"www.sites.test", "site-a"}, // the exact name beats *.sites.test
		{"api.sites.test", "site-b"},
		{"deep.api.sites.test", "site-b"},
	} {
		got, err := tlsAsk(addr, tc.name, ca.pool)
		if err != nil || got != tc.want+" hello "+tc.name {
			t.Errorf("TLS %s: %q %v, want %s", tc.name, got, err, tc.want)
		}
	}
	// A name matched only by "*" lands on the plain backend, which does not
	// speak TLS: the handshake must fail rather than reach a TLS site.
	if got, err := tlsAsk(addr, "elsewhere.test", ca.pool); err == nil {
		t.Errorf("TLS to a name with no site: %q", got)
	}
	// Non-TLS traffic on the shared port goes to "*".
	mustExchange(t, addr, "plain")

	for _, tc := range []struct{ host, want string }{{"a.test", "web-a a.test /x"}, {"b.test:80", "web-b b.test:80 /y"}} {
		path := "/" + tc.want[len(tc.want)-1:]
		got, err := httpAsk(tcpAddr(httpPort), tc.host, path)
		if err != nil || got != tc.want {
			t.Errorf("HTTP Host %s: %q %v, want %q", tc.host, got, err, tc.want)
		}
	}
	// No route for this Host: the connection is closed.
	if got, err := httpAsk(tcpAddr(httpPort), "c.test", "/"); err == nil {
		t.Errorf("HTTP Host c.test: got %q, want the connection closed", got)
	}

	// A silent client is dropped after the peek deadline, while another
	// connection on the same port proceeds meanwhile.
	silent, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	if got, err := tlsAsk(addr, "a.test", ca.pool); err != nil || !strings.HasPrefix(got, "site-a") {
		t.Errorf("connection beside a silent one: %q %v", got, err)
	}
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || isTimeoutErr(err) {
		t.Fatalf("silent client not dropped: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("silent client dropped after %s, want about the 1 s deadline", d)
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestFailover: a tunnel names an ordered list of clients; new connections
// go to the first connected one, move on when it is lost and come back.
func TestFailover(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	srv := startServer(t, map[string]wg.Key{"home-a": ka, "home-b": kb})
	ba, bb := startBackend(t, "backend-a", false), startBackend(t, "backend-b", false)
	ca := startClient(t, srv, "home-a", ka, map[string]string{"web": ba.addr})
	startClient(t, srv, "home-b", kb, map[string]string{"web": bb.addr})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	code, body, err := srv.call("PUT", "/tunnels", fmt.Sprintf(`[{"ListenAddress":"127.0.0.1","ListenPort":%d,"BackEndService":"web","ClientIds":["home-a","home-b"]}]`, port))
	if err != nil || code != 200 {
		t.Fatalf("PUT with ClientIds: %d %s %v", code, body, err)
	}
	mustExchange(t, tcpAddr(port), "backend-a")
	if ts := srv.tunnels(t); len(ts) != 1 || ts[0].ActiveClientId != "home-a" {
		t.Fatalf("GET /tunnels: %+v, want home-a active", ts)
	}
	ca.kill()
	lost := time.Now()
	var switched time.Duration
	waitUntil(t, 15*time.Second, "new connections to reach home-b", func() bool {
		greeting, _, _, err := exchange(t, tcpAddr(port), "ping")
		if err == nil && strings.HasPrefix(greeting, "backend-b ") {
			switched = time.Since(lost)
			return true
		}
		return false
	})
	t.Logf("failover: new connections reached home-b %s after home-a was killed", switched.Round(time.Millisecond))
	// The documented bound for noticing a lost client is 3.25 s.
	waitUntil(t, 5*time.Second, "GET /tunnels to show home-b active", func() bool {
		return srv.tunnels(t)[0].ActiveClientId == "home-b"
	})
	t.Logf("failover: GET /tunnels showed home-b active %s after home-a was killed", time.Since(lost).Round(time.Millisecond))
	onB := dialLive(t, tcpAddr(port), "backend-b")

	ca.start(t)
	back := time.Now()
	waitUntil(t, 30*time.Second, "new connections to return to home-a", func() bool {
		greeting, _, _, err := exchange(t, tcpAddr(port), "ping")
		return err == nil && strings.HasPrefix(greeting, "backend-a ")
	})
	t.Logf("failback: new connections returned to home-a %s after it restarted", time.Since(back).Round(time.Millisecond))
	onB.roundTrip(t, "B's connection survives A coming back")
}

// TestHotSwap moves a tunnel between clients under a steady stream of new
// connections: none may fail, and the listener is never re-bound.
func TestHotSwap(t *testing.T) {
	t.Parallel()
	ka, kb := newKey(t), newKey(t)
	srv := startServer(t, map[string]wg.Key{"home-a": ka, "home-b": kb})
	ba, bb := startBackend(t, "backend-a", false), startBackend(t, "backend-b", false)
	startClient(t, srv, "home-a", ka, map[string]string{"web": ba.addr})
	startClient(t, srv, "home-b", kb, map[string]string{"web": bb.addr})
	srv.waitState(t, "home-a", "ClientConnected", 30*time.Second)
	srv.waitState(t, "home-b", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	tun := tunnel{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home-a"}
	srv.mustPutTunnels(t, []tunnel{tun})
	live := dialLive(t, tcpAddr(port), "backend-a")

	var ok, failed atomic.Int64
	var seenB atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				greeting, echo, _, err := exchange(t, tcpAddr(port), "swap")
				if err != nil || echo != "swap" {
					failed.Add(1)
					continue
				}
				ok.Add(1)
				if strings.HasPrefix(greeting, "backend-b ") {
					seenB.Store(true)
				}
			}
		}()
	}
	waitUntil(t, 10*time.Second, "traffic before the swap", func() bool { return ok.Load() > 20 })
	for i, id := range []string{"home-b", "home-a", "home-b"} {
		tun.ClientId = id
		srv.mustPutTunnels(t, []tunnel{tun})
		before := ok.Load()
		waitUntil(t, 10*time.Second, fmt.Sprintf("traffic after swap %d", i), func() bool { return ok.Load() > before+20 })
	}
	close(stop)
	wg.Wait()
	t.Logf("hot swap: %d connections, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || !seenB.Load() {
		t.Errorf("hot swap: %d failed connections (want 0), reached home-b: %v", failed.Load(), seenB.Load())
	}
	live.roundTrip(t, "a connection from before the swaps still flows")
}
