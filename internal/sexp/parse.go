package sexp

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
)

// Parse reads exactly one S-expression from data, in canonical or advanced
// form (libgcrypt accepts both, mixed). Leading and trailing whitespace is
// allowed; anything else after the expression is an error.
func Parse(data []byte) (Node, error) {
	p := parser{in: data}
	p.skipSpace()
	if p.pos >= len(p.in) {
		return Node{}, fmt.Errorf("sexp: empty input")
	}
	if p.in[p.pos] != '(' {
		return Node{}, p.errorf("expected '(' to start the expression")
	}
	n, err := p.list(0)
	if err != nil {
		return Node{}, err
	}
	p.skipSpace()
	if p.pos != len(p.in) {
		return Node{}, p.errorf("unexpected data after the expression")
	}
	return n, nil
}

// maxDepth bounds nesting so hostile input cannot exhaust the stack.
const maxDepth = 64

type parser struct {
	in  []byte
	pos int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("sexp: at byte %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func (p *parser) skipSpace() {
	for p.pos < len(p.in) && isSpace(p.in[p.pos]) {
		p.pos++
	}
}

// list parses "(" elements ")" with p.pos at the '('.
func (p *parser) list(depth int) (Node, error) {
	if depth >= maxDepth {
		return Node{}, p.errorf("nested deeper than %d lists", maxDepth)
	}
	p.pos++ // '('
	n := Node{IsList: true, List: []Node{}}
	for {
		p.skipSpace()
		if p.pos >= len(p.in) {
			return Node{}, p.errorf("missing ')'")
		}
		switch p.in[p.pos] {
		case ')':
			p.pos++
			return n, nil
		case '(':
			c, err := p.list(depth + 1)
			if err != nil {
				return Node{}, err
			}
			n.List = append(n.List, c)
		case '[':
			p.pos++
			p.skipSpace()
			hint, err := p.atom()
			if err != nil {
				return Node{}, err
			}
			p.skipSpace()
			if p.pos >= len(p.in) || p.in[p.pos] != ']' {
				return Node{}, p.errorf("missing ']' after display hint")
			}
			p.pos++
			p.skipSpace()
			a, err := p.atom()
			if err != nil {
				return Node{}, err
			}
			n.List = append(n.List, Node{Atom: a, Hint: hint})
		default:
			a, err := p.atom()
			if err != nil {
				return Node{}, err
			}
			n.List = append(n.List, Node{Atom: a})
		}
	}
}

// atom parses one atom in any of libgcrypt's notations.
func (p *parser) atom() ([]byte, error) {
	if p.pos >= len(p.in) {
		return nil, p.errorf("missing atom")
	}
	c := p.in[p.pos]
	switch {
	case c >= '0' && c <= '9':
		// A length prefix: "3:abc" (verbatim), or 4#..#, 3"..", 4|..|
		// whose decoded length must match. A plain digit run is a token.
		start := p.pos
		for p.pos < len(p.in) && p.in[p.pos] >= '0' && p.in[p.pos] <= '9' {
			p.pos++
		}
		if p.pos < len(p.in) {
			switch p.in[p.pos] {
			case ':':
				n, err := strconv.Atoi(string(p.in[start:p.pos]))
				if err != nil || n > len(p.in)-p.pos-1 {
					return nil, p.errorf("verbatim length %q exceeds the input", p.in[start:p.pos])
				}
				p.pos++
				a := append([]byte{}, p.in[p.pos:p.pos+n]...)
				p.pos += n
				return a, nil
			case '"', '#', '|':
				n, _ := strconv.Atoi(string(p.in[start:p.pos]))
				a, err := p.atom()
				if err != nil {
					return nil, err
				}
				if len(a) != n {
					return nil, p.errorf("length prefix %d but the atom has %d bytes", n, len(a))
				}
				return a, nil
			}
		}
		p.pos = start
		return p.token()
	case c == '"':
		return p.quoted()
	case c == '#':
		return p.hex()
	case c == '|':
		return p.base64()
	case isTokenByte(c):
		return p.token()
	}
	return nil, p.errorf("unexpected character %q", c)
}

func (p *parser) token() ([]byte, error) {
	start := p.pos
	for p.pos < len(p.in) && isTokenByte(p.in[p.pos]) {
		p.pos++
	}
	if p.pos == start {
		return nil, p.errorf("empty token")
	}
	return append([]byte{}, p.in[start:p.pos]...), nil
}

func (p *parser) hex() ([]byte, error) {
	p.pos++ // '#'
	var digits []byte
	for {
		if p.pos >= len(p.in) {
			return nil, p.errorf("missing closing '#'")
		}
		c := p.in[p.pos]
		p.pos++
		if c == '#' {
			break
		}
		if isSpace(c) {
			continue
		}
		digits = append(digits, c)
	}
	if len(digits)%2 != 0 {
		return nil, p.errorf("odd number of hex digits (libgcrypt rejects it)")
	}
	out := make([]byte, len(digits)/2)
	if _, err := hex.Decode(out, digits); err != nil {
		return nil, p.errorf("bad hex string: %v", err)
	}
	return out, nil
}

func (p *parser) base64() ([]byte, error) {
	p.pos++ // '|'
	var text []byte
	for {
		if p.pos >= len(p.in) {
			return nil, p.errorf("missing closing '|'")
		}
		c := p.in[p.pos]
		p.pos++
		if c == '|' {
			break
		}
		if !isSpace(c) {
			text = append(text, c)
		}
	}
	out, err := base64.StdEncoding.DecodeString(string(text))
	if err != nil {
		return nil, p.errorf("bad base64 string: %v", err)
	}
	return out, nil
}

// quoted parses a "string" with libgcrypt's escapes: \b \t \v \n \f \r \" \'
// \\, \xHH, \ooo (octal) and backslash-newline continuation.
func (p *parser) quoted() ([]byte, error) {
	p.pos++ // '"'
	out := []byte{}
	for {
		if p.pos >= len(p.in) {
			return nil, p.errorf("missing closing '\"'")
		}
		c := p.in[p.pos]
		p.pos++
		switch c {
		case '"':
			return out, nil
		case '\\':
			if p.pos >= len(p.in) {
				return nil, p.errorf("unfinished escape")
			}
			e := p.in[p.pos]
			p.pos++
			switch e {
			case 'b':
				out = append(out, '\b')
			case 't':
				out = append(out, '\t')
			case 'v':
				out = append(out, '\v')
			case 'n':
				out = append(out, '\n')
			case 'f':
				out = append(out, '\f')
			case 'r':
				out = append(out, '\r')
			case '"', '\'', '\\':
				out = append(out, e)
			case '\n':
				// Line continuation; also swallow a following '\r'.
				if p.pos < len(p.in) && p.in[p.pos] == '\r' {
					p.pos++
				}
			case '\r':
				if p.pos < len(p.in) && p.in[p.pos] == '\n' {
					p.pos++
				}
			case 'x':
				if p.pos+2 > len(p.in) {
					return nil, p.errorf("short \\x escape")
				}
				v, err := strconv.ParseUint(string(p.in[p.pos:p.pos+2]), 16, 8)
				if err != nil {
					return nil, p.errorf("bad \\x escape %q", p.in[p.pos:p.pos+2])
				}
				out = append(out, byte(v))
				p.pos += 2
			default:
				if e >= '0' && e <= '7' {
					if p.pos+2 > len(p.in) {
						return nil, p.errorf("short octal escape")
					}
					v, err := strconv.ParseUint(string(p.in[p.pos-1:p.pos+2]), 8, 8)
					if err != nil {
						return nil, p.errorf("bad octal escape %q", p.in[p.pos-1:p.pos+2])
					}
					out = append(out, byte(v))
					p.pos += 2
					continue
				}
				return nil, p.errorf("unknown escape \\%c", e)
			}
		default:
			out = append(out, c)
		}
	}
}
