package daemon

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits on what the peer may declare. Every length read from the socket is
// checked against one of these before anything is allocated, and large
// strings are read in steps rather than allocated up front, so that a
// corrupt or hostile stream costs at most about as much memory as the bytes
// it actually sends.
const (
	maxStringLen = 64 << 20 // log text, error messages, WRITE chunks
	maxPathLen   = 64 << 10 // store paths, names, hashes, signatures (PATH_MAX is 4096)
	maxListLen   = 1 << 20  // entries of a path list
	maxFields    = 1 << 10  // fields of a Nix activity or result
	maxTraces    = 1 << 10  // traces of a Nix structured error
	allocStep    = 64 << 10 // strings above this grow as their bytes arrive
)

// ErrProtocol is wrapped by every error about a malformed daemon stream.
// After it the connection is unusable: the two sides no longer agree on
// where a message starts.
var ErrProtocol = errors.New("daemon protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// pad is the number of zero bytes that follow a string of n bytes.
func pad(n uint64) int { return int((8 - n%8) % 8) }

var zeros [8]byte

// decoder reads the framing of §1.1: u64 little-endian integers and
// length-prefixed, zero-padded strings.
type decoder struct {
	r *bufio.Reader
}

func (d *decoder) u64() (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(d.r, b[:]); err != nil {
		return 0, eof(err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// eof turns a clean EOF in the middle of a message into ErrUnexpectedEOF:
// the daemon never closes the socket between the parts of a reply.
func eof(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (d *decoder) bool() (bool, error) {
	v, err := d.u64()
	if err != nil {
		return false, err
	}
	// Nix writes bools as 0 or 1 but reads any non-zero as true; do the same.
	return v != 0, nil
}

// skipPad reads and checks the padding after a string of n bytes. Nix
// rejects non-zero padding; so do we, as it means we lost the framing.
func (d *decoder) skipPad(n uint64) error {
	p := pad(n)
	if p == 0 {
		return nil
	}
	var b [8]byte
	if _, err := io.ReadFull(d.r, b[:p]); err != nil {
		return eof(err)
	}
	if !bytes.Equal(b[:p], zeros[:p]) {
		return protoErr("non-zero padding after a string of %d bytes", n)
	}
	return nil
}

// bytes reads a string of at most max bytes.
func (d *decoder) bytes(max uint64) ([]byte, error) {
	n, err := d.u64()
	if err != nil {
		return nil, err
	}
	return d.body(n, max)
}

// body reads the n bytes and padding of a string whose length was read.
func (d *decoder) body(n, max uint64) ([]byte, error) {
	if n > max {
		return nil, protoErr("string of %d bytes where at most %d are allowed", n, max)
	}
	var b []byte
	if n <= allocStep {
		b = make([]byte, n)
		if _, err := io.ReadFull(d.r, b); err != nil {
			return nil, eof(err)
		}
	} else {
		// Grow with the data actually received, not with the declared length.
		var buf bytes.Buffer
		buf.Grow(allocStep)
		m, err := io.CopyN(&buf, d.r, int64(n))
		if err != nil {
			if m < int64(n) && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		b = buf.Bytes()
	}
	if err := d.skipPad(n); err != nil {
		return nil, err
	}
	return b, nil
}

func (d *decoder) string(max uint64) (string, error) {
	b, err := d.bytes(max)
	return string(b), err
}

// skip discards a string of at most max bytes without keeping it.
func (d *decoder) skip(max uint64) error {
	n, err := d.u64()
	if err != nil {
		return err
	}
	if n > max {
		return protoErr("string of %d bytes where at most %d are allowed", n, max)
	}
	if _, err := d.r.Discard(int(n)); err != nil {
		return eof(err)
	}
	return d.skipPad(n)
}

// strings reads a list of strings (paths, signatures).
func (d *decoder) strings() ([]string, error) {
	n, err := d.u64()
	if err != nil {
		return nil, err
	}
	if n > maxListLen {
		return nil, protoErr("list of %d entries where at most %d are allowed", n, maxListLen)
	}
	// Capacity from the declared count only up to a small bound: the count
	// is not proof that the entries will follow.
	out := make([]string, 0, min(n, 1024))
	for i := uint64(0); i < n; i++ {
		s, err := d.string(maxPathLen)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// encoder writes the same framing into a buffered writer; the caller
// flushes once per request so that a request is one write on the socket.
type encoder struct {
	w   *bufio.Writer
	err error // sticky: the first write error
}

func (e *encoder) u64(v uint64) {
	if e.err != nil {
		return
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	_, e.err = e.w.Write(b[:])
}

func (e *encoder) bool(v bool) {
	if v {
		e.u64(1)
	} else {
		e.u64(0)
	}
}

func (e *encoder) bytes(b []byte) {
	e.u64(uint64(len(b)))
	if e.err != nil {
		return
	}
	if _, e.err = e.w.Write(b); e.err != nil {
		return
	}
	_, e.err = e.w.Write(zeros[:pad(uint64(len(b)))])
}

func (e *encoder) string(s string) {
	e.u64(uint64(len(s)))
	if e.err != nil {
		return
	}
	if _, e.err = e.w.WriteString(s); e.err != nil {
		return
	}
	_, e.err = e.w.Write(zeros[:pad(uint64(len(s)))])
}

func (e *encoder) strings(ss []string) {
	e.u64(uint64(len(ss)))
	for _, s := range ss {
		e.string(s)
	}
}

func (e *encoder) flush() error {
	if e.err != nil {
		return e.err
	}
	e.err = e.w.Flush()
	return e.err
}
