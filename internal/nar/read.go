package nar

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

const magic = "nix-archive-1"

// Limits on tokens that are not file contents, so a corrupt length word
// cannot make the reader allocate gigabytes.
const (
	maxTokenLen  = 4096  // keywords, file names (NAME_MAX is 255)
	maxTargetLen = 65536 // symlink targets (PATH_MAX is 4096; be lenient)
)

// NodeType is the kind of a NAR node.
type NodeType string

const (
	TypeRegular   NodeType = "regular"
	TypeDirectory NodeType = "directory"
	TypeSymlink   NodeType = "symlink"
)

// Header describes one node of a NAR, in archive order.
type Header struct {
	// Path is "/" for the root and "/a/b" below it.
	Path       string
	Type       NodeType
	Executable bool   // regular files only
	Size       int64  // regular files only: content length
	LinkTarget string // symlinks only
}

// ErrCorrupt is wrapped by every error about malformed or truncated input.
var ErrCorrupt = errors.New("corrupt NAR")

// Reader reads a NAR as a sequence of nodes, like archive/tar: Next returns
// the next node's header, and Read reads the contents of the current regular
// file. It counts every byte it consumes and never reads past the final ")".
type Reader struct {
	r    *bufio.Reader
	n    int64 // bytes consumed
	err  error // sticky
	tok  []byte
	left int64   // unread contents of the current file
	padn int64   // padding after the current file
	stk  []frame // open directories
	done bool
	root bool // root node emitted
}

type frame struct {
	path string
	last string // previous entry name, for order checks
}

// NewReader returns a Reader that reads a NAR from r.
func NewReader(r io.Reader) *Reader {
	br, ok := r.(*bufio.Reader)
	if !ok || br.Size() < 64<<10 {
		br = bufio.NewReaderSize(r, 256<<10)
	}
	return &Reader{r: br, tok: make([]byte, 0, 64), padn: -1}
}

// Size is the number of NAR bytes consumed so far; after Next returned
// io.EOF it is the NarSize.
func (r *Reader) Size() int64 { return r.n }

func (r *Reader) corrupt(format string, args ...any) error {
	r.err = fmt.Errorf("%w at byte %d: %s", ErrCorrupt, r.n, fmt.Sprintf(format, args...))
	return r.err
}

func (r *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	r.n += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return r.corrupt("truncated: the stream ended early")
		}
		r.err = fmt.Errorf("nar: reading: %w", err)
		return r.err
	}
	return nil
}

func (r *Reader) u64() (uint64, error) {
	var b [8]byte
	if err := r.readFull(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (r *Reader) skipPad(n uint64) error {
	p := n % 8
	if p == 0 {
		return nil
	}
	var b [8]byte
	if err := r.readFull(b[:8-p]); err != nil {
		return err
	}
	if !bytes.Equal(b[:8-p], zeros[:8-p]) {
		return r.corrupt("non-zero padding")
	}
	return nil
}

// str reads a framed string of at most max bytes.
func (r *Reader) str(max int) (string, error) {
	n, err := r.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", r.corrupt("string of %d bytes where at most %d are allowed", n, max)
	}
	if cap(r.tok) < int(n) {
		r.tok = make([]byte, n)
	}
	b := r.tok[:n]
	if err := r.readFull(b); err != nil {
		return "", err
	}
	if err := r.skipPad(n); err != nil {
		return "", err
	}
	return string(b), nil
}

func (r *Reader) expect(want string) error {
	got, err := r.str(maxTokenLen)
	if err != nil {
		return err
	}
	if got != want {
		return r.corrupt("expected %q, found %q", want, got)
	}
	return nil
}

// Next advances to the next node and returns its header. It returns io.EOF
// after the root node has been fully read; any unread file contents are
// skipped.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.done {
		return nil, io.EOF
	}
	if err := r.finishFile(); err != nil {
		return nil, err
	}
	if !r.root {
		r.root = true
		if err := r.expect(magic); err != nil {
			return nil, r.corrupt("not a NAR: %v", err)
		}
		return r.node("/")
	}
	// Close finished directories until one has another entry.
	for len(r.stk) > 0 {
		tok, err := r.str(maxTokenLen)
		if err != nil {
			return nil, err
		}
		top := &r.stk[len(r.stk)-1]
		switch tok {
		case ")": // end of the directory node
			r.stk = r.stk[:len(r.stk)-1]
			if err := r.endEntry(); err != nil {
				return nil, err
			}
			continue
		case "entry":
		default:
			return nil, r.corrupt("expected \"entry\" or \")\" in directory %s, found %q", top.path, tok)
		}
		if err := r.expect("("); err != nil {
			return nil, err
		}
		if err := r.expect("name"); err != nil {
			return nil, err
		}
		name, err := r.str(maxTokenLen)
		if err != nil {
			return nil, err
		}
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return nil, r.corrupt("invalid file name %q in directory %s", name, top.path)
		}
		if top.last != "" && name <= top.last {
			return nil, r.corrupt("directory %s: entry %q is not after %q (entries must be sorted and unique)", top.path, name, top.last)
		}
		top.last = name
		if err := r.expect("node"); err != nil {
			return nil, err
		}
		p := top.path + "/" + name
		if top.path == "/" {
			p = "/" + name
		}
		return r.node(p)
	}
	r.done = true
	return nil, io.EOF
}

// endEntry closes the "entry" wrapper of a node that just ended, or marks
// the archive done when the root ended.
func (r *Reader) endEntry() error {
	if len(r.stk) == 0 {
		r.done = true
		return nil
	}
	return r.expect(")")
}

func (r *Reader) node(path string) (*Header, error) {
	if err := r.expect("("); err != nil {
		return nil, err
	}
	if err := r.expect("type"); err != nil {
		return nil, err
	}
	t, err := r.str(maxTokenLen)
	if err != nil {
		return nil, err
	}
	h := &Header{Path: path, Type: NodeType(t)}
	switch h.Type {
	case TypeRegular:
		tok, err := r.str(maxTokenLen)
		if err != nil {
			return nil, err
		}
		if tok == "executable" {
			h.Executable = true
			if err := r.expect(""); err != nil {
				return nil, err
			}
			if tok, err = r.str(maxTokenLen); err != nil {
				return nil, err
			}
		}
		if tok != "contents" {
			return nil, r.corrupt("expected \"contents\" for %s, found %q", path, tok)
		}
		size, err := r.u64()
		if err != nil {
			return nil, err
		}
		if size > 1<<62 {
			return nil, r.corrupt("file %s claims %d bytes", path, size)
		}
		h.Size = int64(size)
		r.left = h.Size
		r.padn = int64((8 - size%8) % 8)
	case TypeSymlink:
		if err := r.expect("target"); err != nil {
			return nil, err
		}
		if h.LinkTarget, err = r.str(maxTargetLen); err != nil {
			return nil, err
		}
		if h.LinkTarget == "" {
			return nil, r.corrupt("symlink %s has an empty target", path)
		}
		if err := r.expect(")"); err != nil {
			return nil, err
		}
		if err := r.endEntry(); err != nil {
			return nil, err
		}
	case TypeDirectory:
		r.stk = append(r.stk, frame{path: path})
	default:
		return nil, r.corrupt("unknown node type %q at %s", t, path)
	}
	return h, nil
}

// finishFile skips what is left of the current file, its padding and the
// closing tokens.
func (r *Reader) finishFile() error {
	if r.padn < 0 {
		return nil
	}
	if r.left > 0 {
		n, err := r.r.Discard(int(min(r.left, 1<<30)))
		r.n += int64(n)
		r.left -= int64(n)
		for err == nil && r.left > 0 {
			n, err = r.r.Discard(int(min(r.left, 1<<30)))
			r.n += int64(n)
			r.left -= int64(n)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return r.corrupt("truncated: the stream ended inside a file")
			}
			r.err = fmt.Errorf("nar: reading: %w", err)
			return r.err
		}
	}
	var b [8]byte
	if err := r.readFull(b[:r.padn]); err != nil {
		return err
	}
	if !bytes.Equal(b[:r.padn], zeros[:r.padn]) {
		return r.corrupt("non-zero padding after file contents")
	}
	r.padn = -1
	if err := r.expect(")"); err != nil {
		return err
	}
	return r.endEntry()
}

// Read reads the contents of the current regular file.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	r.left -= int64(n)
	if err == io.EOF {
		if r.left > 0 {
			return n, r.corrupt("truncated: the stream ended inside a file")
		}
		err = nil
	}
	if err != nil {
		r.err = fmt.Errorf("nar: reading: %w", err)
		return n, r.err
	}
	return n, nil
}

// Validate reads a whole NAR from r and checks its structure (framing,
// padding, sorted unique names, known node types), and that nothing follows
// it. It returns the NAR's size.
func Validate(r io.Reader) (int64, error) {
	nr := NewReader(r)
	for {
		_, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nr.n, err
		}
	}
	if _, err := nr.r.ReadByte(); err == nil {
		return nr.n, fmt.Errorf("%w: data after the end of the archive at byte %d", ErrCorrupt, nr.n)
	} else if err != io.EOF {
		return nr.n, fmt.Errorf("nar: reading: %w", err)
	}
	return nr.n, nil
}

// ReadSingleFile reads a NAR whose root is a regular file (a .drv, a text
// file) and returns its contents, refusing files larger than max bytes.
func ReadSingleFile(r io.Reader, max int64) ([]byte, error) {
	nr := NewReader(r)
	h, err := nr.Next()
	if err != nil {
		return nil, err
	}
	if h.Type != TypeRegular {
		return nil, fmt.Errorf("nar: the archive holds a %s, not a single regular file", h.Type)
	}
	if h.Size > max {
		return nil, fmt.Errorf("nar: the file is %d bytes, more than the %d allowed", h.Size, max)
	}
	data := make([]byte, h.Size)
	if _, err := io.ReadFull(nr, data); err != nil {
		return nil, err
	}
	if _, err := nr.Next(); err != io.EOF {
		if err == nil {
			err = nr.corrupt("a second node after a regular root")
		}
		return nil, err
	}
	return data, nil
}
