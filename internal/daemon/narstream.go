package daemon

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/guixfarm/guix-farm/internal/nar"
)

// narStream passes one NAR through from src and stops exactly at its end.
// Neither daemon frames a NAR it sends (NarFromPath's reply, the start of an
// export record): only its grammar shows where it ends. nar.Reader knows the
// grammar but reads through its own buffer, and what it consumed can't be
// handed on; so this follows the grammar just enough to find the final ")",
// streaming file contents straight from src to the caller. src must be an
// exact reader (it yields only bytes that we ask for and that belong to the
// stream); a corrupt NAR fails with an error wrapping nar.ErrCorrupt.
type narStream struct {
	src   io.Reader
	buf   []byte // token bytes read but not yet handed out
	off   int
	left  uint64 // file contents still to pass through
	pad   int    // padding after those contents
	depth int    // open "(" tokens
	prev  string // previous token: decides what the next string is
	start bool   // magic seen
	done  bool   // final ")" read
	n     int64  // bytes handed out
	err   error
	tok   [maxNarToken + 16]byte
}

// maxNarToken bounds the strings of a NAR other than file contents: keywords,
// file names (NAME_MAX is 255) and symlink targets (PATH_MAX is 4096).
const maxNarToken = 4096

func newNarStream(src io.Reader) *narStream { return &narStream{src: src} }

func (s *narStream) corrupt(format string, args ...any) error {
	s.err = fmt.Errorf("%w at byte %d: %s", nar.ErrCorrupt, s.n+int64(len(s.buf)-s.off), fmt.Sprintf(format, args...))
	return s.err
}

func (s *narStream) Read(p []byte) (int, error) {
	for {
		if s.off < len(s.buf) {
			k := copy(p, s.buf[s.off:])
			s.off += k
			s.n += int64(k)
			return k, nil
		}
		if s.err != nil {
			return 0, s.err
		}
		if s.left > 0 {
			if len(p) == 0 {
				return 0, nil
			}
			q := p
			if uint64(len(q)) > s.left {
				q = q[:s.left]
			}
			k, err := s.src.Read(q)
			s.left -= uint64(k)
			s.n += int64(k)
			if err == io.EOF && s.left == 0 {
				err = nil // the padding or next token tells
			}
			if err != nil {
				return k, s.srcErr(err)
			}
			return k, nil
		}
		if s.pad > 0 {
			if err := s.fill(s.pad); err != nil {
				return 0, err
			}
			if !allZero(s.buf) {
				return 0, s.corrupt("non-zero padding after file contents")
			}
			s.pad = 0
			continue
		}
		if s.done {
			return 0, io.EOF
		}
		if err := s.token(); err != nil {
			return 0, err
		}
	}
}

// fill reads exactly n bytes into buf.
func (s *narStream) fill(n int) error {
	s.buf, s.off = s.tok[:n], 0
	if _, err := io.ReadFull(s.src, s.buf); err != nil {
		s.buf = s.buf[:0]
		return s.srcErr(err)
	}
	return nil
}

// srcErr records a failure of src: its end means a truncated NAR, other
// errors (I/O, a daemon's *Error) are passed on as they are.
func (s *narStream) srcErr(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		s.err = fmt.Errorf("%w: truncated after %d bytes", nar.ErrCorrupt, s.n)
	} else {
		s.err = err
	}
	return s.err
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// token reads the next string of the NAR into buf (its length word, bytes
// and padding), or, for file contents, just the length word.
func (s *narStream) token() error {
	if err := s.fill(8); err != nil {
		return err
	}
	n := binary.LittleEndian.Uint64(s.buf)
	if s.prev == "contents" {
		s.left, s.pad, s.prev = n, pad(n), ""
		return nil
	}
	max := uint64(maxNarToken)
	if n > max {
		return s.corrupt("string of %d bytes where at most %d are allowed", n, max)
	}
	total := 8 + int(n) + pad(n)
	s.buf = s.tok[:total]
	if _, err := io.ReadFull(s.src, s.buf[8:]); err != nil {
		s.buf = s.buf[:0]
		return s.srcErr(err)
	}
	if !allZero(s.buf[8+int(n):]) {
		return s.corrupt("non-zero padding")
	}
	tok := string(s.buf[8 : 8+int(n)])
	prev := s.prev
	s.prev = tok
	switch {
	case !s.start:
		if tok != "nix-archive-1" {
			return s.corrupt("not a NAR: starts with %q", tok)
		}
		s.start = true
		s.prev = ""
	case s.depth == 0:
		// Right after the magic (after the root's ")" nothing is read).
		if tok != "(" {
			return s.corrupt("expected \"(\" after the magic, found %q", tok)
		}
		s.depth = 1
	case prev == "name" || prev == "target":
		// An arbitrary file name or link target, not a keyword.
		s.prev = ""
	case tok == "(":
		s.depth++
	case tok == ")":
		s.depth--
		if s.depth == 0 {
			s.done = true
		}
	case tok == "type", tok == "regular", tok == "directory", tok == "symlink",
		tok == "executable", tok == "", tok == "contents", tok == "target",
		tok == "entry", tok == "name", tok == "node":
	default:
		return s.corrupt("unexpected token %q", tok)
	}
	return nil
}
