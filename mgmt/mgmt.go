// Package mgmt serves threshold's management HTTP API: PUT and GET
// /tunnels, GET /clients, PUT and DELETE /clients/{ClientId}, GET /healthz.
// It only translates HTTP to calls on a Backend and errors to status codes.
package mgmt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
)

// Backend is what the API drives (control.Plane). Errors wrapping
// control.ErrInvalid become 400, control.ErrNotFound 404,
// control.ErrConflict 409, control.ErrBusy 429, anything else 500; a
// *control.Problems lists
// its problems.
type Backend interface {
	Tunnels() []forward.Tunnel
	SetTunnels([]forward.Tunnel) ([]forward.Tunnel, error)
	Clients() map[string]control.ClientStatus
	PutClient(clientID string, reg control.Registration) (control.ClientStatus, error)
	DeleteClient(clientID string) error
	CheckReachability(ctx context.Context, sel []forward.CheckSelector) ([]forward.CheckResult, error)
	ArmCheck(forward.ArmRequest) (forward.ArmedCheck, error)
	// CheckTunnels and CheckClient add to probs the problems SetTunnels
	// and PutClient would find, changing nothing: a body with JSON
	// problems is checked as far as it could be decoded, so that every
	// problem is answered at once.
	CheckTunnels(ts []forward.Tunnel, probs *control.Problems)
	CheckClient(clientID string, reg control.Registration, probs *control.Problems)
}

// errRequest classifies a request the API could not read.
var errRequest = control.ErrInvalid

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
	api.HandleFunc("POST /tunnels/check", a.checkTunnels)
	api.HandleFunc("POST /tunnels/check/arm", a.armCheck)
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
	b      Backend
	log    *slog.Logger
	checks bucket // rate limit of the check endpoints
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
	code := statusFor(err)
	body := errorBody{Error: err.Error()}
	var pe *control.Problems
	if errors.As(err, &pe) {
		body.Error = pe.Title()
		body.Problems = pe.Lines()
	}
	if code == http.StatusInternalServerError {
		a.log.Error("management request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else if pe != nil {
		// The count, not the list: a hostile body must not make a huge
		// log line. The caller got the list.
		a.log.Info("management request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", pe.Title(), "problems", pe.Len())
		a.log.Debug("management request refused: problems", "method", r.Method, "path", r.URL.Path, "problems", body.Problems)
	} else {
		a.log.Info("management request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	a.reply(w, r, code, body)
}

// body reads a request body of at most MaxBodyBytes.
func body(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, fmt.Errorf("%w request: body larger than %d bytes", errRequest, MaxBodyBytes)
	case err != nil:
		return nil, fmt.Errorf("%w request: reading the body: %v", errRequest, err)
	}
	return data, nil
}

// decode reads the body into v, strictly: every JSON problem placed by
// byte offset and named by its field path under root, in probs, together
// with the problems check finds in what could be decoded (check runs
// only if the JSON left something meaningful to check). It reports
// whether the body can be acted on.
func decode(w http.ResponseWriter, r *http.Request, v any, root string, probs *control.Problems, check func()) (ok bool, err error) {
	data, err := body(w, r)
	if err != nil {
		return false, err
	}
	j := control.JSON{Root: root, Offsets: true, MaxElements: forward.MaxTunnels}
	if j.Decode(data, v, probs) && probs.Len() > 0 && check != nil {
		check()
	}
	return probs.Len() == 0, nil
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
	probs := control.NewProblems(control.ErrInvalid, "tunnel list")
	ok, err := decode(w, r, &ts, "tunnels", probs, func() { a.b.CheckTunnels(ts, probs) })
	switch {
	case err != nil:
		a.fail(w, r, err)
		return
	case !ok:
		a.fail(w, r, probs)
		return
	case ts == nil:
		a.fail(w, r, fmt.Errorf("%w request: body must be a JSON list of tunnels (use [] for none)", errRequest))
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
	var reg control.Registration
	id := r.PathValue("id")
	probs := control.NewProblems(control.ErrInvalid, "client registration")
	ok, err := decode(w, r, &reg, "", probs, func() { a.b.CheckClient(id, reg, probs) })
	switch {
	case err != nil:
		a.fail(w, r, err)
		return
	case !ok:
		a.fail(w, r, probs)
		return
	}
	st, err := a.b.PutClient(id, reg)
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
