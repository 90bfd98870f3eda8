package mgmt

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/control"
)

// --- test PKI ---

type authIssued struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	tlsCert tls.Certificate
}

func authNewKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue signs tmpl with parent (self-signed if parent is nil).
func authIssue(t *testing.T, tmpl *x509.Certificate, parent *authIssued) *authIssued {
	t.Helper()
	key := authNewKey(t)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &authIssued{cert: cert, key: key, tlsCert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}
}

func authCATemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func authClientTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

type authPKI struct {
	dir                            string
	ca, server                     *authIssued
	good, otherCA, expired         *authIssued
	caFile, serverCert, serverKey  string
	clientCert, clientKey          string // good client's files
	otherCAFile, expiredCAFile     string
	leafAsCAFile, keyAsCAFile      string
	garbageFile, badCertBlockFile  string
	clientAsServerCert             string // with clientKey: a pair without serverAuth
	expiredServerCert, expiredSKey string
}

func authWritePEM(t *testing.T, path string, blocks ...*pem.Block) string {
	t.Helper()
	var b bytes.Buffer
	for _, bl := range blocks {
		if err := pem.Encode(&b, bl); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func authCertBlock(c *authIssued) *pem.Block {
	return &pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}
}

func authKeyBlock(t *testing.T, c *authIssued) *pem.Block {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
}

func newAuthPKI(t *testing.T) *authPKI {
	t.Helper()
	p := &authPKI{dir: t.TempDir()}
	f := func(name string) string { return filepath.Join(p.dir, name) }
	p.ca = authIssue(t, authCATemplate("test management CA"), nil)
	p.server = authIssue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "threshold management API"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, p.ca)
	p.good = authIssue(t, authClientTemplate("admin"), p.ca)
	other := authIssue(t, authCATemplate("some other CA"), nil)
	p.otherCA = authIssue(t, authClientTemplate("admin"), other)
	exp := authClientTemplate("admin")
	exp.NotBefore, exp.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	p.expired = authIssue(t, exp, p.ca)

	p.caFile = authWritePEM(t, f("ca.crt"), authCertBlock(p.ca))
	p.serverCert = authWritePEM(t, f("server.crt"), authCertBlock(p.server))
	p.serverKey = authWritePEM(t, f("server.key"), authKeyBlock(t, p.server))
	p.clientCert = authWritePEM(t, f("client.crt"), authCertBlock(p.good))
	p.clientKey = authWritePEM(t, f("client.key"), authKeyBlock(t, p.good))
	p.otherCAFile = authWritePEM(t, f("other-ca.crt"), authCertBlock(other))
	expCA := authCATemplate("expired CA")
	expCA.NotBefore, expCA.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	p.expiredCAFile = authWritePEM(t, f("expired-ca.crt"), authCertBlock(authIssue(t, expCA, nil)))
	p.leafAsCAFile = p.serverCert
	p.keyAsCAFile = p.serverKey
	p.garbageFile = f("garbage")
	if err := os.WriteFile(p.garbageFile, []byte("this is not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.badCertBlockFile = authWritePEM(t, f("bad-block.crt"), &pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	p.clientAsServerCert = p.clientCert
	expSrv := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "expired server"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore:   time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
	}
	es := authIssue(t, expSrv, p.ca)
	p.expiredServerCert = authWritePEM(t, f("expired-server.crt"), authCertBlock(es))
	p.expiredSKey = authWritePEM(t, f("expired-server.key"), authKeyBlock(t, es))
	return p
}

func (p *authPKI) mtlsConfig() AuthConfig {
	return AuthConfig{
		CaCertificateFile:        p.caFile,
		ServerTlsCertificateFile: p.serverCert,
		ServerTlsKeyFile:         p.serverKey,
		ListenAddress:            netip.MustParseAddr("127.0.0.1"),
	}
}

func authWriteToken(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mgmt.token")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// --- serving ---

// authSyncBuffer is written by server goroutines and read by the test.
type authSyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *authSyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *authSyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// authOKHandler answers 200 with the client certificate's CN, if any.
var authOKHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	cn := "-"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cn = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	io.WriteString(w, "ok "+cn)
})

// serve runs h behind a.Wrap on a 127.0.0.1:0 listener, over TLS if
// tlsConfig is set, and returns the base URL.
func authServe(t *testing.T, h http.Handler, tlsConfig *tls.Config, errorLog io.Writer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if errorLog == nil {
		errorLog = io.Discard
	}
	srv := NewHTTPServer(h, tlsConfig, log.New(errorLog, "", 0))
	done := make(chan error, 1)
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		go func() { done <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { done <- srv.Serve(ln) }()
	}
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return scheme + "://" + ln.Addr().String()
}

func authHTTPClient(t *testing.T, tlsConfig *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: tlsConfig, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// clientTLS trusts the test CA and always presents cert (even when its
// issuer is not among the server's acceptable CAs), or none if cert is nil.
func (p *authPKI) clientTLS(cert *authIssued) *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.cert)
	return &tls.Config{
		RootCAs: roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return &cert.tlsCert, nil
		},
	}
}

type authReply struct {
	code int
	body string
	hdr  http.Header
}

func authDo(t *testing.T, c *http.Client, url string, hdr map[string]string) (authReply, error) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return authReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return authReply{resp.StatusCode, string(b), resp.Header}, nil
}

func authMustNew(t *testing.T, c AuthConfig) *Auth {
	t.Helper()
	a, err := NewAuth(c)
	if err != nil {
		t.Fatalf("NewAuth: %v", err)
	}
	return a
}

// --- mutual TLS ---

func TestAuthMTLS(t *testing.T) {
	p := newAuthPKI(t)
	a := authMustNew(t, p.mtlsConfig())
	if a.Mode() != "mtls" {
		t.Errorf("Mode = %q, want mtls", a.Mode())
	}
	errLog := &authSyncBuffer{}
	url := authServe(t, a.Wrap(authOKHandler), a.TLSConfig(), errLog) + "/tunnels"

	t.Run("valid client certificate", func(t *testing.T) {
		r, err := authDo(t, authHTTPClient(t, p.clientTLS(p.good)), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.code != http.StatusOK || r.body != "ok admin" {
			t.Fatalf("got %d %q, want 200 \"ok admin\"", r.code, r.body)
		}
	})
	t.Run("valid client certificate over TLS 1.2", func(t *testing.T) {
		cfg := p.clientTLS(p.good)
		cfg.MaxVersion = tls.VersionTLS12
		r, err := authDo(t, authHTTPClient(t, cfg), url, nil)
		if err != nil || r.code != http.StatusOK {
			t.Fatalf("got %v, %v; want 200", r.code, err)
		}
	})

	refused := []struct {
		name    string
		cert    *authIssued
		maxVer  uint16
		minVer  uint16
		wantErr string // the server's TLS alert, as the client reports it
	}{
		{"client certificate from another CA", p.otherCA, 0, 0, "unknown certificate authority"},
		{"expired client certificate", p.expired, 0, 0, "expired certificate"},
		{"server certificate used as client certificate", p.server, 0, 0, "bad certificate"},
		{"TLS 1.1", p.good, tls.VersionTLS11, tls.VersionTLS10, "protocol version"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			cfg := p.clientTLS(tc.cert)
			cfg.MaxVersion, cfg.MinVersion = tc.maxVer, tc.minVer
			r, err := authDo(t, authHTTPClient(t, cfg), url, nil)
			if err == nil {
				t.Fatalf("got an answer (%d %q), want a failed handshake", r.code, r.body)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}

	// The handshake lets these through (a certificate is asked for, not
	// required, so that /healthz answers without one); Wrap refuses them.
	noEKU := authClientTemplate("no extendedKeyUsage")
	noEKU.ExtKeyUsage = nil
	forbidden := []struct {
		name   string
		cert   *authIssued
		maxVer uint16
		want   string
	}{
		{"no client certificate", nil, 0, "a verified TLS client certificate is required"},
		{"no client certificate, TLS 1.2", nil, tls.VersionTLS12, "a verified TLS client certificate is required"},
		{"the CA's own certificate as a client certificate", p.ca, 0, "is a CA certificate"},
		{"a client certificate without extendedKeyUsage", authIssue(t, noEKU, p.ca), 0, "lacks clientAuth"},
	}
	for _, tc := range forbidden {
		t.Run(tc.name, func(t *testing.T) {
			cfg := p.clientTLS(tc.cert)
			cfg.MaxVersion = tc.maxVer
			r, err := authDo(t, authHTTPClient(t, cfg), url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.code != http.StatusForbidden || !strings.Contains(r.body, tc.want) {
				t.Fatalf("got %d %q, want 403 saying %q", r.code, r.body, tc.want)
			}
		})
	}

	t.Run("plain HTTP to the TLS port", func(t *testing.T) {
		r, err := authDo(t, authHTTPClient(t, nil), strings.Replace(url, "https://", "http://", 1), nil)
		if err == nil && r.code != http.StatusBadRequest {
			t.Fatalf("got %d %q, want an error or 400", r.code, r.body)
		}
		if strings.Contains(r.body, "ok") {
			t.Fatalf("handler ran: %q", r.body)
		}
	})
}

// Issue 15: with mutual TLS, /healthz answers a probe without a
// certificate, as documented; every other route still needs a good one.
func TestAuthMTLSPerRoute(t *testing.T) {
	p := newAuthPKI(t)
	a := authMustNew(t, p.mtlsConfig())
	h, err := NewHandler(&fakeBackend{}, slog.New(slog.DiscardHandler), Options{Auth: a})
	if err != nil {
		t.Fatal(err)
	}
	base := authServe(t, h, a.TLSConfig(), nil)
	none := authHTTPClient(t, p.clientTLS(nil))
	if r, err := authDo(t, none, base+"/healthz", nil); err != nil || r.code != http.StatusOK || !strings.Contains(r.body, "ok") {
		t.Fatalf("/healthz without a client certificate: %+v %v", r, err)
	}
	if r, err := authDo(t, none, base+"/tunnels", nil); err != nil || r.code != http.StatusForbidden {
		t.Fatalf("/tunnels without a client certificate: %+v %v", r, err)
	}
	if r, err := authDo(t, authHTTPClient(t, p.clientTLS(p.good)), base+"/tunnels", nil); err != nil || r.code != http.StatusOK {
		t.Fatalf("/tunnels with a good client certificate: %+v %v", r, err)
	}
	// A foreign certificate still fails the handshake, /healthz or not.
	if _, err := authDo(t, authHTTPClient(t, p.clientTLS(p.otherCA)), base+"/healthz", nil); err == nil {
		t.Fatal("a certificate from another CA passed the handshake")
	}
}

func TestAuthMTLSWrapRequiresVerifiedTLS(t *testing.T) {
	p := newAuthPKI(t)
	a := authMustNew(t, p.mtlsConfig())
	h := a.Wrap(authOKHandler)
	for name, st := range map[string]*tls.ConnectionState{
		"no TLS":                  nil,
		"TLS without client cert": {HandshakeComplete: true},
	} {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/tunnels", nil)
			req.TLS = st
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusForbidden {
				t.Fatalf("status %d, want 403", rec.Code)
			}
			authCheckErrorBody(t, rec.Body.String())
		})
	}
	t.Run("served over plain HTTP by mistake", func(t *testing.T) {
		url := authServe(t, h, nil, nil)
		r, err := authDo(t, authHTTPClient(t, nil), url+"/tunnels", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.code != http.StatusForbidden {
			t.Fatalf("got %d %q, want 403", r.code, r.body)
		}
	})
}

func authCheckErrorBody(t *testing.T, body string) {
	t.Helper()
	var eb struct{ Error string }
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil || eb.Error == "" {
		t.Fatalf("body %q is not {\"Error\":\"...\"}: %v", body, err)
	}
}

// --- bearer token ---

func TestAuthToken(t *testing.T) {
	const token = "s3cr3t-t0ken-0123456789abcdef"
	logs := &authSyncBuffer{}
	a := authMustNew(t, AuthConfig{
		ManagementTokenFile: authWriteToken(t, "\n  "+token+"\n"),
		ListenAddress:       netip.MustParseAddr("0.0.0.0"),
		Logger:              slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if a.Mode() != "token" {
		t.Errorf("Mode = %q, want token", a.Mode())
	}
	if a.TLSConfig() != nil {
		t.Error("TLSConfig is not nil without mutual TLS")
	}
	errLog := &authSyncBuffer{}
	url := authServe(t, a.Wrap(authOKHandler), nil, errLog) + "/clients"
	c := authHTTPClient(t, nil)

	cases := []struct {
		name     string
		auth     []string // Authorization header values
		wantCode int
	}{
		{"right token", []string{"Bearer " + token}, 200},
		{"right token, lower-case scheme", []string{"bearer " + token}, 200},
		{"missing header", nil, 401},
		{"empty header", []string{""}, 401},
		{"scheme without token", []string{"Bearer"}, 401},
		{"other scheme", []string{"Basic " + token}, 401},
		{"wrong token, same length", []string{"Bearer " + strings.Repeat("x", len(token))}, 403},
		{"wrong token, shorter", []string{"Bearer " + token[:len(token)-1]}, 403},
		{"wrong token, longer", []string{"Bearer " + token + "0"}, 403},
		{"wrong token, one byte", []string{"Bearer x"}, 403},
		{"two headers", []string{"Bearer " + token, "Bearer " + token}, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", url, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range tc.auth {
				req.Header.Add("Authorization", v)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tc.wantCode)
			}
			wwwAuth := resp.Header.Get("WWW-Authenticate")
			if tc.wantCode == 401 && !strings.HasPrefix(wwwAuth, "Bearer") {
				t.Errorf("401 with WWW-Authenticate %q, want Bearer", wwwAuth)
			}
			if tc.wantCode == 200 {
				if string(body) != "ok -" {
					t.Errorf("body %q", body)
				}
				return
			}
			authCheckErrorBody(t, string(body))
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if strings.Contains(string(body), token) || strings.Contains(wwwAuth, token) {
				t.Errorf("answer reveals the token: %q", body)
			}
		})
	}
	if !strings.Contains(logs.String(), "management request refused") {
		t.Errorf("refusals not logged: %q", logs.String())
	}
	for _, l := range []string{logs.String(), errLog.String()} {
		if strings.Contains(l, token) || strings.Contains(l, token[:len(token)-1]) {
			t.Errorf("log reveals the token: %q", l)
		}
	}
}

func TestAuthMTLSAndToken(t *testing.T) {
	p := newAuthPKI(t)
	const token = "0123456789abcdef0123456789abcdef"
	c := p.mtlsConfig()
	c.ManagementTokenFile = authWriteToken(t, token)
	c.ListenAddress = netip.MustParseAddr("::")
	a := authMustNew(t, c)
	if a.Mode() != "mtls+token" {
		t.Errorf("Mode = %q, want mtls+token", a.Mode())
	}
	url := authServe(t, a.Wrap(authOKHandler), a.TLSConfig(), nil) + "/healthz"
	good := authHTTPClient(t, p.clientTLS(p.good))
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"cert and token", map[string]string{"Authorization": "Bearer " + token}, 200},
		{"cert without token", nil, 401},
		{"cert with wrong token", map[string]string{"Authorization": "Bearer " + token[1:] + "x"}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := authDo(t, good, url, tc.hdr)
			if err != nil {
				t.Fatal(err)
			}
			if r.code != tc.want {
				t.Fatalf("got %d %q, want %d", r.code, r.body, tc.want)
			}
		})
	}
	t.Run("token without cert", func(t *testing.T) {
		r, err := authDo(t, authHTTPClient(t, p.clientTLS(nil)), url, map[string]string{"Authorization": "Bearer " + token})
		if err != nil || r.code != http.StatusForbidden || strings.Contains(r.body, "ok") {
			t.Fatalf("got %+v %v, want 403 without a client certificate", r, err)
		}
	})
}

func TestAuthNoAuthPassesThrough(t *testing.T) {
	a := authMustNew(t, AuthConfig{ListenAddress: netip.MustParseAddr("127.0.0.1")})
	if a.Mode() != "none" || a.TLSConfig() != nil {
		t.Fatalf("Mode %q, TLSConfig %v", a.Mode(), a.TLSConfig())
	}
	url := authServe(t, a.Wrap(authOKHandler), nil, nil)
	r, err := authDo(t, authHTTPClient(t, nil), url+"/tunnels", nil)
	if err != nil || r.code != 200 {
		t.Fatalf("got %d, %v; want 200", r.code, err)
	}
}

// --- configuration ---

var authFields = []string{"CaCertificateFile", "ServerTlsCertificateFile", "ServerTlsKeyFile", "ManagementTokenFile", "ListenAddress"}

func TestAuthProblems(t *testing.T) {
	p := newAuthPKI(t)
	lo := netip.MustParseAddr("127.0.0.1")
	missing := filepath.Join(p.dir, "does-not-exist")
	goodToken := authWriteToken(t, "0123456789abcdef\n") // exactly 16 bytes after trimming
	mtls := func(ca, crt, key string) AuthConfig {
		return AuthConfig{CaCertificateFile: ca, ServerTlsCertificateFile: crt, ServerTlsKeyFile: key, ListenAddress: lo}
	}
	cases := []struct {
		name string
		c    AuthConfig
		want []string // fields that must be named; none means no problems
	}{
		{"loopback without auth", AuthConfig{ListenAddress: lo}, nil},
		{"127.0.0.2 without auth", AuthConfig{ListenAddress: netip.MustParseAddr("127.0.0.2")}, nil},
		{"IPv6 ::1 without auth", AuthConfig{ListenAddress: netip.MustParseAddr("::1")}, nil},
		{"mutual TLS", p.mtlsConfig(), nil},
		{"token of exactly 16 bytes", AuthConfig{ManagementTokenFile: goodToken, ListenAddress: lo}, nil},
		{"non-loopback with token", AuthConfig{ManagementTokenFile: goodToken, ListenAddress: netip.MustParseAddr("0.0.0.0")}, nil},
		{"non-loopback with mutual TLS", mtls(p.caFile, p.serverCert, p.serverKey), nil},
		{"ListenAddress unset", AuthConfig{}, []string{"ListenAddress"}},

		{"only CaCertificateFile", AuthConfig{CaCertificateFile: p.caFile, ListenAddress: lo}, []string{"ServerTlsCertificateFile", "ServerTlsKeyFile"}},
		{"no ServerTlsKeyFile", mtls(p.caFile, p.serverCert, ""), []string{"ServerTlsKeyFile"}},
		{"no CaCertificateFile", mtls("", p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"CA file missing", mtls(missing, p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"CA file not PEM", mtls(p.garbageFile, p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"CA file with a broken certificate", mtls(p.badCertBlockFile, p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"CA file holds a key", mtls(p.keyAsCAFile, p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"CA file holds a leaf certificate", mtls(p.leafAsCAFile, p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"CA expired", mtls(p.expiredCAFile, p.serverCert, p.serverKey), []string{"CaCertificateFile"}},
		{"server cert missing", mtls(p.caFile, missing, p.serverKey), []string{"ServerTlsCertificateFile"}},
		{"server key missing", mtls(p.caFile, p.serverCert, missing), []string{"ServerTlsKeyFile"}},
		{"server cert not PEM", mtls(p.caFile, p.garbageFile, p.serverKey), []string{"ServerTlsCertificateFile"}},
		{"cert and key do not match", mtls(p.caFile, p.serverCert, p.clientKey), []string{"ServerTlsCertificateFile"}},
		{"files swapped", mtls(p.caFile, p.serverKey, p.serverCert), []string{"ServerTlsCertificateFile"}},
		{"client certificate as server certificate", mtls(p.caFile, p.clientAsServerCert, p.clientKey), []string{"ServerTlsCertificateFile"}},
		{"server certificate expired", mtls(p.caFile, p.expiredServerCert, p.expiredSKey), []string{"ServerTlsCertificateFile"}},

		{"token file missing", AuthConfig{ManagementTokenFile: missing, ListenAddress: lo}, []string{"ManagementTokenFile"}},
		{"token file empty", AuthConfig{ManagementTokenFile: authWriteToken(t, ""), ListenAddress: lo}, []string{"ManagementTokenFile"}},
		{"token file only whitespace", AuthConfig{ManagementTokenFile: authWriteToken(t, " \n\t\n"), ListenAddress: lo}, []string{"ManagementTokenFile"}},
		{"token of 15 bytes", AuthConfig{ManagementTokenFile: authWriteToken(t, "  0123456789abcde \n"), ListenAddress: lo}, []string{"ManagementTokenFile"}},
		{"token with a space", AuthConfig{ManagementTokenFile: authWriteToken(t, "0123456789 abcdef0123\n"), ListenAddress: lo}, []string{"ManagementTokenFile"}},
		{"token of two lines", AuthConfig{ManagementTokenFile: authWriteToken(t, "0123456789abcdef\n0123456789abcdef\n"), ListenAddress: lo}, []string{"ManagementTokenFile"}},

		{"everything wrong", AuthConfig{CaCertificateFile: p.garbageFile, ServerTlsKeyFile: missing, ManagementTokenFile: authWriteToken(t, "short")},
			[]string{"CaCertificateFile", "ServerTlsCertificateFile", "ServerTlsKeyFile", "ManagementTokenFile", "ListenAddress"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			probs := authProblems(tc.c)
			_, err := NewAuth(tc.c)
			if len(tc.want) == 0 {
				if len(probs) > 0 || err != nil {
					t.Fatalf("unexpected problems %q (NewAuth: %v)", probs, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("NewAuth accepted it; Problems = %q", probs)
			}
			for _, f := range tc.want {
				if !authHasPrefix(probs, f+":") {
					t.Errorf("no problem names %s: %q", f, probs)
				}
			}
			if strings.Contains(tc.name, "cert and key") || strings.Contains(tc.name, "swapped") {
				if !strings.Contains(strings.Join(probs, "\n"), "ServerTlsKeyFile") {
					t.Errorf("pair problem does not name ServerTlsKeyFile: %q", probs)
				}
			}
			for _, pr := range probs {
				if !authStartsWithField(authFields, pr) {
					t.Errorf("problem %q does not start with a field name", pr)
				}
				if !strings.Contains(err.Error(), pr) {
					t.Errorf("NewAuth error %q lacks problem %q", err, pr)
				}
			}
		})
	}
}

// authProblems is what NewAuth refuses in c, one line a problem.
func authProblems(c AuthConfig) []string {
	_, err := NewAuth(c)
	var p *control.Problems
	if errors.As(err, &p) {
		return p.Lines()
	}
	return nil
}

func authHasPrefix(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func authStartsWithField(fields []string, s string) bool {
	for _, f := range fields {
		if strings.HasPrefix(s, f+": ") {
			return true
		}
	}
	return false
}

func TestAuthProblemsNonLoopbackWithoutAuth(t *testing.T) {
	for _, addr := range []string{"0.0.0.0", "::", "192.0.2.10", "2001:db8::1", "10.0.0.1"} {
		t.Run(addr, func(t *testing.T) {
			probs := authProblems(AuthConfig{ListenAddress: netip.MustParseAddr(addr)})
			if len(probs) != 1 {
				t.Fatalf("Problems = %q, want one", probs)
			}
			for _, w := range []string{"ListenAddress:", addr, "CaCertificateFile", "ServerTlsCertificateFile", "ServerTlsKeyFile", "ManagementTokenFile", "ManagementAddress to 127.0.0.1"} {
				if !strings.Contains(probs[0], w) {
					t.Errorf("problem %q does not mention %q", probs[0], w)
				}
			}
		})
	}
}

func TestAuthProblemsNeverRevealToken(t *testing.T) {
	for _, tok := range []string{"tiny-secret", "with space secret value", "secret\x01control0123456"} {
		probs := authProblems(AuthConfig{ManagementTokenFile: authWriteToken(t, tok), ListenAddress: netip.MustParseAddr("::1")})
		if len(probs) == 0 {
			t.Fatalf("token %q accepted", tok)
		}
		for _, pr := range probs {
			if strings.Contains(pr, "secret") {
				t.Errorf("problem reveals the token: %q", pr)
			}
		}
	}
}

func TestAuthTLSConfig(t *testing.T) {
	p := newAuthPKI(t)
	a := authMustNew(t, p.mtlsConfig())
	c := a.TLSConfig()
	if c.MinVersion != tls.VersionTLS12 || c.ClientAuth != tls.VerifyClientCertIfGiven || c.ClientCAs == nil || len(c.Certificates) != 1 {
		t.Fatalf("TLSConfig = %+v", c)
	}
	if _, err := p.good.cert.Verify(x509.VerifyOptions{Roots: c.ClientCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("ClientCAs does not verify the good client: %v", err)
	}
	c.ClientAuth = tls.NoClientCert
	if a.TLSConfig().ClientAuth != tls.VerifyClientCertIfGiven {
		t.Error("changing the returned config changed Auth")
	}
}

func TestAuthNewHTTPServer(t *testing.T) {
	l := log.New(io.Discard, "", 0)
	tc := &tls.Config{}
	s := NewHTTPServer(authOKHandler, tc, l)
	if s.ReadHeaderTimeout != 10*time.Second || s.ReadTimeout != 30*time.Second || s.WriteTimeout != 30*time.Second ||
		s.IdleTimeout != 2*time.Minute || s.MaxHeaderBytes != 64<<10 || s.ErrorLog != l || s.TLSConfig != tc || s.Handler == nil {
		t.Fatalf("server = %+v", s)
	}
}

// TestAuthOpenSSLCommands runs the openssl commands documented at the top of
// auth.go and serves with the certificates they make.
func TestAuthOpenSSLCommands(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	src, err := os.ReadFile("auth.go")
	if err != nil {
		t.Fatal(err)
	}
	var script []string
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		switch {
		case line == "// BEGIN openssl commands":
			in = true
		case line == "// END openssl commands":
			in = false
		case in:
			cmd, ok := strings.CutPrefix(line, "//\t")
			if !ok {
				t.Fatalf("command line %q is not \"//<tab>command\"", line)
			}
			script = append(script, cmd)
		}
	}
	if len(script) < 10 {
		t.Fatalf("found only %d command lines in auth.go", len(script))
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "sh", "-e", "-u", "-c", strings.Join(script, "\n"))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl commands: %v\n%s", err, out)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	c := AuthConfig{
		CaCertificateFile:        f("ca.crt"),
		ServerTlsCertificateFile: f("server.crt"),
		ServerTlsKeyFile:         f("server.key"),
		ListenAddress:            netip.MustParseAddr("0.0.0.0"),
	}
	a := authMustNew(t, c)
	url := authServe(t, a.Wrap(authOKHandler), a.TLSConfig(), nil) + "/tunnels"

	caPEM, err := os.ReadFile(f("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt: no certificates")
	}
	cert, err := tls.LoadX509KeyPair(f("client.crt"), f("client.key"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := authDo(t, authHTTPClient(t, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.code != 200 || r.body != "ok admin" {
		t.Fatalf("got %d %q, want 200 \"ok admin\"", r.code, r.body)
	}
	// Without the client certificate the request is refused.
	if r, err := authDo(t, authHTTPClient(t, &tls.Config{RootCAs: roots}), url, nil); err != nil || r.code != http.StatusForbidden {
		t.Fatalf("without a client certificate: %+v %v", r, err)
	}
	// The CA's own certificate is no client certificate.
	caCert, err := tls.LoadX509KeyPair(f("ca.crt"), f("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := authDo(t, authHTTPClient(t, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{caCert}}), url, nil); err != nil || r.code != http.StatusForbidden {
		t.Fatalf("the CA's certificate as a client's: %+v %v", r, err)
	}
	// The openssl client key does not serve as the server's.
	c.ServerTlsKeyFile = f("client.key")
	if probs := authProblems(c); !authHasPrefix(probs, "ServerTlsKeyFile:") && !authHasPrefix(probs, "ServerTlsCertificateFile:") {
		t.Errorf("mismatched key accepted: %q", probs)
	}
}

// Refusals are logged through a throttle: anyone who reaches the port can
// cause them, and 100 must not make 100 lines.
func TestAuthRefusalsThrottled(t *testing.T) {
	logs := &authSyncBuffer{}
	a := authMustNew(t, AuthConfig{
		ManagementTokenFile: authWriteToken(t, "s3cr3t-t0ken-0123456789abcdef"),
		ListenAddress:       netip.MustParseAddr("0.0.0.0"),
		Logger:              slog.New(slog.NewTextHandler(logs, nil)),
	})
	url := authServe(t, a.Wrap(authOKHandler), nil, &authSyncBuffer{}) + "/clients"
	c := authHTTPClient(t, nil)
	for range 100 {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
	}
	if n := strings.Count(logs.String(), "management request refused"); n == 0 || n > 20 {
		t.Errorf("100 refusals made %d log lines, want 1-20:\n%s", n, logs.String())
	}
}
