package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/agent/buildstep"
)

// LogStore keeps build logs where users read them (the bucket), one log per attempt, so a retry
// never destroys an earlier attempt's log.
type LogStore interface {
	// PutAttemptLog stores the log of drvPath's attempt so far. It is called again as the log
	// grows; final is set once, when the attempt has ended, so the store can make that log the
	// derivation's log that `guix build --log-file` and `nix log` read.
	PutAttemptLog(ctx context.Context, drvPath string, attempt int32, r io.Reader, final bool) error
}

const (
	// tailLines and maxTailLine bound the log's last lines kept for a failed attempt's message.
	tailLines   = 12
	maxTailLine = 512
)

// attemptLog is the sink an attempt's build log goes to: spooled to a temporary file (a log can be
// far larger than memory should hold), uploaded every flush interval while the build runs so it
// can be followed, bounded in size, and with its last lines kept for the attempt's message.
type attemptLog struct {
	store   LogStore
	drv     string
	attempt int32
	limit   int64
	log     logr.Logger

	mu       sync.Mutex
	spool    *os.File // nil when there is no store or the spool could not be made
	size     int64
	dirty    bool
	exceeded bool
	lines    [][]byte // ring of the last complete lines
	partial  []byte   // the current unterminated line (bounded)

	stop    chan struct{}
	stopped chan struct{}
	upload  sync.Mutex // one upload at a time, in order
}

func newAttemptLog(store LogStore, drv string, attempt int32, limit int64, every time.Duration, clk clock.WithTicker, log logr.Logger) *attemptLog {
	l := &attemptLog{store: store, drv: drv, attempt: attempt, limit: limit, log: log, stop: make(chan struct{}), stopped: make(chan struct{})}
	if store != nil {
		f, err := os.CreateTemp("", "guixfarm-log-*")
		if err != nil {
			log.Error(err, "Spooling the build log: it will not be stored")
		} else {
			l.spool = f
		}
	}
	if l.spool == nil {
		close(l.stopped)
		return l
	}
	go func() {
		defer close(l.stopped)
		t := clk.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C():
				l.flush(context.Background(), false)
			}
		}
	}()
	return l
}

// Write takes log bytes. Past the limit it keeps nothing more and fails with a LogLimit error,
// which the step turns into the attempt's end.
func (l *attemptLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.exceeded {
		return 0, buildstep.LogLimit(l.limit)
	}
	n := len(p)
	if room := l.limit - l.size; int64(n) > room {
		p = p[:room]
		l.exceeded = true
	}
	if l.spool != nil && len(p) > 0 {
		if _, err := l.spool.Write(p); err != nil {
			l.log.Error(err, "Spooling the build log")
			l.spool.Close()
			os.Remove(l.spool.Name())
			l.spool = nil
		}
		l.dirty = true
	}
	l.size += int64(len(p))
	l.keepTail(p)
	if l.exceeded {
		return len(p), buildstep.LogLimit(l.limit)
	}
	return n, nil
}

func (l *attemptLog) keepTail(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.partial = appendBounded(l.partial, p)
			return
		}
		line := appendBounded(l.partial, p[:i])
		l.partial = nil
		if len(l.lines) == tailLines {
			copy(l.lines, l.lines[1:])
			l.lines = l.lines[:tailLines-1]
		}
		l.lines = append(l.lines, line)
		p = p[i+1:]
	}
}

// appendBounded keeps the last maxTailLine bytes of a line: its end says the most.
func appendBounded(dst, p []byte) []byte {
	dst = append(dst, p...)
	if len(dst) > maxTailLine {
		dst = append([]byte(nil), dst[len(dst)-maxTailLine:]...)
	}
	return dst
}

// tail returns the last lines, oldest first.
func (l *attemptLog) tail() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.lines)+1)
	for _, b := range l.lines {
		out = append(out, string(b))
	}
	if len(l.partial) > 0 {
		out = append(out, string(l.partial))
	}
	return out
}

// flush uploads the log so far if it grew since the last upload (always when final).
func (l *attemptLog) flush(ctx context.Context, final bool) {
	l.upload.Lock()
	defer l.upload.Unlock()
	l.mu.Lock()
	if l.spool == nil || (!l.dirty && !final) {
		l.mu.Unlock()
		return
	}
	l.dirty = false
	size, name := l.size, l.spool.Name()
	l.mu.Unlock()
	f, err := os.Open(name)
	if err != nil {
		l.log.Error(err, "Reading the spooled build log")
		return
	}
	defer f.Close()
	if err := l.store.PutAttemptLog(ctx, l.drv, l.attempt, io.LimitReader(f, size), final); err != nil && !errors.Is(err, context.Canceled) {
		// A lost log upload never fails the build: the next flush or the final one tries again.
		l.log.Error(err, "Uploading the build log", "final", final)
		l.mu.Lock()
		l.dirty = true
		l.mu.Unlock()
	}
}

// close stops the periodic uploads, stores the whole log and removes the spool.
func (l *attemptLog) close(ctx context.Context) {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.stopped
	l.flush(ctx, true)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spool != nil {
		l.spool.Close()
		os.Remove(l.spool.Name())
		l.spool = nil
	}
}
