package daemon

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"time"
)

// frameSize is the size of the frames we cut a NAR into for AddToStoreNar.
const frameSize = 32 << 10

// Import adds a path from its NAR.
//
// On Nix it is AddToStoreNar (39): info's Path, Deriver, NarHash, NarSize,
// References, RegistrationTime, Ultimate, Sigs and CA are sent as they are
// (NarHash and NarSize are required: the daemon checks the NAR against
// them); sig, if not empty, is added to Sigs. We ask the daemon not to check
// signatures, which a trusted client may (the agent checked the NAR against
// a narinfo it trusts); for an untrusted client the daemon ignores that and
// requires a Sig by one of its trusted-public-keys.
//
// On Guix it is ImportPaths (27) with one export record whose signature is
// sig: Guix requires, even from root, a signature by a key in
// /etc/guix/acl, so sig must be one (a canonical s-expression as
// `guix archive --export` writes). NarHash and NarSize are not sent; Guix
// hashes the NAR itself.
//
// The NAR is streamed, never held in memory. If reading nar fails, the
// daemon can't be told to abort cleanly, so the Conn is closed.
func (c *Conn) Import(ctx context.Context, info PathInfo, nar io.Reader, sig string) (err error) {
	if err := checkPaths("import", info.Path); err != nil {
		return err
	}
	if err := checkPaths("import "+info.Path, info.References...); err != nil {
		return err
	}
	if info.Deriver != "" {
		if err := checkPaths("import "+info.Path, info.Deriver); err != nil {
			return err
		}
	}
	if c.dialect == Nix && (info.NarHash == "" || info.NarSize == 0) {
		return fmt.Errorf("daemon: import %s: %w: NarHash and NarSize are required", info.Path, ErrInvalidArgument)
	}
	o, err := c.begin(ctx, "import "+info.Path, nil)
	if err != nil {
		return err
	}
	defer func() { err = o.end(err) }()
	if c.dialect == Guix {
		return o.importPaths(info, nar, sig)
	}
	return o.addToStoreNar(info, nar, sig)
}

func regTime(t time.Time) uint64 {
	if t.IsZero() || t.Unix() < 0 {
		return 0 // the daemon registers the path now
	}
	return uint64(t.Unix())
}

func (o *op) addToStoreNar(info PathInfo, nar io.Reader, sig string) error {
	c := o.c
	sigs := slices.Clone(info.Sigs)
	if sig != "" {
		sigs = append(sigs, sig)
	}
	e := &c.enc
	e.u64(opAddToStoreNar)
	e.string(info.Path)
	e.string(info.Deriver)
	// Nix parses any encoding with an algorithm prefix (Hash::parseAny).
	e.string(info.NarHash)
	e.strings(info.References)
	e.u64(regTime(info.RegistrationTime))
	e.u64(info.NarSize)
	e.bool(info.Ultimate)
	e.strings(sigs)
	e.string(info.CA)
	e.bool(false) // repair
	e.bool(true)  // dontCheckSigs: honoured for trusted clients only
	switch {
	case c.nix(23):
		if err := e.flush(); err != nil {
			return err
		}
		return o.framed(nar)
	case c.nix(21):
		// The daemon pulls the NAR with STDERR_READ.
		if err := e.flush(); err != nil {
			return err
		}
		return o.stderr(nar, nil)
	default:
		// The NAR follows the request inline.
		if _, err := io.Copy(e.w, nar); err != nil {
			// Part of a NAR is on its way: the stream is lost either way.
			c.fail(fmt.Errorf("%w: reading a NAR to import failed: %w", ErrClosed, err))
			return fmt.Errorf("reading the NAR: %w", err)
		}
		if err := e.flush(); err != nil {
			return err
		}
		return o.stderr(nil, nil)
	}
}

// framed sends nar as a framed stream (u64 length + bytes, ended by an
// empty frame) from a goroutine while this one drains the stderr stream:
// the daemon may log while it reads, and if neither side read, both would
// block on full socket buffers.
func (o *op) framed(nar io.Reader) error {
	c := o.c
	type result struct {
		err   error
		local bool // nar itself failed
	}
	done := make(chan result, 1)
	go func() {
		buf := make([]byte, frameSize)
		for {
			n, rerr := nar.Read(buf)
			if n > 0 {
				c.enc.u64(uint64(n))
				if c.enc.err == nil {
					_, c.enc.err = c.enc.w.Write(buf[:n])
				}
				if c.enc.err != nil {
					done <- result{err: c.enc.err}
					return
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				// There is no way to abort a framed stream: an end frame
				// now would hand the daemon a truncated NAR. Hang up.
				c.fail(fmt.Errorf("%w: reading a NAR to import failed: %w", ErrClosed, rerr))
				done <- result{err: fmt.Errorf("reading the NAR: %w", rerr), local: true}
				return
			}
		}
		c.enc.u64(0)
		done <- result{err: c.enc.flush()}
	}()
	err := o.stderrNoRead()
	if err != nil && !isDaemonError(err) {
		// The stream is lost; closing unblocks the writer.
		c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
	}
	// After LAST or ERROR the daemon has read every frame (Nix drains a
	// framed stream it did not finish), or hung up: the writer ends.
	w := <-done
	switch {
	case w.local:
		return w.err
	case err != nil:
		return err
	case w.err != nil:
		return w.err
	}
	return nil
}

// stderrNoRead is stderr for the time another goroutine owns the write
// side: a READ request can't be answered then (and no daemon sends one
// during a framed upload).
func (o *op) stderrNoRead() error {
	o.noRead = true
	defer func() { o.noRead = false }()
	var none error
	for {
		kind, n, err := o.next(nil, &none)
		if err != nil {
			return err
		}
		switch kind {
		case msgLast:
			return nil
		case msgWrite:
			if err := o.copyWrite(n, nil); err != nil {
				return err
			}
		}
	}
}

func (o *op) importPaths(info PathInfo, nar io.Reader, sig string) error {
	c := o.c
	var head, tail bytes.Buffer
	he := encoder{w: bufio.NewWriter(&head)}
	he.u64(1) // one record follows
	he.flush()
	te := encoder{w: bufio.NewWriter(&tail)}
	te.u64(exportMagic)
	te.string(info.Path)
	te.strings(info.References)
	te.string(info.Deriver)
	if sig != "" {
		te.u64(1)
		te.string(sig)
	} else {
		te.u64(0) // Guix will refuse it, and say why
	}
	te.u64(0) // no more records
	te.flush()
	src := io.MultiReader(&head, nar, &tail)

	c.enc.u64(opImportPaths)
	if err := c.enc.flush(); err != nil {
		return err
	}
	if err := o.stderr(src, nil); err != nil {
		return err
	}
	paths, err := c.dec.strings()
	if err != nil {
		return err
	}
	if !slices.Contains(paths, info.Path) {
		return protoErr("ImportPaths imported %q, not %s", paths, info.Path)
	}
	return nil
}
