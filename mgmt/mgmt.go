// Package mgmt serves threshold's management HTTP API: PUT and GET
// /tunnels, GET /clients, PUT and DELETE /clients/{ClientId}, GET /healthz.
// It only translates HTTP to calls on a Backend and errors to status codes.
package mgmt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/thresholdtunnel/threshold/forward"
)

// Client states, as in the original threshold.
const (
	ClientUnknown      = "ClientUnknown"
	ClientConnected    = "ClientConnected"
	ClientDisconnected = "ClientDisconnected"
)

// ClientStatus is one entry of GET /clients.
type ClientStatus struct {
	CurrentState  string
	LastState     string
	PublicKey     string
	TunnelAddress string
	// LastHandshake is the last WireGuard handshake; absent if none yet.
	LastHandshake *time.Time `json:",omitempty"`
	// BytesIn and BytesOut are WireGuard's counters for the client's
	// peer (encrypted bytes received from and sent to it).
	BytesIn  uint64
	BytesOut uint64
	// Socks5Enabled tells whether the client may use SOCKS5 egress; the
	// byte counts are its egress payload, sent to and received from the
	// destinations.
	Socks5Enabled       bool
	Socks5BytesSent     uint64
	Socks5BytesReceived uint64
}

// ClientRegistration is the body of PUT /clients/{ClientId}.
type ClientRegistration struct {
	PublicKey string
	// Socks5Enabled lets the client use SOCKS5 egress; true when absent.
	Socks5Enabled *bool `json:",omitempty"`
}

// Backend is what the API drives. Errors wrapping ErrInvalid or
// forward.ErrInvalid become 400, ErrNotFound 404, ErrConflict or
// forward.ErrListen 409; a *forward.ProblemsError lists its problems.
type Backend interface {
	Tunnels() []forward.Tunnel
	SetTunnels([]forward.Tunnel) ([]forward.Tunnel, error)
	Clients() map[string]ClientStatus
	PutClient(clientID string, reg ClientRegistration) (ClientStatus, error)
	DeleteClient(clientID string) error
}

var (
	ErrInvalid  = errors.New("invalid request")
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 1 << 20

// Options are the optional parts of the API.
type Options struct {
	// Auth guards every endpoint but /healthz; nil means no authentication.
	Auth *Auth
	// Metrics, if set, is served on GET /metrics, and gets a counter of
	// management requests by method and status.
	Metrics *prometheus.Registry
}

// NewHandler returns the API's HTTP handler.
func NewHandler(b Backend, log *slog.Logger, opts Options) (http.Handler, error) {
	if b == nil || log == nil {
		return nil, errors.New("mgmt: backend and logger are required")
	}
	a := &api{b: b, log: log}
	api := http.NewServeMux()
	api.HandleFunc("GET /tunnels", a.getTunnels)
	api.HandleFunc("PUT /tunnels", a.putTunnels)
	api.HandleFunc("GET /clients", a.getClients)
	api.HandleFunc("PUT /clients/{id}", a.putClient)
	api.HandleFunc("DELETE /clients/{id}", a.deleteClient)
	if opts.Metrics != nil {
		api.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics, promhttp.HandlerOpts{}))
	}
	var guarded http.Handler = api
	if opts.Auth != nil {
		guarded = opts.Auth.Wrap(api)
	}
	root := http.NewServeMux()
	// Liveness reveals nothing, and probes rarely hold credentials.
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		a.reply(w, r, http.StatusOK, map[string]string{"status": "ok"})
	})
	root.Handle("/", guarded)
	if opts.Metrics == nil {
		return root, nil
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_management_requests_total",
		Help: "Management API requests by method and HTTP status.",
	}, []string{"method", "code"})
	if err := opts.Metrics.Register(requests); err != nil {
		return nil, fmt.Errorf("mgmt: registering metrics: %w", err)
	}
	return promhttp.InstrumentHandlerCounter(requests, root), nil
}

type api struct {
	b   Backend
	log *slog.Logger
}

type errorBody struct {
	Error    string
	Problems []string `json:",omitempty"`
}

func (a *api) reply(w http.ResponseWriter, r *http.Request, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		a.log.Error("encoding reply", "err", err)
		code, body = http.StatusInternalServerError, []byte(`{"Error":"encoding reply failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
	a.log.Debug("management request", "method", r.Method, "path", r.URL.Path, "status", code)
}

func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrInvalid), errors.Is(err, forward.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, ErrConflict), errors.Is(err, forward.ErrListen):
		code = http.StatusConflict
	}
	body := errorBody{Error: err.Error()}
	var pe *forward.ProblemsError
	if errors.As(err, &pe) {
		body.Error = pe.Kind.Error()
		body.Problems = pe.Problems
	}
	if code == http.StatusInternalServerError {
		a.log.Error("management request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		a.log.Info("management request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	a.reply(w, r, code, body)
}

// decode reads exactly one JSON value with no unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("%w: body larger than %d bytes", ErrInvalid, MaxBodyBytes)
		}
		return fmt.Errorf("%w: malformed JSON: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: body holds more than one JSON value", ErrInvalid)
	}
	return nil
}

func (a *api) getTunnels(w http.ResponseWriter, r *http.Request) {
	ts := a.b.Tunnels()
	if ts == nil {
		ts = []forward.Tunnel{}
	}
	a.reply(w, r, http.StatusOK, ts)
}

func (a *api) putTunnels(w http.ResponseWriter, r *http.Request) {
	var ts []forward.Tunnel
	if err := decode(w, r, &ts); err != nil {
		a.fail(w, r, err)
		return
	}
	if ts == nil {
		a.fail(w, r, fmt.Errorf("%w: body must be a JSON list of tunnels (use [] for none)", ErrInvalid))
		return
	}
	applied, err := a.b.SetTunnels(ts)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if applied == nil {
		applied = []forward.Tunnel{}
	}
	a.reply(w, r, http.StatusOK, applied)
}

func (a *api) getClients(w http.ResponseWriter, r *http.Request) {
	a.reply(w, r, http.StatusOK, a.b.Clients())
}

func (a *api) putClient(w http.ResponseWriter, r *http.Request) {
	var reg ClientRegistration
	if err := decode(w, r, &reg); err != nil {
		a.fail(w, r, err)
		return
	}
	st, err := a.b.PutClient(r.PathValue("id"), reg)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.reply(w, r, http.StatusOK, st)
}

func (a *api) deleteClient(w http.ResponseWriter, r *http.Request) {
	if err := a.b.DeleteClient(r.PathValue("id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
	a.log.Debug("management request", "method", r.Method, "path", r.URL.Path, "status", http.StatusNoContent)
}
