package daemon

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Codes of the messages the daemon sends while it works (§1.3).
const (
	stderrNext          = 0x6f6c6d67 // log text
	stderrRead          = 0x64617461 // the daemon wants data from the client
	stderrWrite         = 0x64617416 // data for the client's sink
	stderrLast          = 0x616c7473 // done; the reply follows
	stderrError         = 0x63787470 // failed
	stderrStartActivity = 0x53545254 // Nix >= 1.20
	stderrStopActivity  = 0x53544f50 // Nix >= 1.20
	stderrResult        = 0x52534c54 // Nix >= 1.20
)

// Nix result types we look at (logging.hh).
const (
	resBuildLogLine     = 101
	resPostBuildLogLine = 107
)

// maxReadAnswer bounds one answer to STDERR_READ: the daemon asks for up
// to its buffer size (32 KiB in Nix and Guix), we never send more.
const maxReadAnswer = 64 << 10

// Error is a failure the daemon reported. Message is the daemon's text; for
// Nix >= 1.26 structured errors it is the message followed by the traces,
// one per line. Status is the exit status the daemon gave (Guix, Nix <
// 1.26), 0 when none was given. An operation that failed with an *Error
// leaves the Conn usable.
type Error struct {
	Message string
	Status  uint64
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (status %d)", e.Message, e.Status)
	}
	return e.Message
}

type msgKind int

const (
	msgLast  msgKind = iota // STDERR_LAST
	msgWrite                // STDERR_WRITE: its length returned, body unread
)

// stderr processes the daemon's messages until LAST. READ requests are
// answered from src, WRITE chunks copied to dst (either may be nil: READ
// then gets end-of-file, WRITE data is dropped).
func (o *op) stderr(src io.Reader, dst io.Writer) error {
	var srcErr error
	for {
		kind, n, err := o.next(src, &srcErr)
		if err != nil {
			if srcErr != nil {
				// The daemon failed because we fed it an early end of
				// file; the cause is ours.
				return fmt.Errorf("reading the data the daemon asked for: %w", srcErr)
			}
			return err
		}
		switch kind {
		case msgLast:
			if srcErr != nil {
				return fmt.Errorf("reading the data the daemon asked for: %w", srcErr)
			}
			return nil
		case msgWrite:
			if err := o.copyWrite(n, dst); err != nil {
				return err
			}
		}
	}
}

// copyWrite passes the n bytes of a WRITE chunk to dst without holding the
// whole chunk.
func (o *op) copyWrite(n uint64, dst io.Writer) error {
	if n > maxStringLen {
		return protoErr("WRITE chunk of %d bytes where at most %d are allowed", n, maxStringLen)
	}
	if dst == nil {
		dst = io.Discard
	}
	if _, err := io.CopyN(dst, o.c.dec.r, int64(n)); err != nil {
		return eof(err)
	}
	return o.c.dec.skipPad(n)
}

// next reads messages until one the caller must handle itself: LAST or
// WRITE. Log messages go to the op's logger; READ is answered from src (a
// failure of src is stored in *srcErr and the daemon gets end-of-file, so
// that it aborts the operation cleanly). ERROR is returned as an *Error.
func (o *op) next(src io.Reader, srcErr *error) (msgKind, uint64, error) {
	c := o.c
	d := &c.dec
	for {
		code, err := d.u64()
		if err != nil {
			return 0, 0, err
		}
		switch code {
		case stderrLast:
			return msgLast, 0, nil
		case stderrWrite:
			n, err := d.u64()
			return msgWrite, n, err
		case stderrError:
			return 0, 0, o.readError()
		case stderrNext:
			b, err := d.bytes(maxStringLen)
			if err != nil {
				return 0, 0, err
			}
			o.log.text(b)
		case stderrRead:
			if o.noRead {
				return 0, 0, protoErr("STDERR_READ while we upload a framed stream")
			}
			max, err := d.u64()
			if err != nil {
				return 0, 0, err
			}
			if err := o.answerRead(src, max, srcErr); err != nil {
				return 0, 0, err
			}
		case stderrStartActivity, stderrStopActivity, stderrResult:
			if c.dialect != Nix {
				return 0, 0, protoErr("Nix activity message %#x from a Guix daemon", code)
			}
			if err := o.activity(code); err != nil {
				return 0, 0, err
			}
		default:
			return 0, 0, protoErr("unknown stderr message %#x", code)
		}
	}
}

// answerRead sends one string of at most max bytes from src; an empty one
// tells the daemon the data ended.
func (o *op) answerRead(src io.Reader, max uint64, srcErr *error) error {
	var buf []byte
	if src != nil && *srcErr == nil && max > 0 {
		buf = make([]byte, min(max, maxReadAnswer))
		n, err := readSome(src, buf)
		buf = buf[:n]
		if err != nil && err != io.EOF {
			*srcErr = err
			buf = buf[:0]
		}
	}
	o.c.enc.bytes(buf)
	return o.c.enc.flush()
}

// readSome reads at least one byte unless src is at its end.
func readSome(src io.Reader, buf []byte) (int, error) {
	for range 100 {
		n, err := src.Read(buf)
		if n > 0 || err != nil {
			if n > 0 && err == io.EOF {
				err = nil // the next READ finds the end
			}
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// readError reads an ERROR payload in the layout the negotiated version
// calls for.
func (o *op) readError() error {
	d := &o.c.dec
	if !o.c.nix(26) {
		// Guix and older Nix: message and status. Guix writes the status
		// only when it is non-zero (stopWork), but its errors always carry
		// one (1 by default), and Guix's own client reads it
		// unconditionally; so do we.
		msg, err := d.string(maxStringLen)
		if err != nil {
			return err
		}
		status, err := d.u64()
		if err != nil {
			return err
		}
		return &Error{Message: msg, Status: status}
	}
	// Nix >= 1.26: "Error", level, name, message, havePos, traces.
	typ, err := d.string(maxPathLen)
	if err != nil {
		return err
	}
	if typ != "Error" {
		return protoErr("structured error of type %q, expected \"Error\"", typ)
	}
	if _, err := d.u64(); err != nil { // verbosity level
		return err
	}
	if err := d.skip(maxPathLen); err != nil { // name, always "Error"
		return err
	}
	msg, err := d.string(maxStringLen)
	if err != nil {
		return err
	}
	if err := o.noPos(); err != nil {
		return err
	}
	n, err := d.u64()
	if err != nil {
		return err
	}
	if n > maxTraces {
		return protoErr("error with %d traces where at most %d are allowed", n, maxTraces)
	}
	var b strings.Builder
	b.WriteString(msg)
	for range n {
		if err := o.noPos(); err != nil {
			return err
		}
		hint, err := d.string(maxStringLen)
		if err != nil {
			return err
		}
		if b.Len()+len(hint) > maxStringLen {
			return protoErr("error message longer than %d bytes", maxStringLen)
		}
		b.WriteByte('\n')
		b.WriteString(hint)
	}
	return &Error{Message: b.String()}
}

// noPos reads a havePos word. Nix (2.8 and later) always sends 0: it never
// serialised positions, and its own client asserts the same.
func (o *op) noPos() error {
	havePos, err := o.c.dec.u64()
	if err != nil {
		return err
	}
	if havePos != 0 {
		return protoErr("structured error with a position, which no Nix daemon sends")
	}
	return nil
}

// field is one field of a Nix activity or result.
type field struct {
	isString bool
	n        uint64
	s        []byte
}

func (o *op) fields() ([]field, error) {
	d := &o.c.dec
	n, err := d.u64()
	if err != nil {
		return nil, err
	}
	if n > maxFields {
		return nil, protoErr("%d fields where at most %d are allowed", n, maxFields)
	}
	fs := make([]field, 0, min(n, 16))
	for range n {
		kind, err := d.u64()
		if err != nil {
			return nil, err
		}
		switch kind {
		case 0:
			v, err := d.u64()
			if err != nil {
				return nil, err
			}
			fs = append(fs, field{n: v})
		case 1:
			s, err := d.bytes(maxStringLen)
			if err != nil {
				return nil, err
			}
			fs = append(fs, field{isString: true, s: s})
		default:
			return nil, protoErr("field of unknown kind %d", kind)
		}
	}
	return fs, nil
}

// activity handles Nix's START_ACTIVITY, STOP_ACTIVITY and RESULT. Builder
// output arrives only as buildLogLine results (Nix never sends it as NEXT
// to a client of 1.20 or newer).
func (o *op) activity(code uint64) error {
	d := &o.c.dec
	switch code {
	case stderrStartActivity:
		// id, level, type, text, fields, parent
		for range 3 {
			if _, err := d.u64(); err != nil {
				return err
			}
		}
		text, err := d.bytes(maxStringLen)
		if err != nil {
			return err
		}
		if _, err := o.fields(); err != nil {
			return err
		}
		if _, err := d.u64(); err != nil {
			return err
		}
		if len(text) > 0 {
			o.log.lines(LogDaemon, text)
		}
	case stderrStopActivity:
		_, err := d.u64()
		return err
	case stderrResult:
		if _, err := d.u64(); err != nil { // activity id
			return err
		}
		typ, err := d.u64()
		if err != nil {
			return err
		}
		fs, err := o.fields()
		if err != nil {
			return err
		}
		if (typ == resBuildLogLine || typ == resPostBuildLogLine) && len(fs) > 0 && fs[0].isString {
			kind := LogBuild
			if typ == resPostBuildLogLine {
				// The post-build hook's output, not the builder's.
				kind = LogDaemon
			}
			o.log.lines(kind, fs[0].s)
		}
	}
	return nil
}

// readReply reads the u64 1 most operations answer after LAST.
func (o *op) readOK() error {
	v, err := o.c.dec.u64()
	if err != nil {
		return err
	}
	if v != 1 {
		return protoErr("reply %d where 1 was expected", v)
	}
	return nil
}

func isDaemonError(err error) bool {
	var de *Error
	return errors.As(err, &de)
}
