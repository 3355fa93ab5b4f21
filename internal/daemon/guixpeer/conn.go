package guixpeer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// Verbosity levels (enum Verbosity in nix/libutil/types.hh).
const (
	lvlError     = 0
	lvlInfo      = 1
	lvlTalkative = 2
	lvlChatty    = 3
	lvlDebug     = 4
)

// Log types (enum LogType in nix/libutil/util.hh); guix/store.scm sends 0.
const (
	ltPretty  = 0
	ltEscapes = 1
)

// conn is one client connection: the state of one forked guix-daemon
// worker process (the globals verbosity and logType, the Settings object,
// canSendStderr, the temp roots file).
type conn struct {
	p   *Peer
	ctx context.Context
	nc  net.Conn
	in  *decoder
	w   *bufio.Writer
	out encoder

	clientVersion uint64
	trusted       bool
	remote        bool // not a Unix socket: isRemoteConnection

	// canSendStderr is nix-daemon.cc's flag: true between startWork and
	// stopWork, when messages go to the client as STDERR_NEXT.
	canSendStderr bool
	nesting       int // nestingLevel of util.cc, for ltPretty prefixes

	verbosity, buildVerbosity, logType     uint64
	keepFailed, keepGoing, printBuildTrace bool

	// settings is Settings::settings: guix-daemon's defaults plus what
	// SetOptions stored; update() derives the typed fields below.
	settings       map[string]string
	tryFallback    bool
	multiplexed    bool
	useSubstitutes bool
	maxSilentTime  int64
	buildTimeout   int64

	tempRoots map[string]bool
}

// Serve speaks the daemon side of the protocol on nc until the client
// closes it: the handshake (processConnection), then operations. It closes
// nc when it returns, and when ctx is done. It returns nil when the client
// hung up between operations, and an error otherwise, including after an
// error guix-daemon reports and then drops the connection for (one raised
// before the operation started work, such as an unknown operation or a
// path outside the store).
func (p *Peer) Serve(ctx context.Context, nc net.Conn) error {
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()

	c := &conn{
		p:         p,
		ctx:       ctx,
		nc:        nc,
		in:        &decoder{r: bufio.NewReaderSize(nc, 64<<10)},
		w:         bufio.NewWriterSize(nc, 32<<10),
		tempRoots: map[string]bool{},
		// util.cc's defaults until SetOptions says otherwise:
		// verbosity lvlInfo, logType ltPretty, settings.buildVerbosity
		// lvlError.
		verbosity: lvlInfo,
	}
	c.out = encoder{c.w}
	network := "unix"
	if a := nc.RemoteAddr(); a != nil {
		network = a.Network()
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		c.remote = true // acceptConnection: only AF_UNIX peers can be trusted
	default:
		c.trusted = p.Trusted
	}
	c.initSettings()

	p.mu.Lock()
	p.live[c] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.live, c) // ~LocalStore unlinks the temp roots file
		p.mu.Unlock()
	}()

	if err := c.handshake(); err != nil {
		return c.fail(fmt.Errorf("guixpeer: handshake: %w", err))
	}
	for {
		op, err := c.in.int()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil // processConnection: EndOfFile ends the loop
			}
			return c.fail(fmt.Errorf("guixpeer: reading an operation: %w", err))
		}
		err = c.perform(op)
		var de *daemonError
		if errors.As(err, &de) {
			// processConnection's catch (Error &): report, and give up on
			// the connection if the error came before startWork, since the
			// client may be in the middle of sending arguments.
			allowed := c.canSendStderr
			c.stopWork(de)
			if ferr := c.w.Flush(); ferr != nil {
				return c.fail(fmt.Errorf("guixpeer: operation %d: sending error %q: %w", op, de.msg, ferr))
			}
			if !allowed {
				return fmt.Errorf("guixpeer: operation %d: %w (raised before work started, so guix-daemon closes the connection)", op, de)
			}
			continue
		}
		if err != nil {
			return c.fail(fmt.Errorf("guixpeer: operation %d: %w", op, err))
		}
		if err := c.w.Flush(); err != nil {
			return c.fail(fmt.Errorf("guixpeer: operation %d: %w", op, err))
		}
	}
}

// fail prefers the context's error when the connection died because ctx
// ended.
func (c *conn) fail(err error) error {
	if c.ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", c.ctx.Err(), err)
	}
	return err
}

// handshake is the greeting of processConnection.
func (c *conn) handshake() error {
	magic, err := c.in.int()
	if err != nil {
		return err
	}
	if magic != workerMagic1 {
		return errors.New("protocol mismatch") // thrown before startWork: no reply at all
	}
	c.out.int(workerMagic2)
	c.out.int(c.p.version)
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.clientVersion, err = c.in.int(); err != nil {
		return err
	}
	if c.minor() >= 14 {
		affinity, err := c.in.int()
		if err != nil {
			return err
		}
		if affinity != 0 {
			if _, err := c.in.int(); err != nil { // the CPU to pin to
				return err
			}
		}
	}
	if c.minor() >= 11 {
		if _, err := c.in.int(); err != nil { // reserveSpace
			return err
		}
	}
	// "Send startup error messages to the client": opening the store
	// cannot fail here, so the stream is just LAST.
	c.startWork()
	c.stopWork(nil)
	return c.w.Flush()
}

// minor is GET_PROTOCOL_MINOR of the client's declared version, which is
// what guix-daemon gates on.
func (c *conn) minor() uint64 { return c.clientVersion & 0xff }

// startWork: from now on messages go to the client.
func (c *conn) startWork() { c.canSendStderr = true }

// stopWork ends the stderr stream with LAST, or with ERROR for a failure:
// the message, then the status, which is sent only when nonzero, and
// processConnection passes 0 to clients older than minor 8.
func (c *conn) stopWork(failure *daemonError) {
	c.canSendStderr = false
	if failure == nil {
		c.out.int(stderrLast)
		return
	}
	c.out.int(stderrError)
	c.out.string(failure.msg)
	status := failure.status
	if c.minor() < 8 {
		status = 0
	}
	if status != 0 {
		c.out.int(status)
	}
}

// writeToStderr is tunnelStderr: a NEXT frame, flushed at once, when the
// protocol allows it; otherwise guix-daemon writes to its own stderr.
func (c *conn) writeToStderr(s string) error {
	if !c.canSendStderr {
		return nil
	}
	c.out.int(stderrNext)
	c.out.string(s)
	return c.w.Flush()
}

// printMsg is util.cc printMsg_: dropped above the client's verbosity,
// prefixed by the nesting level (ltPretty) or an escape code (ltEscapes).
func (c *conn) printMsg(level uint64, format string, args ...any) error {
	if level > c.verbosity {
		return nil
	}
	return c.writeToStderr(c.prefix(level) + fmt.Sprintf(format, args...) + "\n")
}

func (c *conn) prefix(level uint64) string {
	switch c.logType {
	case ltPretty:
		return strings.Repeat("|   ", c.nesting)
	case ltEscapes:
		if level != lvlInfo {
			return "\033[" + strconv.FormatUint(level, 10) + "s"
		}
	}
	return ""
}

// startNest is the startNest macro and Nest::open: a message that indents
// the ones after it until the returned function closes the nest. With
// ltEscapes, Nest::open writes to std::cerr, which is not tunnelled.
func (c *conn) startNest(level uint64, format string, args ...any) (func(), error) {
	if level > c.verbosity {
		return func() {}, nil
	}
	if c.logType != ltEscapes {
		if err := c.printMsg(level, format, args...); err != nil {
			return nil, err
		}
	}
	c.nesting++
	return func() { c.nesting-- }, nil
}

// initSettings is guix-daemon's startup: Settings' constructor, then
// main() in guix-daemon.cc, then update().
func (c *conn) initSettings() {
	urls := c.p.SubstituteURLs
	if urls == nil {
		urls = DefaultSubstituteURLs
	}
	c.settings = map[string]string{
		"build-use-substitutes": strconv.FormatBool(!c.p.NoSubstitutes),
		"substitute-urls":       strings.Join(urls, " "),
	}
	c.maxSilentTime = 3600
	c.buildTimeout = 24 * 3600
	if err := c.updateSettings(); err != nil {
		panic(err) // the defaults parse
	}
}

// updateSettings is Settings::update for the settings the peer acts on,
// with Settings::_get's parse errors.
func (c *conn) updateSettings() error {
	for _, b := range []struct {
		name string
		dst  *bool
	}{
		{"build-fallback", &c.tryFallback},
		{"multiplexed-build-output", &c.multiplexed},
		{"build-use-substitutes", &c.useSubstitutes},
	} {
		v, ok := c.settings[b.name]
		if !ok {
			continue
		}
		switch v {
		case "true":
			*b.dst = true
		case "false":
			*b.dst = false
		default:
			return errorf("configuration option `%s' should be either `true' or `false', not `%s'", b.name, v)
		}
	}
	for _, n := range []struct {
		name string
		dst  *int64
	}{
		{"build-max-jobs", new(int64)},
		{"build-cores", new(int64)},
		{"build-max-silent-time", &c.maxSilentTime},
		{"build-timeout", &c.buildTimeout},
	} {
		v, ok := c.settings[n.name]
		if !ok {
			continue
		}
		i, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return errorf("configuration setting `%s' should have an integer value", n.name)
		}
		*n.dst = i
	}
	return nil
}

func (c *conn) addTempRoot(path string) { c.p.addTempRoot(c, path) }
