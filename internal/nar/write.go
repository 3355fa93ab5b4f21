package nar

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// writeBufSize is large enough that framing tokens and small files coalesce
// into few writes downstream (hashers, compressors, pipes).
const writeBufSize = 256 << 10

var zeros [8]byte

// encoder writes NAR tokens to a buffered writer.
type encoder struct {
	w *bufio.Writer
}

func (e *encoder) str(s string) error {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
	if _, err := e.w.Write(n[:]); err != nil {
		return err
	}
	if _, err := e.w.WriteString(s); err != nil {
		return err
	}
	return e.pad(uint64(len(s)))
}

func (e *encoder) pad(n uint64) error {
	if p := n % 8; p != 0 {
		_, err := e.w.Write(zeros[:8-p])
		return err
	}
	return nil
}

func (e *encoder) strs(ss ...string) error {
	for _, s := range ss {
		if err := e.str(s); err != nil {
			return err
		}
	}
	return nil
}

// Dump writes the NAR serialisation of the file, directory or symlink at
// path to w, byte-identical to `nix-store --dump` and Guix's write-file.
// Files are streamed; memory use does not depend on their size.
func Dump(w io.Writer, path string) error {
	e := &encoder{w: bufio.NewWriterSize(w, writeBufSize)}
	if err := e.str(magic); err != nil {
		return err
	}
	if err := e.node(path); err != nil {
		return err
	}
	return e.w.Flush()
}

func (e *encoder) node(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	if err := e.strs("(", "type"); err != nil {
		return err
	}
	switch m := fi.Mode(); {
	case m.IsRegular():
		if err := e.str("regular"); err != nil {
			return err
		}
		// Only the owner-execute bit is recorded, as Nix does.
		if m&0o100 != 0 {
			if err := e.strs("executable", ""); err != nil {
				return err
			}
		}
		if err := e.str("contents"); err != nil {
			return err
		}
		if err := e.file(path, fi.Size()); err != nil {
			return err
		}
	case m&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		if err := e.strs("symlink", "target", target); err != nil {
			return err
		}
	case m.IsDir():
		if err := e.str("directory"); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("nar: dump: reading directory %s: %w", path, err)
		}
		sort.Strings(names) // byte order, as Nix requires
		for _, name := range names {
			if err := e.strs("entry", "(", "name", name, "node"); err != nil {
				return err
			}
			if err := e.node(filepath.Join(path, name)); err != nil {
				return err
			}
			if err := e.str(")"); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("nar: dump: %s is a %s; a store item may only hold regular files, directories and symlinks", path, m.Type())
	}
	return e.str(")")
}

func (e *encoder) file(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	defer f.Close()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(size))
	if _, err := e.w.Write(n[:]); err != nil {
		return err
	}
	// Copy exactly size bytes: a file that changes size under us must not
	// produce a NAR whose framing disagrees with its content.
	copied, err := io.Copy(e.w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("nar: dump: reading %s: %w", path, err)
	}
	if copied != size {
		return fmt.Errorf("nar: dump: %s shrank from %d to %d bytes while it was read; is the store item still being written?", path, size, copied)
	}
	return e.pad(uint64(size))
}
