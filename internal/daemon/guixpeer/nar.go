package guixpeer

import (
	"io"
	"strings"
)

// narRoot is what the peer needs from a NAR it has parsed: the type of the
// root node and, for a regular file, its contents (AddToStore's flat mode
// stores those).
type narRoot struct {
	regular    bool
	executable bool
	contents   []byte
}

// parseDump consumes one NAR from d, exactly as far as its final ")", with
// the checks and messages of Guix's parseDump/parse in
// nix/libutil/archive.cc. Guix is lenient where the repository's
// internal/nar is strict: fields may come in any order, and because its
// prevName lives inside each "entry" block, unsorted directory entries are
// accepted; the peer follows Guix.
func parseDump(d *decoder) (narRoot, error) {
	var root narRoot
	version, err := d.string()
	if err != nil {
		if _, ok := err.(*daemonError); !ok {
			return root, err // EndOfFile is not a SerialisationError: it propagates
		}
	}
	if version != "nix-archive-1" {
		return root, errorf("bad archive: input doesn't look like a normalized archive")
	}
	return root, parseNode(d, "", &root)
}

func parseNode(d *decoder, path string, root *narRoot) error {
	s, err := d.string()
	if err != nil {
		return err
	}
	if s != "(" {
		return errorf("bad archive: expected open tag")
	}
	const (
		tpUnknown = iota
		tpRegular
		tpDirectory
		tpSymlink
	)
	typ := tpUnknown
	for {
		s, err := d.string()
		if err != nil {
			return err
		}
		switch {
		case s == ")":
			return nil
		case s == "type":
			if typ != tpUnknown {
				return errorf("bad archive: multiple type fields")
			}
			t, err := d.string()
			if err != nil {
				return err
			}
			switch t {
			case "regular":
				typ = tpRegular
				if path == "" {
					root.regular = true
				}
			case "directory":
				typ = tpDirectory
			case "symlink":
				typ = tpSymlink
			default:
				return errorf("bad archive: unknown file type %s", t)
			}
		case s == "contents" && typ == tpRegular:
			size, err := d.longLong()
			if err != nil {
				return err
			}
			var sink io.Writer = io.Discard
			var buf strings.Builder
			if path == "" {
				sink = &buf
			}
			if n, err := io.CopyN(sink, d.r, int64(size)); err != nil {
				if err == io.EOF && n < int64(size) {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			if err := d.padding(size); err != nil {
				return err
			}
			if path == "" {
				root.contents = []byte(buf.String())
			}
		case s == "executable" && typ == tpRegular:
			if _, err := d.string(); err != nil {
				return err
			}
			if path == "" {
				root.executable = true
			}
		case s == "entry" && typ == tpDirectory:
			if err := parseEntry(d, path, root); err != nil {
				return err
			}
		case s == "target" && typ == tpSymlink:
			if _, err := d.string(); err != nil {
				return err
			}
		default:
			return errorf("bad archive: unknown field %s", s)
		}
	}
}

func parseEntry(d *decoder, path string, root *narRoot) error {
	s, err := d.string()
	if err != nil {
		return err
	}
	if s != "(" {
		return errorf("bad archive: expected open tag")
	}
	var name, prevName string
	for {
		s, err := d.string()
		if err != nil {
			return err
		}
		switch s {
		case ")":
			return nil
		case "name":
			if name, err = d.string(); err != nil {
				return err
			}
			if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
				return errorf("NAR contains invalid file name `%s'", name)
			}
			if name <= prevName {
				return errorf("NAR directory is not sorted")
			}
			prevName = name
		case "node":
			if err := parseNode(d, path+"/"+name, root); err != nil {
				return err
			}
		default:
			return errorf("bad archive: unknown field %s", s)
		}
	}
}

// regularFileNAR is the NAR of a non-executable regular file, what
// addTextToStore's writeFile + canonicalisePathMetaData + hashPath produce.
func regularFileNAR(contents []byte) []byte {
	var b []byte
	for _, tok := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		b = appendString(b, tok)
	}
	b = appendString(b, string(contents))
	return appendString(b, ")")
}
