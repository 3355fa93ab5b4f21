package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/guixfarm/guix-farm/internal/nar"
)

// exportMagic follows the NAR in an export record ("NIXE").
const exportMagic = 0x4558494e

// Nar streams the NAR of a valid path: NarFromPath (38) on Nix; ExportPath
// (16, unsigned) on Guix, whose export trailer (magic, path, references,
// deriver, signature flag) is read, checked and not passed on. It first
// queries the path's info: an invalid path fails with ErrNotValid before
// anything else is sent, and the stream is checked against NarSize and
// NarHash at its end (a mismatch is the error of the last Read).
//
// With CallerHashes, only NarSize is checked.
//
// The Conn is busy until the reader returns io.EOF or an error, or is
// closed. Closing it before the end makes the Conn unusable (the rest of
// the NAR is still on its way and can't be skipped cheaply): read to EOF to
// keep using it. Close may be called from another goroutine to abort a
// Read.
func (c *Conn) Nar(ctx context.Context, path string, opts ...NarOption) (io.ReadCloser, error) {
	if err := checkPaths("nar", path); err != nil {
		return nil, err
	}
	o, err := c.begin(ctx, "nar of "+path, nil)
	if err != nil {
		return nil, err
	}
	r, err := o.nar(path)
	if err != nil {
		return nil, o.end(err)
	}
	for _, opt := range opts {
		opt(r)
	}
	return r, nil
}

// NarOption changes what Nar checks.
type NarOption func(*narReader)

// CallerHashes is for a caller that hashes the stream itself and compares
// the result with the path's NarHash (a publisher does, for the narinfo):
// Nar then checks only NarSize. A second SHA-256 pass over every byte
// would cap the stream at one core's hashing speed, less than half of
// what the socket carries.
func CallerHashes() NarOption { return func(r *narReader) { r.h = nil } }

func (o *op) nar(path string) (*narReader, error) {
	c := o.c
	info, err := o.queryPathInfo(path)
	if err != nil {
		return nil, err
	}
	r := &narReader{o: o, info: info, h: sha256.New()}
	if c.dialect == Nix {
		c.enc.u64(opNarFromPath)
		c.enc.string(path)
		if err := c.enc.flush(); err != nil {
			return nil, err
		}
		// LAST comes first, then the bare NAR.
		if err := o.stderr(nil, nil); err != nil {
			return nil, err
		}
		r.s = newNarStream(c.dec.r)
		return r, nil
	}
	c.enc.u64(opExportPath)
	c.enc.string(path)
	c.enc.u64(0) // unsigned: we only want the NAR
	if err := c.enc.flush(); err != nil {
		return nil, err
	}
	r.chunks = &writeChunks{o: o}
	r.s = newNarStream(r.chunks)
	return r, nil
}

type narReader struct {
	o      *op
	info   *PathInfo
	s      *narStream
	chunks *writeChunks // Guix
	h      hash.Hash    // nil: the caller checks NarHash (CallerHashes)
	n      uint64

	mu       sync.Mutex
	finished bool  // the operation ended (o.end called)
	err      error // what Read returns from now on
}

func (r *narReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.finished {
		err := r.err
		r.mu.Unlock()
		return 0, err
	}
	r.mu.Unlock()
	k, err := r.s.Read(p)
	if r.h != nil {
		r.h.Write(p[:k])
	}
	r.n += uint64(k)
	if err == nil {
		return k, nil
	}
	if err == io.EOF {
		err = r.finish()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished {
		return k, r.err
	}
	r.finished = true
	if err == nil {
		r.err = io.EOF
		if e := r.o.end(nil); e != nil {
			r.err = e
		}
	} else {
		r.err = r.o.end(err)
	}
	return k, r.err
}

// finish runs after the NAR's last byte: the Guix trailer, then the
// checks against the path's info.
func (r *narReader) finish() error {
	if r.chunks != nil {
		if err := r.trailer(); err != nil {
			return err
		}
	}
	if r.info.NarSize != 0 && r.n != r.info.NarSize {
		return fmt.Errorf("NAR of %s has %d bytes, its NarSize is %d", r.info.Path, r.n, r.info.NarSize)
	}
	if r.h == nil {
		return nil
	}
	if got := nar.FormatHash(r.h.Sum(nil)); got != r.info.NarHash {
		return fmt.Errorf("NAR of %s hashes to %s, its NarHash is %s", r.info.Path, got, r.info.NarHash)
	}
	return nil
}

// trailer reads the rest of a Guix export record, then LAST and the u64 1
// that ends ExportPath.
func (r *narReader) trailer() error {
	d := decoder{r: bufio.NewReaderSize(r.chunks, 4096)}
	magic, err := d.u64()
	if err != nil {
		return trailerErr(err)
	}
	if magic != exportMagic {
		return protoErr("export record: magic %#x after the NAR, expected %#x", magic, exportMagic)
	}
	path, err := d.string(maxPathLen)
	if err != nil {
		return trailerErr(err)
	}
	if path != r.info.Path {
		return protoErr("export record of %s where %s was asked for", path, r.info.Path)
	}
	if _, err := d.strings(); err != nil { // references
		return trailerErr(err)
	}
	if err := d.skip(maxPathLen); err != nil { // deriver
		return trailerErr(err)
	}
	hasSig, err := d.u64()
	if err != nil {
		return trailerErr(err)
	}
	if hasSig == 1 {
		// We asked for none; a daemon that signs anyway is not wrong.
		if err := d.skip(maxStringLen); err != nil {
			return trailerErr(err)
		}
	} else if hasSig != 0 {
		return protoErr("export record: signature flag %d", hasSig)
	}
	if _, err := d.r.ReadByte(); err != io.EOF {
		if err == nil {
			return protoErr("export record of %s: data after the trailer", path)
		}
		return err
	}
	// The chunk reader stopped at LAST; ExportPath's reply follows.
	return r.o.readOK()
}

func trailerErr(err error) error {
	if err == io.ErrUnexpectedEOF {
		return protoErr("export record ends inside its trailer")
	}
	return err
}

// Close ends the stream. Before its end, it makes the Conn unusable.
func (r *narReader) Close() error {
	r.mu.Lock()
	finished := r.finished
	r.mu.Unlock()
	if finished {
		return nil
	}
	// Closing the socket first unblocks a Read in another goroutine.
	r.o.c.fail(fmt.Errorf("%w: a NAR stream was closed before its end", ErrClosed))
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.finished {
		r.finished = true
		r.err = fmt.Errorf("daemon: %s: read after Close", r.o.name)
		r.o.end(nil)
	}
	return nil
}

// writeChunks reads the data a Guix daemon sends in STDERR_WRITE chunks,
// handling the log messages between them, and ends at LAST.
type writeChunks struct {
	o      *op
	left   uint64 // of the current chunk
	n      uint64 // size of the current chunk, for its padding
	inPad  bool
	last   bool
	srcErr error
}

func (w *writeChunks) Read(p []byte) (int, error) {
	d := &w.o.c.dec
	for w.left == 0 {
		if w.inPad {
			if err := d.skipPad(w.n); err != nil {
				return 0, err
			}
			w.inPad = false
		}
		if w.last {
			return 0, io.EOF
		}
		kind, n, err := w.o.next(nil, &w.srcErr)
		if err != nil {
			return 0, err
		}
		if kind == msgLast {
			w.last = true
			return 0, io.EOF
		}
		if n > maxStringLen {
			return 0, protoErr("WRITE chunk of %d bytes where at most %d are allowed", n, maxStringLen)
		}
		w.left, w.n, w.inPad = n, n, true
	}
	if len(p) == 0 {
		return 0, nil
	}
	if uint64(len(p)) > w.left {
		p = p[:w.left]
	}
	k, err := d.r.Read(p)
	w.left -= uint64(k)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}
