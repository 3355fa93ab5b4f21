package daemon

import (
	"bytes"
	"slices"
	"strconv"
)

// LogKind says where a log line comes from.
type LogKind int

const (
	// LogDaemon is the daemon's own text: Nix NEXT messages and activity
	// descriptions ("building '/gnu/store/…drv'"), Guix NEXT text when
	// builder output is multiplexed.
	LogDaemon LogKind = iota
	// LogBuild is builder output: Nix buildLogLine results, Guix
	// "@ build-log" chunks, or, when a Guix daemon does not multiplex
	// builder output, all its plain NEXT text (builder output and daemon
	// messages can't be told apart then).
	LogBuild
	// LogTrace is a Guix build trace line ("@ build-started …"), with its
	// "@ " prefix.
	LogTrace
)

func (k LogKind) String() string {
	switch k {
	case LogDaemon:
		return "daemon"
	case LogBuild:
		return "build"
	case LogTrace:
		return "trace"
	}
	return "LogKind(" + strconv.Itoa(int(k)) + ")"
}

// LogLine is one line of the daemon's log stream, without its trailing
// newline. Text is the daemon's bytes untouched (ANSI escapes, invalid
// UTF-8, carriage returns); the sink may keep it.
type LogLine struct {
	Kind LogKind
	Text []byte
}

// LogSink receives log lines while an operation runs, on the goroutine that
// called the operation. A slow sink slows the daemon down (it blocks on the
// socket), it loses nothing.
type LogSink func(LogLine)

// Bounds on what the logger buffers: a longer line is passed on in pieces,
// and too many concurrent Guix builds with partial lines are flushed.
const (
	maxLineLen      = 1 << 20
	maxPartialBuild = 256
	maxBuildChunk   = 64 << 20
)

// logger turns the daemon's text into lines. NEXT text may end mid-line;
// the rest is kept until its newline or the end of the operation. On Guix
// with multiplexed output it also undoes the "@ build-log <pid> <len>\n"
// framing, keeping a partial line per build.
type logger struct {
	sink        LogSink
	guix        bool
	multiplexed bool

	partial []byte // NEXT text after the last newline
	chunk   uint64 // Guix: bytes of the current build-log chunk still to come
	pid     string // Guix: the build the current chunk belongs to
	builds  map[string][]byte
}

func newLogger(c *Conn, sink LogSink) *logger {
	return &logger{sink: sink, guix: c.dialect == Guix, multiplexed: c.multiplexed}
}

func (l *logger) emit(kind LogKind, text []byte) {
	l.sink(LogLine{Kind: kind, Text: bytes.Clone(text)})
}

// lines passes on text that is known to be whole lines (Nix results and
// activity texts), splitting it at newlines.
func (l *logger) lines(kind LogKind, text []byte) {
	if l.sink == nil {
		return
	}
	text = bytes.TrimSuffix(text, []byte("\n"))
	for line := range bytes.SplitSeq(text, []byte("\n")) {
		l.emit(kind, line)
	}
}

// text consumes a NEXT message.
func (l *logger) text(b []byte) {
	if l.sink == nil {
		return
	}
	for len(b) > 0 {
		if l.chunk > 0 {
			k := int(min(uint64(len(b)), l.chunk))
			l.build(b[:k])
			b, l.chunk = b[k:], l.chunk-uint64(k)
			continue
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.partial = append(l.partial, b...)
			if len(l.partial) >= maxLineLen {
				l.line(l.partial)
				l.partial = l.partial[:0]
			}
			return
		}
		if len(l.partial) > 0 {
			l.partial = append(l.partial, b[:i]...)
			l.line(l.partial)
			l.partial = l.partial[:0]
		} else {
			l.line(b[:i])
		}
		b = b[i+1:]
	}
}

// line classifies one line of NEXT text.
func (l *logger) line(line []byte) {
	if !l.guix {
		l.emit(LogDaemon, line)
		return
	}
	if bytes.HasPrefix(line, []byte("@ ")) {
		if pid, n, ok := parseBuildLog(line); ok {
			l.pid, l.chunk = pid, n
			return
		}
		l.emit(LogTrace, line)
		return
	}
	if l.multiplexed {
		l.emit(LogDaemon, line)
	} else {
		l.emit(LogBuild, line)
	}
}

// parseBuildLog parses "@ build-log <pid> <len>" (nix/libstore/build.cc,
// handleChildOutput). The pid is kept as text: it only tells builds apart.
func parseBuildLog(line []byte) (pid string, n uint64, ok bool) {
	f := bytes.Fields(line)
	if len(f) != 4 || string(f[0]) != "@" || string(f[1]) != "build-log" {
		return "", 0, false
	}
	if _, err := strconv.ParseInt(string(f[2]), 10, 64); err != nil {
		return "", 0, false
	}
	n, err := strconv.ParseUint(string(f[3]), 10, 64)
	if err != nil || n > maxBuildChunk {
		return "", 0, false
	}
	return string(f[2]), n, true
}

// build consumes builder output of the current chunk's build.
func (l *logger) build(b []byte) {
	if l.builds == nil {
		l.builds = make(map[string][]byte)
	}
	buf := l.builds[l.pid]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			buf = append(buf, b...)
			if len(buf) >= maxLineLen {
				l.emit(LogBuild, buf)
				buf = buf[:0]
			}
			break
		}
		if len(buf) > 0 {
			buf = append(buf, b[:i]...)
			l.emit(LogBuild, buf)
			buf = buf[:0]
		} else {
			l.emit(LogBuild, b[:i])
		}
		b = b[i+1:]
	}
	if len(buf) == 0 {
		delete(l.builds, l.pid)
		return
	}
	l.builds[l.pid] = buf
	if len(l.builds) > maxPartialBuild {
		l.flushBuilds()
	}
}

func (l *logger) flushBuilds() {
	pids := make([]string, 0, len(l.builds))
	for pid := range l.builds {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	for _, pid := range pids {
		l.emit(LogBuild, l.builds[pid])
	}
	clear(l.builds)
}

// flush passes on partial lines at the end of an operation.
func (l *logger) flush() {
	if l.sink == nil {
		return
	}
	if len(l.partial) > 0 {
		l.line(l.partial)
		l.partial = l.partial[:0]
	}
	l.chunk = 0
	l.flushBuilds()
}
