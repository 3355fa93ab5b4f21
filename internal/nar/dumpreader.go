package nar

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// DumpReader reads the NAR serialisation of a path, the same bytes as
// Dump, without a goroutine or a pipe: file contents are read straight
// into the caller's buffer, framing tokens are copied from a small one.
// A publisher reading a 1 GiB store item this way saves a copy of every
// byte and a goroutine hand-off per chunk.
type DumpReader struct {
	root    string
	started bool
	done    bool
	err     error // sticky

	pend []byte // framing tokens not yet read
	off  int

	f    *os.File // regular file whose contents are being read
	path string
	size int64
	left int64

	dirs []*dirFrame // open directories, innermost last
}

type dirFrame struct {
	path    string
	entries []fs.DirEntry
	next    int
}

// NewDumpReader returns a reader of the NAR of the file, directory or
// symlink at path. Close it to release an open file if it is not read to
// the end.
func NewDumpReader(path string) *DumpReader { return &DumpReader{root: path} }

// Read fills p with the next NAR bytes.
func (r *DumpReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if r.off < len(r.pend) {
			n := copy(p, r.pend[r.off:])
			r.off += n
			return n, nil
		}
		r.pend, r.off = r.pend[:0], 0
		if r.err != nil {
			return 0, r.err
		}
		if r.f != nil {
			if r.left > 0 {
				n, err := r.f.Read(p[:min(int64(len(p)), r.left)])
				r.left -= int64(n)
				switch {
				case err == io.EOF && r.left > 0:
					r.err = fmt.Errorf("nar: dump: %s shrank from %d to %d bytes while it was read; is the store item still being written?", r.path, r.size, r.size-r.left)
				case err != nil && err != io.EOF:
					r.err = fmt.Errorf("nar: dump: reading %s: %w", r.path, err)
				}
				if n > 0 {
					return n, nil
				}
				continue
			}
			r.f.Close()
			r.f = nil
			r.pad(uint64(r.size))
			r.str(")")
			r.endNode()
			continue
		}
		if r.done {
			return 0, io.EOF
		}
		r.step()
	}
}

// Close closes the file being read, if any. It does not fail.
func (r *DumpReader) Close() error {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	if r.err == nil {
		r.err = fmt.Errorf("nar: dump: %s: read after Close", r.root)
	}
	return nil
}

// step queues the next tokens: the start of the archive, the next entry of
// the innermost directory, or that directory's end.
func (r *DumpReader) step() {
	if !r.started {
		r.started = true
		r.str(magic)
		fi, err := os.Lstat(r.root)
		if err != nil {
			r.err = fmt.Errorf("nar: dump: %w", err)
			return
		}
		r.node(r.root, fi.Mode().Type())
		return
	}
	d := r.dirs[len(r.dirs)-1]
	if d.next < len(d.entries) {
		e := d.entries[d.next]
		d.entries[d.next] = nil
		d.next++
		r.str("entry")
		r.str("(")
		r.str("name")
		r.str(e.Name())
		r.str("node")
		r.node(filepath.Join(d.path, e.Name()), e.Type())
		return
	}
	r.dirs = r.dirs[:len(r.dirs)-1]
	r.str(")")
	r.endNode()
}

// node queues a node's header; a regular file's contents follow from its
// open file, a directory's entries from its frame. typ is the type from
// the directory entry (no stat needed to tell a file from a directory).
func (r *DumpReader) node(path string, typ fs.FileMode) {
	r.str("(")
	r.str("type")
	switch {
	case typ.IsRegular():
		f, fi, err := openRegular(path)
		if err != nil {
			r.err = fmt.Errorf("nar: dump: %w", err)
			return
		}
		r.str("regular")
		if fi.Mode()&0o100 != 0 { // only the owner-execute bit is recorded, as Nix does
			r.str("executable")
			r.str("")
		}
		r.str("contents")
		r.pend = binary.LittleEndian.AppendUint64(r.pend, uint64(fi.Size()))
		// Exactly size bytes are read: a file that changes size under us
		// must not produce a NAR whose framing disagrees with its content.
		r.f, r.path, r.size, r.left = f, path, fi.Size(), fi.Size()
	case typ&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			r.err = fmt.Errorf("nar: dump: %w", err)
			return
		}
		r.str("symlink")
		r.str("target")
		r.str(target)
		r.str(")")
		r.endNode()
	case typ.IsDir():
		entries, err := os.ReadDir(path) // sorted by name in byte order, as Nix requires
		if err != nil {
			r.err = fmt.Errorf("nar: dump: reading directory %s: %w", path, err)
			return
		}
		r.str("directory")
		r.dirs = append(r.dirs, &dirFrame{path: path, entries: entries})
	default:
		r.err = fmt.Errorf("nar: dump: %s is a %s; a store item may only hold regular files, directories and symlinks", path, typ)
	}
}

// openRegular opens a regular file for blocking reads: open, one fcntl and
// fstat, then read and close, 5 system calls per file where lstat + os.Open
// made 9 or 10 (os.Open tries to register every fd with the poller); on
// 24,000 small files that halved the dump time (1.1 s → 0.45 s). O_NOFOLLOW
// and the fstat make sure it is still the regular file its entry said.
func openRegular(path string) (*os.File, fs.FileInfo, error) {
	var fd int
	var err error
	for {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s changed from a regular file to a %s while it was read", path, fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// endNode follows a node's ")": the end of the archive at the root, else
// the end of the entry that held it.
func (r *DumpReader) endNode() {
	if len(r.dirs) == 0 {
		r.done = true
		return
	}
	r.str(")")
}

func (r *DumpReader) str(s string) {
	r.pend = binary.LittleEndian.AppendUint64(r.pend, uint64(len(s)))
	r.pend = append(r.pend, s...)
	r.pad(uint64(len(s)))
}

func (r *DumpReader) pad(n uint64) {
	if p := n % 8; p != 0 {
		r.pend = append(r.pend, zeros[:8-p]...)
	}
}
