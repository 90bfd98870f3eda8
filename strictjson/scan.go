package strictjson

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Scanning and string decoding: the JSON grammar as encoding/json reads it.

// What a message shows of the input is bounded, so that 20 problems stay
// a small answer whatever the input holds.
const (
	maxLiteral = 40  // bytes of a literal
	maxName    = 64  // bytes of a key or member name
	maxMessage = 300 // bytes of a message from a type's own method
	maxPath    = 16  // elements of a path: the first and last 8
)

// clip cuts a literal short for a message.
func clip(b []byte) string {
	return cut(string(b[:min(len(b), maxLiteral+utf8.UTFMax)]), maxLiteral)
}

// cut shortens s to about n bytes, on a rune boundary, marking the cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func quoteChar(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// word scans the literal true, false or null.
func (w *walker) word(lit string) bool {
	for i := 0; i < len(lit); i++ {
		if w.pos+i >= len(w.data) {
			w.pos += i
			return w.eof(strconv.Quote(lit))
		}
		if w.data[w.pos+i] != lit[i] {
			return w.syntax(w.pos+i, "unexpected %s in literal %s%s", quoteChar(w.data[w.pos+i]), lit, w.hint(w.pos, w.data[w.pos]))
		}
	}
	w.pos += len(lit)
	return true
}

// scanString scans the string at w.pos, checking escapes and control
// characters as JSON requires (any other byte passes, as in encoding/json).
func (w *walker) scanString() bool {
	start := w.pos
	i := w.pos + 1
	for {
		if i >= len(w.data) {
			line, col := w.lineCol(start)
			return w.syntax(i, "unexpected end of input in the string at line %d, column %d", line, col)
		}
		c := w.data[i]
		switch {
		case c == '"':
			w.pos = i + 1
			return true
		case c < 0x20:
			return w.syntax(i, "unexpected %s in a string (control characters must be escaped)", quoteChar(c))
		case c == '\\':
			i++
			if i >= len(w.data) {
				w.pos = i
				return w.eof("an escape")
			}
			switch w.data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				for j := 1; j <= 4; j++ {
					if i+j >= len(w.data) {
						w.pos = i + j
						return w.eof("four hex digits after \\u")
					}
					if !isHex(w.data[i+j]) {
						return w.syntax(i+j, "unexpected %s in \\u escape: want a hex digit", quoteChar(w.data[i+j]))
					}
				}
				i += 4
			default:
				return w.syntax(i, "unexpected %s after '\\': not an escape", quoteChar(w.data[i]))
			}
		}
		i++
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// scanNumber scans the number at w.pos: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (w *walker) scanNumber() bool {
	d := w.data
	i := w.pos
	digits := func(what string) bool {
		if i >= len(d) {
			w.pos = i
			return w.eof("a digit " + what)
		}
		if d[i] < '0' || d[i] > '9' {
			return w.syntax(i, "unexpected %s in a number: want a digit %s", quoteChar(d[i]), what)
		}
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			i++
		}
		return true
	}
	if d[i] == '-' {
		i++
	}
	if i < len(d) && d[i] == '0' {
		i++
	} else if !digits("after '-'") {
		return false
	}
	if i < len(d) && d[i] == '.' {
		i++
		if !digits("after '.'") {
			return false
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if !digits("in the exponent") {
			return false
		}
	}
	w.pos = i
	return true
}

// validNumber is the same grammar, for what a string holds.
func validNumber(s []byte) bool {
	w := walker{data: s, max: 1, lcLine: 1}
	if len(s) == 0 || s[0] != '-' && (s[0] < '0' || s[0] > '9') {
		return false
	}
	return w.scanNumber() && w.pos == len(s)
}

// unquote returns what a JSON string literal holds, as encoding/json
// decodes it: invalid UTF-8 and lone surrogates become U+FFFD. The result
// is s's own bytes when there is nothing to unescape, else in *buf (or a
// new slice if buf is nil). ok is false if s is not a valid literal.
func unquote(s []byte, buf *[]byte) (t []byte, ok bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return nil, false
	}
	s = s[1 : len(s)-1]
	r := 0
	for r < len(s) {
		c := s[r]
		if c == '\\' || c == '"' || c < ' ' {
			break
		}
		if c < utf8.RuneSelf {
			r++
			continue
		}
		rr, size := utf8.DecodeRune(s[r:])
		if rr == utf8.RuneError && size == 1 {
			break
		}
		r += size
	}
	if r == len(s) {
		return s, true
	}
	var b []byte
	if buf != nil {
		b = (*buf)[:0]
	}
	b = append(b, s[:r]...)
	for r < len(s) {
		switch c := s[r]; {
		case c == '\\':
			r++
			if r >= len(s) {
				return nil, false
			}
			switch s[r] {
			case '"', '\\', '/', '\'':
				b = append(b, s[r])
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				rr := hex4(s[r+1:])
				if rr < 0 {
					return nil, false
				}
				r += 4
				if rr >= 0xD800 && rr < 0xE000 { // a surrogate: pair it or replace it
					if rr < 0xDC00 && r+6 < len(s) && s[r+1] == '\\' && s[r+2] == 'u' {
						if lo := hex4(s[r+3:]); lo >= 0xDC00 && lo < 0xE000 {
							b = utf8.AppendRune(b, (rr-0xD800)<<10|(lo-0xDC00)+0x10000)
							r += 6
							break
						}
					}
					rr = utf8.RuneError
				}
				b = utf8.AppendRune(b, rr)
			default:
				return nil, false
			}
			r++
		case c == '"', c < ' ':
			return nil, false
		case c < utf8.RuneSelf:
			b = append(b, c)
			r++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			r += size
			b = utf8.AppendRune(b, rr)
		}
	}
	if buf != nil {
		*buf = b
	}
	return b, true
}

func hex4(s []byte) rune {
	if len(s) < 4 {
		return -1
	}
	var r rune
	for _, c := range s[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
