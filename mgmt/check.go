package mgmt

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
)

// Reachability checks: POST /tunnels/check checks tunnels through their
// clients; POST /tunnels/check/arm arms a one-time token for an outside
// probe (threshold check). Each check may cost a backend one connect, so
// both share a rate limit.

// Check rate limit: a burst of checkBurst calls, then one each
// checkEvery.
const (
	checkBurst = 5
	checkEvery = time.Second
)

// CheckBody is the optional body of POST /tunnels/check: which tunnels to
// check; all when it is left out or empty.
type CheckBody struct {
	Tunnels []forward.CheckSelector
}

// CheckReply answers POST /tunnels/check: OK when every tunnel checked
// passed.
type CheckReply struct {
	OK      bool
	Results []forward.CheckResult
}

// bucket is a token bucket.
type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// take takes one token, or says how long until there is one.
func (b *bucket) take(now time.Time) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last.IsZero() {
		b.tokens = checkBurst
	} else {
		b.tokens = math.Min(checkBurst, b.tokens+now.Sub(b.last).Seconds()/checkEvery.Seconds())
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * float64(checkEvery))
}

// limited refuses a check over the rate limit with 429 and Retry-After.
func (a *api) limited(w http.ResponseWriter, r *http.Request) bool {
	ok, wait := a.checks.take(time.Now())
	if ok {
		return false
	}
	secs := int(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	a.fail(w, r, fmt.Errorf("%w: checks are limited to %d at once and one a second; retry in %d s", control.ErrBusy, checkBurst, secs))
	return true
}

func (a *api) checkTunnels(w http.ResponseWriter, r *http.Request) {
	if a.limited(w, r) {
		return
	}
	data, err := body(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req CheckBody
	if len(bytes.TrimSpace(data)) > 0 { // no body: check every tunnel
		probs := control.NewProblems(control.ErrInvalid, "check request")
		if !(control.JSON{Offsets: true, MaxElements: forward.MaxCheckedTunnels}).Decode(data, &req, probs) || probs.Len() > 0 {
			a.fail(w, r, probs)
			return
		}
	}
	res, err := a.b.CheckReachability(r.Context(), req.Tunnels)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	reply := CheckReply{OK: true, Results: res}
	if reply.Results == nil {
		reply.Results = []forward.CheckResult{}
	}
	for _, c := range res {
		reply.OK = reply.OK && c.OK
	}
	a.reply(w, r, http.StatusOK, reply)
}

func (a *api) armCheck(w http.ResponseWriter, r *http.Request) {
	if a.limited(w, r) {
		return
	}
	var req forward.ArmRequest
	probs := control.NewProblems(control.ErrInvalid, "arm request")
	ok, err := decode(w, r, &req, "", probs, nil)
	switch {
	case err != nil:
		a.fail(w, r, err)
		return
	case !ok:
		a.fail(w, r, probs)
		return
	}
	armed, err := a.b.ArmCheck(req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.reply(w, r, http.StatusOK, armed)
}

// statusFor maps the kinds of refusal to HTTP codes.
func statusFor(err error) int {
	switch {
	case errors.Is(err, control.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, control.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, control.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, control.ErrBusy):
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}
