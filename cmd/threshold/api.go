package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/thresholdtunnel/threshold/server"
)

// apiFlags are how threshold status and threshold check reach a server's
// management API, with the same credentials the server's config names:
// a bearer token file (ManagementTokenFile) and/or mutual TLS (a CA and a
// client certificate). On the server itself, --config server.json gives
// the address, the token file and the CA.
type apiFlags struct {
	config    string
	url       string
	tokenFile string
	caFile    string
	certFile  string
	keyFile   string
}

func (f *apiFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "a server config (server.json): the management API's address, ManagementTokenFile and CaCertificateFile are taken from it")
	fs.StringVar(&f.url, "management", "", "the management API's URL, e.g. https://203.0.113.10:9057 (instead of or over --config)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the management token (as ManagementTokenFile)")
	fs.StringVar(&f.caFile, "ca", "", "CA certificate that signed the API's certificate (as CaCertificateFile)")
	fs.StringVar(&f.certFile, "cert", "", "client certificate for mutual TLS")
	fs.StringVar(&f.keyFile, "key", "", "key of the client certificate")
}

// apiClient calls a management API.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// client builds the API client the flags describe.
func (f *apiFlags) client() (*apiClient, error) {
	base, tokenFile, caFile := f.url, f.tokenFile, f.caFile
	if f.config != "" {
		var cfg server.Config
		if err := loadConfig(f.config, &cfg, func() error { return server.Check(cfg) }); err != nil {
			return nil, err
		}
		cfg.FillDefaults()
		if base == "" {
			base = managementURL(cfg)
		}
		if tokenFile == "" {
			tokenFile = cfg.ManagementTokenFile
		}
		if caFile == "" && cfg.ServerTlsCertificateFile != "" {
			caFile = cfg.CaCertificateFile
		}
		if cfg.CaCertificateFile != "" && f.certFile == "" {
			return nil, fmt.Errorf("%s asks for mutual TLS: give a client certificate with --cert and --key", f.config)
		}
	}
	if base == "" {
		return nil, errors.New("say where the management API is: --config server.json on the server, or --management URL")
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	base = strings.TrimRight(base, "/")
	c := &apiClient{base: base}
	if tokenFile != "" {
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading the token: %w", err)
		}
		c.token = strings.TrimSpace(string(data))
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading the CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	if (f.certFile == "") != (f.keyFile == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if f.certFile != "" {
		cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	c.http = &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: nil, ResponseHeaderTimeout: 45 * time.Second},
	}
	return c, nil
}

// managementURL is where a server with cfg serves its API, as seen from
// the same machine: an unspecified address is reached on loopback.
func managementURL(cfg server.Config) string {
	host := cfg.ManagementAddress
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if a.Is6() {
			host = "::1"
		}
	}
	scheme := "http"
	if cfg.ServerTlsCertificateFile != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(cfg.ManagementPort))
}

// apiError is a refusal by the API, with its problems.
type apiError struct {
	Code     int
	Error_   string `json:"Error"`
	Problems []string
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("management API answered %d: %s", e.Code, e.Error_)
	if len(e.Problems) > 0 {
		msg += ": " + strings.Join(e.Problems, "; ")
	}
	return msg
}

// do calls method path with body (JSON, unless nil) and decodes the answer
// into out. A request refused for its rate (429) is sent again after the
// Retry-After the API asks for, while ctx allows.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return err
		}
	}
	for {
		wait, err := c.once(ctx, method, path, data, out)
		if wait <= 0 {
			return err
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// once makes one call; wait is how long the API asked to wait before
// trying again, if it refused the call for its rate.
func (c *apiClient) once(ctx context.Context, method, path string, body []byte, out any) (wait time.Duration, err error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return 0, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("calling the management API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, fmt.Errorf("reading the management API's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &apiError{Code: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Error_ == "" {
			e.Error_ = strings.TrimSpace(string(data))
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs >= 0 && secs <= 60 {
				wait = max(time.Duration(secs)*time.Second, 100*time.Millisecond)
			}
		}
		return wait, e
	}
	if err := json.Unmarshal(data, out); err != nil {
		return 0, fmt.Errorf("the management API's answer: %w", err)
	}
	return 0, nil
}
