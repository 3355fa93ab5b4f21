package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/guixfarm/guix-farm/internal/storepath"
	"syscall"
	"time"
)

// Dialect is the flavour of worker protocol a daemon speaks.
type Dialect int

const (
	// Nix is nix-daemon (protocol 1.x below 0x60; 2.8 sends 0x122).
	Nix Dialect = iota
	// Guix is guix-daemon (protocol minor byte 0x60 and above).
	Guix
)

func (d Dialect) String() string {
	switch d {
	case Nix:
		return "nix"
	case Guix:
		return "guix"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

const (
	workerMagic1 = 0x6e697863 // "nixc", client hello
	workerMagic2 = 0x6478696f // "dxio", daemon hello

	// guixClientVersion is what we announce to a Guix daemon: 0x163 is the
	// version every Guix client since 2018 sends (lzip support), and both
	// 0x163 and 0x164 daemons accept it; we need nothing from 0x164.
	guixClientVersion = 0x163
	// nixClientVersion is the newest Nix protocol we speak (Nix 2.8). A
	// newer daemon serves older clients, so we never announce more.
	nixClientVersion = 0x122
	// nixMinVersion is the oldest Nix daemon we accept: below 1.20 the
	// daemon drops builder output instead of sending RESULT lines, so a
	// build would run blind.
	nixMinVersion = 0x114
	// guixMinorBase is the first minor number of Guix-only protocol
	// versions; Nix never reached it.
	guixMinorBase = 0x60
)

func minor(v uint64) uint64 { return v & 0xff }

// ErrClosed is wrapped by the error of an operation on a Conn that was
// closed, canceled or broken by an earlier failure.
var ErrClosed = errors.New("daemon connection is closed")

// Conn is one connection to a guix-daemon or nix-daemon. It runs one
// operation at a time (concurrent calls wait their turn). After an I/O
// error, a protocol error or a canceled context it is unusable: every later
// call fails with an error wrapping ErrClosed. A failure the daemon reports
// (*Error) leaves it usable.
type Conn struct {
	nc  io.Closer
	dec decoder
	enc encoder

	dialect       Dialect
	version       uint64 // negotiated: min(ours, daemon's)
	daemonVersion uint64
	nixVersion    string // Nix >= 1.33 tells its release, e.g. "2.8.0"

	// multiplexed records whether the last SetOptions asked a Guix daemon
	// for "@ build-log" framing, which decides how plain NEXT text is
	// classified (see logger).
	multiplexed bool

	// sem serialises operations; a channel rather than a mutex so that
	// waiting for the Conn respects the caller's context.
	sem chan struct{}

	mu     sync.Mutex
	broken error // why the Conn is unusable, nil while it is fine
}

// Dial connects to a daemon's Unix socket and does the handshake.
func Dial(ctx context.Context, socket string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	// A daemon forks a worker per connection and accepts slowly: with many connections at once
	// its listen queue fills, and connect answers EAGAIN for the moment. Wait and try again
	// (about 3 s in all) rather than fail what is only a busy daemon.
	for try := 0; err != nil && errors.Is(err, syscall.EAGAIN) && try < 5; try++ {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("daemon: connecting to %s: %w", socket, ctx.Err())
		case <-time.After(time.Duration(100<<try) * time.Millisecond):
		}
		nc, err = d.DialContext(ctx, "unix", socket)
	}
	if err != nil {
		return nil, fmt.Errorf("daemon: connecting to %s: %w", socket, err)
	}
	c, err := NewConn(ctx, nc)
	if err != nil {
		return nil, fmt.Errorf("%w (socket %s)", err, socket)
	}
	return c, nil
}

// NewConn does the handshake over an established connection. On failure it
// closes rw.
func NewConn(ctx context.Context, rw net.Conn) (*Conn, error) {
	c := newConn(rw, rw)
	if err := c.handshake(ctx); err != nil {
		rw.Close()
		return nil, err
	}
	return c, nil
}

func newConn(rw io.ReadWriter, closer io.Closer) *Conn {
	return &Conn{
		nc:  closer,
		dec: decoder{r: bufio.NewReaderSize(rw, 64<<10)},
		enc: encoder{w: bufio.NewWriterSize(rw, 64<<10)},
		sem: make(chan struct{}, 1),
	}
}

// Dialect is the daemon's dialect, decided by the handshake.
func (c *Conn) Dialect() Dialect { return c.dialect }

// Version is the negotiated protocol version, min(ours, the daemon's).
// Every version-dependent field is gated on it.
func (c *Conn) Version() uint64 { return c.version }

// DaemonVersion is the protocol version the daemon announced.
func (c *Conn) DaemonVersion() uint64 { return c.daemonVersion }

// NixVersion is the release a Nix daemon of protocol >= 1.33 reports
// ("2.8.0"), or "".
func (c *Conn) NixVersion() string { return c.nixVersion }

// Close closes the connection. An operation in progress fails. The daemon
// process serving the connection notices and stops any build it runs for it.
func (c *Conn) Close() error {
	c.mu.Lock()
	already := c.broken != nil
	if !already {
		c.broken = ErrClosed
	}
	c.mu.Unlock()
	err := c.nc.Close()
	if already {
		return nil
	}
	return err
}

// nix reports whether the Conn speaks Nix at negotiated minor >= m. Nix's
// feature gates must never apply to Guix, whose minor numbers (0x60 and up)
// are larger than every Nix one but whose layout is Nix 1.15's.
func (c *Conn) nix(m uint64) bool { return c.dialect == Nix && minor(c.version) >= m }

// fail marks the Conn unusable and closes the socket, so that the daemon
// sees its client go (and kills a build it runs for it).
func (c *Conn) fail(why error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = why
	}
	c.mu.Unlock()
	c.nc.Close()
}

func (c *Conn) brokenErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

// op is one operation in progress: it holds the Conn, watches the context,
// and collects what the stderr stream carries.
type op struct {
	c    *Conn
	ctx  context.Context
	name string
	stop func() bool // stops the context watch; false once it fired
	log  *logger
	done bool
	// noRead is set while another goroutine writes a framed upload.
	noRead bool
}

// begin takes the Conn for one operation. The caller must call o.end.
func (c *Conn) begin(ctx context.Context, name string, sink LogSink) (*op, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("daemon: %s: %w", name, err)
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("daemon: %s: waiting for the connection: %w", name, ctx.Err())
	}
	if err := c.brokenErr(); err != nil {
		<-c.sem
		return nil, fmt.Errorf("daemon: %s: %w", name, closedErr(err))
	}
	o := &op{c: c, ctx: ctx, name: name, log: newLogger(c, sink)}
	// A canceled context closes the socket: that unblocks our reads and
	// writes at once, and the daemon, seeing its client gone, stops the work
	// (Nix and Guix both kill a running build when the client hangs up).
	o.stop = context.AfterFunc(ctx, func() {
		c.fail(fmt.Errorf("%w: an operation was canceled: %w", ErrClosed, context.Cause(ctx)))
	})
	return o, nil
}

func closedErr(err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// end finishes the operation and returns err in the form the caller sees:
// the context's error if it was canceled, the daemon's *Error as is (the
// Conn stays usable), anything else marks the Conn broken.
func (o *op) end(err error) error {
	if o.done {
		return err
	}
	o.done = true
	o.log.flush()
	fired := !o.stop()
	c := o.c
	defer func() { <-c.sem }()
	if fired {
		// Whatever error the closed socket produced, the cause is the
		// context.
		return fmt.Errorf("daemon: %s: %w", o.name, o.ctx.Err())
	}
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) && c.dec.r.Buffered() > 0 {
		// Nothing may follow an ERROR until our next request, except when
		// the daemon failed before it started the work (e.g. reading an
		// argument): then Nix sends the error twice, in one write, and
		// hangs up (Guix hangs up after one). The Conn is dead.
		c.fail(fmt.Errorf("%w: the daemon hung up after an error in %s: %v", ErrClosed, o.name, err))
		return fmt.Errorf("daemon: %s: %w", o.name, err)
	}
	if errors.As(err, &de) || errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrNotValid) {
		return fmt.Errorf("daemon: %s: %w", o.name, err)
	}
	if b := c.brokenErr(); b != nil {
		// Closed under us by Close: say so rather than "use of closed
		// network connection".
		return fmt.Errorf("daemon: %s: %w (%v)", o.name, closedErr(b), err)
	}
	c.fail(fmt.Errorf("%w: an earlier %s failed: %v", ErrClosed, o.name, err))
	return fmt.Errorf("daemon: %s: %w", o.name, err)
}

// ErrInvalidArgument is wrapped by errors about the caller's arguments
// (a malformed store path, a .drv without outputs), found before anything
// was sent; they leave the Conn usable.
var ErrInvalidArgument = errors.New("invalid argument")

// checkPaths checks the syntax of store paths before they are sent. A
// daemon that can't parse an argument fails before it starts the work, and
// then hangs up: catching bad paths here keeps the Conn usable. (A path in
// another store directory than the daemon's still gets through.)
func checkPaths(name string, paths ...string) error {
	for _, p := range paths {
		if _, err := storepath.ParseAny(p); err != nil {
			return fmt.Errorf("daemon: %s: %w: %w", name, ErrInvalidArgument, err)
		}
	}
	return nil
}

// handshake runs §1.2: magic words, versions, the obsolete affinity and
// reserve-space words, Nix's version string, then a stderr stream that
// ends in LAST (or ERROR, e.g. a store database the daemon can't open).
func (c *Conn) handshake(ctx context.Context) (err error) {
	// The handshake is an operation like the others as far as the context
	// is concerned.
	o, err := c.begin(ctx, "handshake", nil)
	if err != nil {
		return err
	}
	defer func() { err = o.end(err) }()

	c.enc.u64(workerMagic1)
	if err := c.enc.flush(); err != nil {
		return err
	}
	magic, err := c.dec.u64()
	if err != nil {
		return err
	}
	if magic != workerMagic2 {
		return protoErr("not a Nix or Guix daemon: hello word %#x, expected %#x", magic, workerMagic2)
	}
	dv, err := c.dec.u64()
	if err != nil {
		return err
	}
	if dv>>8 != 1 {
		return protoErr("daemon protocol version %#x: unsupported major version %d", dv, dv>>8)
	}
	c.daemonVersion = dv
	var cv uint64
	if minor(dv) >= guixMinorBase {
		c.dialect, cv = Guix, guixClientVersion
	} else {
		if dv < nixMinVersion {
			return fmt.Errorf("nix-daemon protocol 1.%d is too old: need 1.%d (Nix 2.0) or newer, which streams build logs",
				minor(dv), minor(nixMinVersion))
		}
		c.dialect, cv = Nix, min(dv, nixClientVersion)
	}
	c.version = min(cv, dv)
	c.enc.u64(cv)
	// The daemon gates these two on the version we just sent.
	if minor(cv) >= 14 {
		c.enc.u64(0) // no CPU affinity
	}
	if minor(cv) >= 11 {
		// Guix creates (1) or deletes (0) its reserved-space file, which
		// GC frees when the disk is full; Guix's own client asks for it, so
		// we do too. Nix ignores the word.
		c.enc.bool(c.dialect == Guix)
	}
	if err := c.enc.flush(); err != nil {
		return err
	}
	if c.nix(33) {
		if c.nixVersion, err = c.dec.string(maxPathLen); err != nil {
			return err
		}
	}
	return o.stderr(nil, nil)
}
