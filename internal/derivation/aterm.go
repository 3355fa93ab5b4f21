package derivation

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// DefaultMaxSize bounds the .drv files Parse accepts. Real Guix derivations
// are at most a few hundred KiB; anything far larger is hostile or broken.
const DefaultMaxSize = 16 << 20

// ParseError says where a .drv stopped making sense and what was expected.
type ParseError struct {
	Offset   int    // byte offset into the input
	Expected string // what the grammar wanted there
	Found    string // what was there
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("parse derivation: at byte %d: expected %s, found %s", e.Offset, e.Expected, e.Found)
}

// Parse parses a .drv file of at most DefaultMaxSize bytes.
func Parse(b []byte) (*Derivation, error) { return ParseLimit(b, DefaultMaxSize) }

// ParseLimit parses a .drv file, rejecting inputs longer than maxSize bytes.
// The grammar is fixed-depth, so parsing is iterative and uses memory linear
// in the input. Every list must be sorted without duplicates, strings may only
// use the escapes \" \\ \n \r \t, and every path must be a store path, all in
// one store directory.
func ParseLimit(b []byte, maxSize int) (*Derivation, error) {
	if len(b) > maxSize {
		return nil, &ParseError{Offset: maxSize, Expected: fmt.Sprintf("at most %d bytes", maxSize), Found: fmt.Sprintf("%d bytes", len(b))}
	}
	p := &parser{b: b}
	d, err := p.derivation()
	if err != nil {
		return nil, err
	}
	return d, nil
}

type parser struct {
	b   []byte
	pos int
	dir storepath.Dir // store dir of the first path seen; all others must match
}

func (p *parser) found() string {
	if p.pos >= len(p.b) {
		return "end of input"
	}
	end := min(p.pos+16, len(p.b))
	return strconv.Quote(string(p.b[p.pos:end]))
}

func (p *parser) errorf(at int, expected string, found string) error {
	return &ParseError{Offset: at, Expected: expected, Found: found}
}

func (p *parser) expect(lit string) error {
	if len(p.b)-p.pos < len(lit) || string(p.b[p.pos:p.pos+len(lit)]) != lit {
		return p.errorf(p.pos, strconv.Quote(lit), p.found())
	}
	p.pos += len(lit)
	return nil
}

// peek reports whether the next byte is c.
func (p *parser) peek(c byte) bool { return p.pos < len(p.b) && p.b[p.pos] == c }

// listNext is called after '[' or an element: it consumes ',' and returns
// true if another element follows, or consumes ']' and returns false.
// first says whether no element has been read yet.
func (p *parser) listNext(first bool) (bool, error) {
	if p.peek(']') {
		p.pos++
		return false, nil
	}
	if first {
		return true, nil
	}
	if p.peek(',') {
		p.pos++
		return true, nil
	}
	return false, p.errorf(p.pos, "',' or ']'", p.found())
}

// list reads the elements of a list whose '[' was consumed, up to its ']'; first tells elem
// whether it reads the first element (ordering checks need a predecessor).
func (p *parser) list(elem func(first bool) error) error {
	for first := true; ; first = false {
		more, err := p.listNext(first)
		if err != nil || !more {
			return err
		}
		if err := elem(first); err != nil {
			return err
		}
	}
}

// str reads a quoted string.
func (p *parser) str(what string) (string, error) {
	start := p.pos
	if !p.peek('"') {
		return "", p.errorf(p.pos, what+" (a quoted string)", p.found())
	}
	p.pos++
	// Fast path: no escapes.
	i := p.pos
	for i < len(p.b) && p.b[i] != '"' && p.b[i] != '\\' && p.b[i] != '\n' && p.b[i] != '\r' && p.b[i] != '\t' {
		i++
	}
	if i < len(p.b) && p.b[i] == '"' {
		s := string(p.b[p.pos:i])
		p.pos = i + 1
		return s, nil
	}
	var sb strings.Builder
	sb.Write(p.b[p.pos:i])
	p.pos = i
	for {
		if p.pos >= len(p.b) {
			return "", p.errorf(start, "a string closed by '\"'", "unterminated string")
		}
		c := p.b[p.pos]
		switch c {
		case '"':
			p.pos++
			return sb.String(), nil
		case '\n', '\r', '\t':
			return "", p.errorf(p.pos, `an escaped control character (\n, \r, \t)`, p.found())
		case '\\':
			if p.pos+1 >= len(p.b) {
				return "", p.errorf(start, "a string closed by '\"'", "unterminated string")
			}
			switch e := p.b[p.pos+1]; e {
			case '"', '\\':
				sb.WriteByte(e)
			case 'n':
				sb.WriteByte('\n')
			case 'r':
				sb.WriteByte('\r')
			case 't':
				sb.WriteByte('\t')
			default:
				return "", p.errorf(p.pos, `one of the escapes \" \\ \n \r \t`, p.found())
			}
			p.pos += 2
		default:
			sb.WriteByte(c)
			p.pos++
		}
	}
}

// storePath reads a quoted store path; drv requires a .drv name, empty allows "".
func (p *parser) storePath(what string, drv, empty bool) (string, error) {
	at := p.pos
	s, err := p.str(what)
	if err != nil {
		return "", err
	}
	if s == "" && empty {
		return s, nil
	}
	sp, err := storepath.ParseAny(s)
	if err != nil {
		return "", p.errorf(at, what+" (a store path)", err.Error())
	}
	if p.dir == "" {
		p.dir = sp.Dir
	} else if sp.Dir != p.dir {
		return "", p.errorf(at, what+" in store directory "+string(p.dir), strconv.Quote(s))
	}
	if drv && !sp.IsDerivation() {
		return "", p.errorf(at, what+" ending in .drv", strconv.Quote(s))
	}
	return s, nil
}

// ordered checks that s sorts strictly after prev (sorted, no duplicates).
func (p *parser) ordered(at int, what, prev, s string, first bool) error {
	if !first && s <= prev {
		if s == prev {
			return p.errorf(at, what+" without duplicates", "a second "+strconv.Quote(s))
		}
		return p.errorf(at, what+" in sorted order (after "+strconv.Quote(prev)+")", strconv.Quote(s))
	}
	return nil
}

func (p *parser) derivation() (*Derivation, error) {
	d := &Derivation{}
	if strings.HasPrefix(string(p.b[:min(len(p.b), 16)]), "DrvWithVersion(") {
		return nil, p.errorf(0, `"Derive(" (versioned derivations are not supported)`, p.found())
	}
	if err := p.expect("Derive(["); err != nil {
		return nil, err
	}
	// Outputs.
	if err := p.list(func(first bool) error {
		var err error
		var o Output
		if err := p.expect("("); err != nil {
			return err
		}
		at := p.pos
		if o.Name, err = p.str("output name"); err != nil {
			return err
		}
		if err := storepath.ValidateName(o.Name); err != nil {
			return p.errorf(at, "an output name", err.Error())
		}
		if !first {
			if err := p.ordered(at, "output names", d.Outputs[len(d.Outputs)-1].Name, o.Name, false); err != nil {
				return err
			}
		}
		if err := p.expect(","); err != nil {
			return err
		}
		if o.Path, err = p.storePath("output path", false, true); err != nil {
			return err
		}
		if err := p.expect(","); err != nil {
			return err
		}
		at = p.pos
		if o.HashAlgo, err = p.str("output hash algorithm"); err != nil {
			return err
		}
		if err := p.expect(","); err != nil {
			return err
		}
		hat := p.pos
		if o.Hash, err = p.str("output hash"); err != nil {
			return err
		}
		if badAlgo, want := checkHash(o.HashAlgo, o.Hash); badAlgo {
			return p.errorf(at, "a hash algorithm: empty or [r:|text:]md5|sha1|sha256|sha512", strconv.Quote(o.HashAlgo))
		} else if want != "" {
			return p.errorf(hat, "an output hash: "+want, strconv.Quote(o.Hash))
		}
		if err := p.expect(")"); err != nil {
			return err
		}
		d.Outputs = append(d.Outputs, o)
		return nil
	}); err != nil {
		return nil, err
	}
	if len(d.Outputs) == 0 {
		return nil, p.errorf(p.pos-1, "at least one output", "an empty output list")
	}
	if err := p.expect(",["); err != nil {
		return nil, err
	}
	// Input derivations.
	if err := p.list(func(first bool) error {
		var err error
		var in InputDrv
		if err := p.expect("("); err != nil {
			return err
		}
		at := p.pos
		if in.Path, err = p.storePath("input derivation path", true, false); err != nil {
			return err
		}
		if !first {
			if err := p.ordered(at, "input derivations", d.InputDrvs[len(d.InputDrvs)-1].Path, in.Path, false); err != nil {
				return err
			}
		}
		if err := p.expect(",["); err != nil {
			return err
		}
		if err := p.list(func(ofirst bool) error {
			oat := p.pos
			o, err := p.str("input output name")
			if err != nil {
				return err
			}
			if err := storepath.ValidateName(o); err != nil {
				return p.errorf(oat, "an output name", err.Error())
			}
			if !ofirst {
				if err := p.ordered(oat, "input output names", in.Outputs[len(in.Outputs)-1], o, false); err != nil {
					return err
				}
			}
			in.Outputs = append(in.Outputs, o)
			return nil
		}); err != nil {
			return err
		}
		if err := p.expect(")"); err != nil {
			return err
		}
		d.InputDrvs = append(d.InputDrvs, in)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.expect(",["); err != nil {
		return nil, err
	}
	// Input sources.
	if err := p.list(func(first bool) error {
		at := p.pos
		s, err := p.storePath("input source path", false, false)
		if err != nil {
			return err
		}
		if !first {
			if err := p.ordered(at, "input sources", d.InputSrcs[len(d.InputSrcs)-1], s, false); err != nil {
				return err
			}
		}
		d.InputSrcs = append(d.InputSrcs, s)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.expect(","); err != nil {
		return nil, err
	}
	var err error
	at := p.pos
	if d.System, err = p.str("system"); err != nil {
		return nil, err
	}
	if d.System == "" {
		return nil, p.errorf(at, "a system such as \"x86_64-linux\"", "an empty string")
	}
	if err := p.expect(","); err != nil {
		return nil, err
	}
	if d.Builder, err = p.str("builder"); err != nil {
		return nil, err
	}
	if err := p.expect(",["); err != nil {
		return nil, err
	}
	if err := p.list(func(first bool) error {
		a, err := p.str("builder argument")
		if err != nil {
			return err
		}
		d.Args = append(d.Args, a)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.expect(",["); err != nil {
		return nil, err
	}
	if err := p.list(func(first bool) error {
		var err error
		var e EnvVar
		if err := p.expect("("); err != nil {
			return err
		}
		at := p.pos
		if e.Key, err = p.str("environment variable name"); err != nil {
			return err
		}
		if !first {
			if err := p.ordered(at, "environment variables", d.Env[len(d.Env)-1].Key, e.Key, false); err != nil {
				return err
			}
		}
		if err := p.expect(","); err != nil {
			return err
		}
		if e.Value, err = p.str("environment variable value"); err != nil {
			return err
		}
		if err := p.expect(")"); err != nil {
			return err
		}
		d.Env = append(d.Env, e)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.expect(")"); err != nil {
		return nil, err
	}
	if p.pos != len(p.b) {
		return nil, p.errorf(p.pos, "end of input after the closing ')'", p.found())
	}
	return d, nil
}

var hashHexLen = map[string]int{"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}

// checkHash validates an output's hash algorithm and hex hash. An algorithm
// with an empty hash is a floating content-addressed output. It reports an
// unknown algorithm, or else what the hash should have been.
func checkHash(algo, hash string) (badAlgo bool, want string) {
	if algo == "" {
		if hash != "" {
			return false, "empty when the hash algorithm is empty"
		}
		return false, ""
	}
	a := strings.TrimPrefix(strings.TrimPrefix(algo, "r:"), "text:")
	n, ok := hashHexLen[a]
	if !ok {
		return true, ""
	}
	if hash == "" {
		return false, ""
	}
	if len(hash) != n {
		return false, fmt.Sprintf("%d lowercase hex digits", n)
	}
	for i := 0; i < len(hash); i++ {
		c := hash[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false, fmt.Sprintf("%d lowercase hex digits", n)
		}
	}
	return false, ""
}
