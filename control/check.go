package control

import (
	"context"
	"errors"

	"github.com/thresholdtunnel/threshold/forward"
)

// ErrBusy classifies a request refused because too many are under way:
// 429 in the management API.
var ErrBusy = errors.New("busy")

// Checker is what reachability checks need of the public side
// (forward.Gateway).
type Checker interface {
	Check(ctx context.Context, sel []forward.CheckSelector) ([]forward.CheckResult, error)
	ArmCheck(forward.ArmRequest) (forward.ArmedCheck, error)
}

// CheckReachability checks the tunnels sel names (all if it is empty) through
// their active clients; see forward.Gateway.Check. It needs a Gateway
// that is a Checker.
func (p *Plane) CheckReachability(ctx context.Context, sel []forward.CheckSelector) ([]forward.CheckResult, error) {
	c, ok := p.opts.Gateway.(Checker)
	if !ok {
		return nil, errors.New("control: the gateway cannot check tunnels")
	}
	res, err := c.Check(ctx, sel)
	if err != nil {
		return nil, checkError("tunnel check", err)
	}
	return res, nil
}

// ArmCheck arms a one-time token for an outside probe of a tunnel; see
// forward.Gateway.ArmCheck.
func (p *Plane) ArmCheck(req forward.ArmRequest) (forward.ArmedCheck, error) {
	c, ok := p.opts.Gateway.(Checker)
	if !ok {
		return forward.ArmedCheck{}, errors.New("control: the gateway cannot check tunnels")
	}
	a, err := c.ArmCheck(req)
	if err != nil {
		return forward.ArmedCheck{}, checkError("check", err)
	}
	return a, nil
}

// checkError turns the gateway's refusal of a check into Problems of the
// matching kind.
func checkError(what string, err error) error {
	kind := ErrInvalid
	switch {
	case errors.Is(err, forward.ErrTooManyChecks):
		kind = ErrBusy
	case errors.Is(err, forward.ErrNoTunnel):
		kind = ErrNotFound
	case errors.Is(err, forward.ErrInvalid):
	default:
		return err
	}
	probs := NewProblems(kind, what)
	probs.AddErr(err)
	return probs
}
