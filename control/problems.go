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
	list []item
	more int
	// faulted are fields whose JSON value could not be decoded: a check
	// of the value decoded anyway would only repeat that, so problems
	// with these fields (or inside them) are dropped.
	faulted []string
}

type item struct{ field, text string }

// NewProblems starts an empty list of problems of a kind.
func NewProblems(kind error, what string) *Problems {
	return &Problems{Kind: kind, What: what}
}

// Add records one problem.
func (p *Problems) Add(problem string) { p.add("", problem) }

func (p *Problems) add(field, text string) {
	if len(p.list) >= MaxProblems {
		p.more++
		return
	}
	p.list = append(p.list, item{field, text})
}

// Addf records a problem with a field: "field: message".
func (p *Problems) Addf(field, format string, args ...any) {
	if p.isFaulted(field) {
		return
	}
	if len(p.list) >= MaxProblems { // don't format what is only counted
		p.more++
		return
	}
	p.add(field, field+": "+fmt.Sprintf(format, args...))
}

// fault marks a field whose value could not be decoded.
func (p *Problems) fault(field string) { p.faulted = append(p.faulted, field) }

func (p *Problems) isFaulted(field string) bool {
	for _, f := range p.faulted {
		if rest, ok := strings.CutPrefix(field, f); ok && (rest == "" || rest[0] == '.' || rest[0] == '[') {
			return true
		}
	}
	return false
}

// unlisted is an error standing for problems another bounded list only
// counted (forward's "and N more"): they are counted here too.
type unlisted interface{ Unlisted() int }

// AddErr records err, one problem for each error joined in it (as
// errors.Join makes) and its Problems' items, if it is one.
func (p *Problems) AddErr(err error) {
	var pe *Problems
	switch {
	case err == nil:
	case errors.As(err, &pe) && pe != p:
		for _, it := range pe.list {
			if !p.isFaulted(it.field) || it.field == "" {
				p.add(it.field, it.text)
			}
		}
		p.more += pe.more
	case isUnlisted(err):
		p.more += err.(unlisted).Unlisted()
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

func isUnlisted(err error) bool {
	_, ok := err.(unlisted)
	return ok
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
	out := make([]string, 0, len(p.list)+1)
	for _, it := range p.list {
		out = append(out, it.text)
	}
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
