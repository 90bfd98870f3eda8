package control

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of refusal. Every error the control plane returns for something
// it refused wraps one of them; the management API maps them to HTTP codes.
var (
	ErrInvalid  = errors.New("invalid")   // malformed or inconsistent input: 400
	ErrNotFound = errors.New("not found") // no such client: 404
	ErrConflict = errors.New("conflict")  // a port that cannot be opened, a key in use, a client in use: 409
)

// MaxProblems bounds the problems a Problems lists: a huge bad input must
// not make a huge answer or log line. The rest are only counted.
const MaxProblems = 20

// Problems is every reason a config, a request or a change was refused,
// each naming its field, so that the user sees them all at once. It is the
// one error type for configs, management authentication and changes alike.
// It unwraps to its Kind.
type Problems struct {
	Kind error  // ErrInvalid, ErrNotFound or ErrConflict; ErrInvalid if nil
	What string // what was refused, such as "server config" or "tunnel list"
	list []string
	more int
}

// NewProblems starts an empty list of problems of a kind.
func NewProblems(kind error, what string) *Problems {
	return &Problems{Kind: kind, What: what}
}

// Add records one problem.
func (p *Problems) Add(problem string) {
	if len(p.list) >= MaxProblems {
		p.more++
		return
	}
	p.list = append(p.list, problem)
}

// Addf records a problem with a field: "field: message".
func (p *Problems) Addf(field, format string, args ...any) {
	if len(p.list) >= MaxProblems { // don't format what is only counted
		p.more++
		return
	}
	p.Add(field + ": " + fmt.Sprintf(format, args...))
}

// AddErr records err, one problem for each error joined in it (as
// errors.Join makes) and its Problems' items, if it is one.
func (p *Problems) AddErr(err error) {
	var pe *Problems
	switch {
	case err == nil:
	case errors.As(err, &pe) && pe != p:
		for _, s := range pe.list {
			p.Add(s)
		}
		p.more += pe.more
	default:
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				p.AddErr(e)
			}
			return
		}
		p.Add(err.Error())
	}
}

// Len is how many problems there are, listed or only counted.
func (p *Problems) Len() int { return len(p.list) + p.more }

// Err is p as an error, or nil when there is no problem.
func (p *Problems) Err() error {
	if p.Len() == 0 {
		return nil
	}
	return p
}

// Lines lists the problems, the last line saying how many more there were.
func (p *Problems) Lines() []string {
	out := append([]string(nil), p.list...)
	if p.more > 0 {
		out = append(out, fmt.Sprintf("and %d more", p.more))
	}
	return out
}

// Title says what was refused and why, without the problems: "invalid
// server config", "tunnel list: conflict".
func (p *Problems) Title() string {
	kind := p.kind()
	switch {
	case p.What == "":
		return kind.Error()
	case kind == ErrInvalid:
		return kind.Error() + " " + p.What
	}
	return p.What + ": " + kind.Error()
}

func (p *Problems) Error() string {
	return p.Title() + ": " + strings.Join(p.Lines(), "; ")
}

func (p *Problems) Unwrap() error { return p.kind() }

func (p *Problems) kind() error {
	if p.Kind == nil {
		return ErrInvalid
	}
	return p.Kind
}
