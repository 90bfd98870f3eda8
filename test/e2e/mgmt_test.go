package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/test/e2e/socksclient"
	"github.com/thresholdtunnel/threshold/wg"
)

// pemCA is a CA whose certificates are written as PEM files.
type pemCA struct {
	*testCA
	dir string
}

func (ca *pemCA) write(t testing.TB, name string, der []byte, key *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	certFile = filepath.Join(ca.dir, name+".crt")
	keyFile = filepath.Join(ca.dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return
}

func (ca *pemCA) leaf(t testing.TB, name string, server bool, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, name, der, key)
}

func newPemCA(t testing.TB, dir string) (*pemCA, string) {
	ca := &pemCA{testCA: newTestCA(t), dir: dir}
	caFile := filepath.Join(dir, fmt.Sprintf("ca-%d.crt", time.Now().UnixNano()))
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600)
	return ca, caFile
}

func TestManagementMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, caFile := newPemCA(t, dir)
	other, _ := newPemCA(t, dir)
	serverCert, serverKey := ca.leaf(t, "server", true, time.Now().Add(time.Hour))
	goodCert, goodKey := ca.leaf(t, "admin", false, time.Now().Add(time.Hour))
	expiredCert, expiredKey := ca.leaf(t, "expired", false, time.Now().Add(-time.Hour))
	strangerCert, strangerKey := other.leaf(t, "stranger", false, time.Now().Add(time.Hour))
	srv := &server{dir: t.TempDir(), key: newKey(t), tunnelPort: freePort(t, "udp"), mgmtPort: freePort(t, "tcp")}
	os.WriteFile(filepath.Join(srv.dir, "server.key"), []byte(srv.key.String()), 0o600)
	srv.config = map[string]any{
		"TunnelControlPort": srv.tunnelPort, "ManagementPort": srv.mgmtPort, "ManagementAddress": "0.0.0.0",
		"PrivateKeyFile":    filepath.Join(srv.dir, "server.key"),
		"CaCertificateFile": caFile, "ServerTlsCertificateFile": serverCert, "ServerTlsKeyFile": serverKey,
	}
	writeJSON(t, filepath.Join(srv.dir, "server.json"), srv.config)
	srv.proc = startProc(t, "server", "server", "--config", filepath.Join(srv.dir, "server.json"))

	var callPath func(certFile, keyFile, path string) (int, error)
	call := func(certFile, keyFile string) (int, error) { return callPath(certFile, keyFile, "/clients") }
	callPath = func(certFile, keyFile, path string) (int, error) {
		cfg := &tls.Config{RootCAs: ca.pool}
		if certFile != "" {
			c, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{c}
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d%s", srv.mgmtPort, path))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	waitUntil(t, 15*time.Second, "mTLS API", func() bool { code, _ := call(goodCert, goodKey); return code == 200 })
	for name, files := range map[string][2]string{"expired": {expiredCert, expiredKey}, "wrong CA": {strangerCert, strangerKey}} {
		if code, err := call(files[0], files[1]); err == nil {
			t.Errorf("%s: answered %d, want the TLS handshake refused", name, code)
		}
	}
	// Issue 15: /healthz needs no certificate, as documented (before, the
	// handshake required one); the API still does, and the CA's own
	// certificate is not a client's.
	if code, err := callPath("", "", "/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz without a certificate: %d %v", code, err)
	}
	caCert, caKey := ca.write(t, "ca-as-client", ca.cert.Raw, ca.key)
	for name, files := range map[string][2]string{"no certificate": {}, "the CA's certificate": {caCert, caKey}} {
		if code, err := call(files[0], files[1]); err != nil || code != http.StatusForbidden {
			t.Errorf("%s: %d %v, want 403", name, code, err)
		}
	}
	// Plain HTTP on the TLS port gets nowhere either.
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/clients", srv.mgmtPort)); err == nil {
		if resp.StatusCode == 200 {
			t.Error("plain HTTP reached the API")
		}
		resp.Body.Close()
	}
}

func TestManagementToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	const token = "e2e-token-0123456789abcdef0123456789"
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	ck := newKey(t)
	srv := &server{dir: t.TempDir(), key: newKey(t), tunnelPort: freePort(t, "udp"), mgmtPort: freePort(t, "tcp")}
	srv.api = fmt.Sprintf("http://127.0.0.1:%d", srv.mgmtPort)
	os.WriteFile(filepath.Join(srv.dir, "server.key"), []byte(srv.key.String()), 0o600)
	srv.config = map[string]any{
		"TunnelControlPort": srv.tunnelPort, "ManagementPort": srv.mgmtPort, "ManagementAddress": "0.0.0.0",
		"PrivateKeyFile": filepath.Join(srv.dir, "server.key"), "ManagementTokenFile": tokenFile,
		"Clients": []map[string]string{{"ClientId": "home", "PublicKey": ck.PublicKey().String()}},
	}
	writeJSON(t, filepath.Join(srv.dir, "server.json"), srv.config)
	srv.proc = startProc(t, "server", "server", "--config", filepath.Join(srv.dir, "server.json"))
	ask := func(method, path, auth, body string) int {
		req, _ := http.NewRequest(method, srv.api+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitUntil(t, 15*time.Second, "API", func() bool { return ask("GET", "/healthz", "", "") == 200 })
	if code := ask("GET", "/tunnels", "Bearer "+token, ""); code != 200 {
		t.Errorf("right token: %d", code)
	}
	port := freePort(t, "tcp")
	put := fmt.Sprintf(`[{"ListenAddress":"127.0.0.1","ListenPort":%d,"BackEndService":"web","ClientId":"home"}]`, port)
	for name, tc := range map[string]struct {
		auth string
		code int
	}{
		"missing": {"", 401}, "wrong": {"Bearer " + strings.Repeat("x", len(token)), 403},
		"short": {"Bearer abc", 403}, "basic": {"Basic " + token, 401},
	} {
		if code := ask("PUT", "/tunnels", tc.auth, put); code != tc.code {
			t.Errorf("%s token: %d, want %d", name, code, tc.code)
		}
	}
	if c, err := net.DialTimeout("tcp", tcpAddr(port), time.Second); err == nil {
		c.Close()
		t.Error("a refused PUT opened its port")
	}
	if strings.Contains(srv.logs.String(), token) {
		t.Error("the token appears in the server's log")
	}
}

func TestManagementRefusesOpenBind(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "server.json")
	writeJSON(t, path, map[string]any{"ManagementAddress": "0.0.0.0", "PrivateKeyFile": filepath.Join(dir, "k")})
	_, errOut, code := runCLI(t, "", "server", "--config", path)
	if code == 0 || !strings.Contains(errOut, "ManagementTokenFile") || !strings.Contains(errOut, "CaCertificateFile") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "k")); err == nil {
		t.Error("a refused start still generated a key")
	}
}

// TestStateSurvivesKill: kill -9 the server mid-traffic, start it again
// from the same StateDir: same tunnels, same clients, no API call.
func TestStateSurvivesKill(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	stateDir := t.TempDir()
	srv := startServerWith(t, nil, map[string]any{"StateDir": stateDir, "PrivateKeyFile": ""})
	// With no PrivateKeyFile the server generated its key in the state dir.
	generated, err := os.ReadFile(filepath.Join(stateDir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	if srv.key, err = wg.ParseKey(string(generated)); err != nil {
		t.Fatal(err)
	}
	if code, body, err := srv.call("PUT", "/clients/home", map[string]string{"PublicKey": ck.PublicKey().String()}); err != nil || code != 200 {
		t.Fatalf("register: %d %s %v", code, body, err)
	}
	be := startBackend(t, "backend", true)
	startClient(t, srv, "home", ck, map[string]string{"web": be.addr})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{HaProxyProxyProtocol: true, ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}})
	live := dialLive(t, tcpAddr(port), "backend")
	live.roundTrip(t, "mid-traffic")

	keyData := generated
	srv.kill()
	srv.start(t)
	start := time.Now()
	srv.waitState(t, "home", "ClientConnected", 40*time.Second)
	t.Logf("client back %s after the restart", time.Since(start).Round(time.Millisecond))
	seen, from := mustExchange(t, tcpAddr(port), "backend")
	if seen != from {
		t.Errorf("after restart the backend saw %s, sender was %s", seen, from)
	}
	if again, _ := os.ReadFile(filepath.Join(stateDir, "server.key")); string(again) != string(keyData) {
		t.Error("server key changed across the restart")
	}
	if ts := srv.tunnels(t); len(ts) != 1 || ts[0].ListenPort != port {
		t.Errorf("tunnels after restart: %+v", ts)
	}
}

func TestCorruptStateRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	corrupt := []byte(`{"Version":1,"Clients":[{"ClientId":"x","PublicKey":`)
	os.WriteFile(state, corrupt, 0o600)
	cfg := filepath.Join(dir, "server.json")
	writeJSON(t, cfg, map[string]any{"StateDir": dir, "TunnelControlPort": freePort(t, "udp"), "ManagementPort": freePort(t, "tcp")})
	_, errOut, code := runCLI(t, "", "server", "--config", cfg)
	if code == 0 || !strings.Contains(errOut, "state.json") || !strings.Contains(errOut, "corrupt") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got, _ := os.ReadFile(state); string(got) != string(corrupt) {
		t.Error("the corrupt state file was changed")
	}
}

// TestMetricsExact sends known payloads both ways, through a tunnel and
// through SOCKS5, and checks the counters to the byte.
func TestMetricsExact(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServerWith(t, map[string]wg.Key{"home": ck}, map[string]any{"Socks5AllowCIDRs": []string{"127.0.0.1/32"}})
	be := startBackend(t, "backend", false)
	socks := tcpAddr(freePort(t, "tcp"))
	startClientWith(t, srv, "home", ck, map[string]string{"web": be.addr}, map[string]any{"Socks5ListenAddress": socks})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}})
	route := fmt.Sprintf("127.0.0.1:%d *", port)

	var in, out int
	for i := range 3 {
		msg := strings.Repeat("m", 100000*(i+1))
		greeting, echo, _, err := exchange(t, tcpAddr(port), msg)
		if err != nil || echo != msg {
			t.Fatal(err)
		}
		in += len(msg)
		out += len(greeting) + 1 + len(echo) // the backend's greeting line, then the echo
	}
	dest := sourceEcho(t)
	c, err := socksclient.Dial(socks, dest, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	egressMsg := strings.Repeat("e", 54321)
	io.WriteString(c, egressMsg)
	c.(*net.TCPConn).CloseWrite()
	egressBack, _ := io.ReadAll(c)
	c.Close()
	expectRefused(t, tcpAddr(freePort(t, "tcp")), time.Second) // not a tunnel: no effect on counters

	want := map[string]float64{
		fmt.Sprintf(`threshold_ingress_bytes_total{client="home",direction="in",tunnel=%q}`, route):  float64(in),
		fmt.Sprintf(`threshold_ingress_bytes_total{client="home",direction="out",tunnel=%q}`, route): float64(out),
		fmt.Sprintf(`threshold_connections_total{tunnel=%q}`, route):                                 3,
		fmt.Sprintf(`threshold_connections_active{tunnel=%q}`, route):                                0,
		`threshold_egress_bytes_total{client="home",direction="out"}`:                                float64(len(egressMsg)),
		`threshold_egress_bytes_total{client="home",direction="in"}`:                                 float64(len(egressBack)),
		`threshold_client_connected{client="home"}`:                                                  1,
	}
	var last string
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body, err := srv.call("GET", "/metrics", nil)
		last = string(body)
		bad := []string{}
		for series, v := range want {
			if got, ok := metricValue(last, series); !ok || got != v {
				bad = append(bad, fmt.Sprintf("%s = %v (found %v), want %v", series, got, ok, v))
			}
		}
		if err == nil && code == 200 && len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics not exact (%d %v):\n%s\n%s", code, err, strings.Join(bad, "\n"), last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range []string{"threshold_connections_rejected_total{reason=\"client_unreachable\"}", "threshold_management_requests_total", "threshold_client_last_handshake_age_seconds"} {
		if !strings.Contains(last, name) {
			t.Errorf("metrics lack %s", name)
		}
	}
}

var metricLine = regexp.MustCompile(`(?m)^([^#\n].*) (\S+)$`)

func metricValue(text, series string) (float64, bool) {
	for _, m := range metricLine.FindAllStringSubmatch(text, -1) {
		if m[1] == series {
			v, err := strconv.ParseFloat(m[2], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// TestGracefulShutdown: SIGTERM lets an in-flight transfer finish, refuses
// new connections, and exits 0.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	ck := newKey(t)
	srv := startServerWith(t, map[string]wg.Key{"home": ck}, map[string]any{"ShutdownGracePeriodSeconds": 20})
	be := startBackend(t, "backend", false)
	startClient(t, srv, "home", ck, map[string]string{"web": be.addr})
	srv.waitState(t, "home", "ClientConnected", 30*time.Second)
	port := freePort(t, "tcp")
	srv.mustPutTunnels(t, []tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "web", ClientId: "home"}})
	inflight := dialLive(t, tcpAddr(port), "backend")
	inflight.roundTrip(t, "before SIGTERM")

	srv.cmd.Process.Signal(syscall.SIGTERM)
	waitUntil(t, 10*time.Second, "public port to close", func() bool {
		c, err := net.DialTimeout("tcp", tcpAddr(port), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// The transfer in flight completes: several MB both ways, then EOF.
	payload := strings.Repeat("in flight ", 300000)
	go func() { io.WriteString(inflight.c, payload); inflight.c.(*net.TCPConn).CloseWrite() }()
	inflight.c.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(inflight.c)
	if err != nil || string(got) != payload {
		t.Fatalf("in-flight transfer: %d of %d bytes, %v", len(got), len(payload), err)
	}
	select {
	case <-srv.done:
		if srv.err != nil {
			t.Errorf("server exit: %v", srv.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("server did not exit after its last connection ended")
	}
}

// TestConfigClientsBootstrapOnly: with a StateDir, the config's Clients
// register clients on the first start only; a key rotated through the API
// survives a restart with the old key still in the config.
func TestConfigClientsBootstrapOnly(t *testing.T) {
	t.Parallel()
	k1, k2 := newKey(t), newKey(t)
	stateDir := t.TempDir()
	srv := startServerWith(t, map[string]wg.Key{"home": k1}, map[string]any{"StateDir": stateDir})
	if got := srv.clients(t)["home"].PublicKey; got != k1.PublicKey().String() {
		t.Fatalf("bootstrap: key %s", got)
	}
	if code, body, err := srv.call("PUT", "/clients/home", map[string]string{"PublicKey": k2.PublicKey().String()}); err != nil || code != 200 {
		t.Fatalf("rotate: %d %s %v", code, body, err)
	}
	srv.stop(t)
	srv.start(t)
	if got := srv.clients(t)["home"].PublicKey; got != k2.PublicKey().String() {
		t.Errorf("after restart the key is %s, want the rotated %s", got, k2.PublicKey())
	}
	waitUntil(t, 5*time.Second, "a warning about the ignored config entry", func() bool {
		return strings.Contains(srv.logs.String(), "ignored") && strings.Contains(srv.logs.String(), "client=home")
	})
}
