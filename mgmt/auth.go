// Certificates for the management API's mutual TLS, made with openssl
// (POSIX shell, OpenSSL 1.1.1 or later). Run in an empty directory. The
// commands between the markers are run verbatim by TestAuthOpenSSLCommands
// (mgmt/auth_test.go), so they stay correct.
//
// BEGIN openssl commands
//	# CA: key and self-signed certificate. Keep ca.key offline.
//	openssl ecparam -name prime256v1 -genkey -noout -out ca.key
//	openssl req -new -key ca.key -subj "/CN=threshold management CA" -out ca.csr
//	printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' >ca.ext
//	openssl x509 -req -in ca.csr -signkey ca.key -days 3650 -extfile ca.ext -out ca.crt
//	# Server: the name clients dial must be in subjectAltName
//	# (IP:127.0.0.1 here; for example IP:192.0.2.10 or DNS:mgmt.example.com).
//	openssl ecparam -name prime256v1 -genkey -noout -out server.key
//	openssl req -new -key server.key -subj "/CN=threshold management API" -out server.csr
//	printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >server.ext
//	openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile server.ext -out server.crt
//	# Client: one certificate per operator or tool (change CN and file names).
//	openssl ecparam -name prime256v1 -genkey -noout -out client.key
//	openssl req -new -key client.key -subj "/CN=admin" -out client.csr
//	printf 'extendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >client.ext
//	openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile client.ext -out client.crt
//	chmod 600 ca.key server.key client.key
// END openssl commands
//
// Server config: CaCertificateFile ca.crt, ServerTlsCertificateFile
// server.crt, ServerTlsKeyFile server.key. A client then calls, e.g.:
//
//	curl --cacert ca.crt --cert client.crt --key client.key https://127.0.0.1:9057/tunnels
//
// Bearer token alternative (ManagementTokenFile mgmt.token):
//
//	(umask 077; openssl rand -hex 32 >mgmt.token)
//	curl -H "Authorization: Bearer $(cat mgmt.token)" http://127.0.0.1:9057/tunnels

package mgmt

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
)

// MinTokenBytes is the shortest accepted management token, after trimming
// surrounding whitespace.
const MinTokenBytes = 16

// AuthConfig says how the management API authenticates its callers. Field
// names match the server config's, so Problems reads naturally to operators.
type AuthConfig struct {
	// Mutual TLS, as in the original threshold: all three or none.
	// CaCertificateFile holds the PEM CA certificate(s) that client
	// certificates must chain to; the other two are the server's PEM
	// certificate (chain) and private key.
	CaCertificateFile, ServerTlsCertificateFile, ServerTlsKeyFile string
	// ManagementTokenFile holds a bearer token (at least MinTokenBytes
	// printable ASCII characters, no spaces; surrounding whitespace is
	// ignored). Alone or together with mutual TLS.
	ManagementTokenFile string
	// ListenAddress is the address the API will listen on. Without mutual
	// TLS or a token it must be a loopback address.
	ListenAddress netip.Addr
	// Logger, if set, gets a line for each refused request (never the
	// token). Optional.
	Logger *slog.Logger
}

// Auth authenticates management API requests; see NewAuth.
type Auth struct {
	tlsConfig *tls.Config        // nil without mutual TLS
	token     *[sha256.Size]byte // SHA-256 of the token; nil without one
	log       *slog.Logger
	// logRefused throttles the refusal lines: anyone who reaches the
	// port can cause them.
	logRefused *forward.LogThrottle
}

// NewAuth checks c and loads its files, each once. It reports every
// problem at once, each starting with the field it is about, in a
// *control.Problems.
func NewAuth(c AuthConfig) (*Auth, error) {
	p := control.NewProblems(control.ErrInvalid, "management authentication")
	a := c.load(p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return a, nil
}

// load reads and checks everything; a is only usable if p stays empty.
func (c AuthConfig) load(p *control.Problems) (a *Auth) {
	a = &Auth{log: c.Logger, logRefused: forward.NewLogThrottle()}
	tlsFields := []struct{ name, value string }{
		{"CaCertificateFile", c.CaCertificateFile},
		{"ServerTlsCertificateFile", c.ServerTlsCertificateFile},
		{"ServerTlsKeyFile", c.ServerTlsKeyFile},
	}
	var set []string
	for _, f := range tlsFields {
		if f.value != "" {
			set = append(set, f.name)
		}
	}
	mtls := len(set) > 0
	if mtls && len(set) < len(tlsFields) {
		for _, f := range tlsFields {
			if f.value == "" {
				p.Addf(f.name, "is not set; mutual TLS needs all three of CaCertificateFile, ServerTlsCertificateFile and ServerTlsKeyFile (set: %s)", strings.Join(set, ", "))
			}
		}
	}
	var pool *x509.CertPool
	if c.CaCertificateFile != "" {
		pool = loadCAs(p, c.CaCertificateFile)
	}
	var certPEM, keyPEM []byte
	if c.ServerTlsCertificateFile != "" {
		certPEM = readFile(p, "ServerTlsCertificateFile", c.ServerTlsCertificateFile)
	}
	if c.ServerTlsKeyFile != "" {
		keyPEM = readFile(p, "ServerTlsKeyFile", c.ServerTlsKeyFile)
	}
	var cert tls.Certificate
	certOK := false
	if certPEM != nil && keyPEM != nil {
		var err error
		if cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
			p.Addf("ServerTlsCertificateFile", "%q and ServerTlsKeyFile %q do not load as a certificate and its key: %v", c.ServerTlsCertificateFile, c.ServerTlsKeyFile, err)
		} else {
			certOK = checkServerCert(p, c.ServerTlsCertificateFile, cert)
		}
	}
	if pool != nil && certOK {
		a.tlsConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Certificates are asked for and, when given, verified in the
			// handshake; whether one is needed is decided per route (Wrap),
			// so that /healthz answers probes that hold none.
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    pool,
			Certificates: []tls.Certificate{cert},
		}
	}

	token := false
	if c.ManagementTokenFile != "" {
		token = true
		if raw := readFile(p, "ManagementTokenFile", c.ManagementTokenFile); raw != nil {
			if d, ok := checkToken(p, c.ManagementTokenFile, raw); ok {
				a.token = &d
			}
		}
	}

	switch {
	case !c.ListenAddress.IsValid():
		p.Addf("ListenAddress", "is not set")
	case !mtls && !token && !c.ListenAddress.IsLoopback():
		p.Addf("ListenAddress", "the management API would listen on %s, which is not a loopback address, without authentication; "+
			"set CaCertificateFile, ServerTlsCertificateFile and ServerTlsKeyFile (mutual TLS), "+
			"or ManagementTokenFile (bearer token), or set ManagementAddress to 127.0.0.1", c.ListenAddress)
	}
	return a
}

func readFile(p *control.Problems, field, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		p.Addf(field, "cannot read: %v", err)
		return nil
	}
	return b
}

// loadCAs accepts only PEM CERTIFICATE blocks, each a valid CA certificate.
func loadCAs(p *control.Problems, path string) *x509.CertPool {
	const field = "CaCertificateFile"
	b := readFile(p, field, path)
	if b == nil {
		return nil
	}
	pool := x509.NewCertPool()
	n, bad := 0, false
	now := time.Now()
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		n++
		if block.Type != "CERTIFICATE" {
			p.Addf(field, "%q: PEM block %d is a %q, not a CERTIFICATE; the file must hold only CA certificates", path, n, block.Type)
			bad = true
			continue
		}
		crt, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			p.Addf(field, "%q: certificate %d does not parse: %v", path, n, err)
			bad = true
			continue
		}
		if !crt.BasicConstraintsValid || !crt.IsCA {
			p.Addf(field, "%q: certificate %d (%s) is not a CA certificate (basicConstraints CA:TRUE); did you mean the CA that signed it?", path, n, crt.Subject)
			bad = true
			continue
		}
		if now.After(crt.NotAfter) {
			p.Addf(field, "%q: certificate %d (%s) expired on %s", path, n, crt.Subject, crt.NotAfter.UTC().Format(time.RFC3339))
			bad = true
			continue
		}
		pool.AddCert(crt)
	}
	if n == 0 {
		p.Addf(field, "%q holds no PEM certificate", path)
		return nil
	}
	if bad {
		return nil
	}
	return pool
}

func checkServerCert(p *control.Problems, path string, cert tls.Certificate) bool {
	const field = "ServerTlsCertificateFile"
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			p.Addf(field, "%q: %v", path, err)
			return false
		}
	}
	ok := true
	if time.Now().After(leaf.NotAfter) {
		p.Addf(field, "%q (%s) expired on %s", path, leaf.Subject, leaf.NotAfter.UTC().Format(time.RFC3339))
		ok = false
	}
	if len(leaf.ExtKeyUsage) > 0 && !hasEKU(leaf, x509.ExtKeyUsageServerAuth) {
		p.Addf(field, "%q (%s) is not valid for TLS servers (extendedKeyUsage lacks serverAuth); is it a client certificate?", path, leaf.Subject)
		ok = false
	}
	return ok
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// checkToken never puts the token (or part of it) into a problem.
func checkToken(p *control.Problems, path string, raw []byte) ([sha256.Size]byte, bool) {
	const field = "ManagementTokenFile"
	t := bytes.TrimSpace(raw)
	switch {
	case len(t) == 0:
		p.Addf(field, "%q is empty", path)
		return [sha256.Size]byte{}, false
	case len(t) < MinTokenBytes:
		p.Addf(field, "%q: token is %d bytes, need at least %d (for example: openssl rand -hex 32)", path, len(t), MinTokenBytes)
		return [sha256.Size]byte{}, false
	}
	for _, ch := range t {
		if ch < 0x21 || ch > 0x7e {
			p.Addf(field, "%q: token must be one line of printable ASCII without spaces (for example: openssl rand -hex 32)", path)
			return [sha256.Size]byte{}, false
		}
	}
	return sha256.Sum256(t), true
}

// Mode is "mtls", "token", "mtls+token" or "none", for a startup log line.
func (a *Auth) Mode() string {
	switch {
	case a.tlsConfig != nil && a.token != nil:
		return "mtls+token"
	case a.tlsConfig != nil:
		return "mtls"
	case a.token != nil:
		return "token"
	}
	return "none"
}

// TLSConfig is nil without mutual TLS. Otherwise it requires TLS 1.2 or
// later, asks for a client certificate and verifies one that is given
// against CaCertificateFile (so expired or foreign client certificates
// fail the handshake), and serves the server certificate. A connection
// without a certificate is let through to the routes Wrap does not guard
// (/healthz). Each call returns a fresh copy.
func (a *Auth) TLSConfig() *tls.Config {
	if a.tlsConfig == nil {
		return nil
	}
	return a.tlsConfig.Clone()
}

// Wrap returns h behind the configured checks. With a token, requests need
// "Authorization: Bearer <token>": none gives 401 with WWW-Authenticate, a
// wrong one 403. With mutual TLS, requests must also have come over TLS with
// a client certificate that verified against the CA, is meant for clients
// (extendedKeyUsage clientAuth, present, not merely implied by its
// absence) and is not a CA certificate itself (a CA in the pool would
// otherwise verify as its own one-link chain), else 403. Without either, h
// is returned as is (NewAuth allows that only on loopback).
func (a *Auth) Wrap(h http.Handler) http.Handler {
	mtls, token := a.tlsConfig != nil, a.token
	if !mtls && token == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mtls {
			if msg := clientCertProblem(r.TLS); msg != "" {
				a.refuse(w, r, http.StatusForbidden, msg)
				return
			}
		}
		if token != nil {
			vals := r.Header.Values("Authorization")
			if len(vals) > 1 {
				a.refuse(w, r, http.StatusBadRequest, "more than one Authorization header")
				return
			}
			presented, ok := bearer(vals)
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="threshold"`)
				a.refuse(w, r, http.StatusUnauthorized, "an Authorization: Bearer token is required")
				return
			}
			d := sha256.Sum256([]byte(presented))
			if subtle.ConstantTimeCompare(d[:], token[:]) != 1 {
				a.refuse(w, r, http.StatusForbidden, "invalid token")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// clientCertProblem says why a connection's client certificate does not
// authenticate a management request; "" if it does.
func clientCertProblem(st *tls.ConnectionState) string {
	if st == nil || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return "a verified TLS client certificate is required"
	}
	leaf := st.VerifiedChains[0][0]
	if leaf.BasicConstraintsValid && leaf.IsCA {
		return "the client certificate is a CA certificate (basicConstraints CA:TRUE); use a client certificate the CA issued"
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "the client certificate is not meant for TLS clients (extendedKeyUsage lacks clientAuth)"
	}
	return ""
}

// bearer extracts the token of "Bearer <token>" (scheme case-insensitive).
func bearer(vals []string) (string, bool) {
	if len(vals) != 1 {
		return "", false
	}
	scheme, tok, _ := strings.Cut(strings.TrimSpace(vals[0]), " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return tok, true
}

func (a *Auth) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if a.log != nil {
		a.logRefused.Log(a.log, slog.LevelInfo, "management request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", code, "err", msg)
	}
	body, _ := json.Marshal(errorBody{Error: msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
}

// NewHTTPServer returns an http.Server for the management API with bounded
// timeouts and header size. With a non-nil tlsConfig (Auth.TLSConfig),
// serve it with srv.ServeTLS(ln, "", ""); otherwise with srv.Serve(ln).
func NewHTTPServer(h http.Handler, tlsConfig *tls.Config, errorLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errorLog,
	}
}
