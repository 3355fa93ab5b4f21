package buildstep

import (
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
)

// maxMessage is the room an attempt record has for its message (the API's bound).
const maxMessage = 512

// Finish ends agent's attempt of b as err says: the one place where a step's failure becomes a
// lifecycle transition. It changes b in memory only (the agent writes it) and returns
// lifecycle.ErrNotHolder when agent no longer holds the attempt. A nil err is not a failure and
// must be reported with lifecycle.Succeed instead.
//
//	BuildFailed, SetupFailed, other errors  the attempt failed; retried with backoff while attempts remain
//	TimedOut, LogLimitExceeded, NotReproducible  the Build fails now: another attempt would repeat it
//	MissingInputs                           released without spending an attempt, the inputs named on the Build,
//	                                        held back longer with each release in a row for the same inputs
//	AgentUnhealthy                          released without spending an attempt
func Finish(b *farmv1.Build, agent string, now time.Time, err error) error {
	kind := KindOf(err)
	reason, msg := kind.String(), message(err)
	switch kind {
	case KindTimedOut, KindLogLimit, KindNotReproducible:
		return lifecycle.FailFinal(b, agent, now, reason, msg)
	case KindMissingInputs:
		var se *Error
		errors.As(err, &se)
		return lifecycle.ReleaseMissing(b, agent, now, reason, msg, boundMissing(se.MissingPaths, se.MissingDerivations, agent))
	case KindAgentUnhealthy:
		return lifecycle.Release(b, agent, now, reason, msg)
	default:
		return lifecycle.Fail(b, agent, now, reason, msg)
	}
}

// message fits err and the log's last lines into an attempt record: the error first, then as many
// of the last lines as fit, newest kept, so the reader sees how the build ended.
func message(err error) string {
	var se *Error
	if !errors.As(err, &se) || len(se.LogTail) == 0 {
		return truncate(err.Error(), maxMessage)
	}
	head := truncate(err.Error(), maxMessage/2)
	room := maxMessage - len(head) - len("; log ends: ")
	var lines []string
	for i := len(se.LogTail) - 1; i >= 0 && room > 0; i-- {
		l := strings.ToValidUTF8(strings.TrimRight(se.LogTail[i], "\r\n"), "\uFFFD")
		if len(l)+3 > room {
			l = "..." + tail(l, room-3)
		}
		lines = append(lines, l)
		room -= len(l) + 3
	}
	for i, j := 0, len(lines)-1; i < j; i, j = i+1, j-1 {
		lines[i], lines[j] = lines[j], lines[i]
	}
	return head + "; log ends: " + strings.Join(lines, " | ")
}

func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// tail is the last n bytes of s, cut at a rune boundary.
func tail(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	cut := len(s) - n
	for cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut++
	}
	return s[cut:]
}

// boundMissing keeps what the API accepts; the rest is counted, not lost silently.
func boundMissing(paths, drvs []string, agent string) *farmv1.MissingInputs {
	m := &farmv1.MissingInputs{Agent: agent}
	keep := func(in []string) []string {
		var out []string
		for _, p := range in {
			if len(out) == farmv1.MaxMissingInputs || len(p) > farmv1.MaxStorePathLength {
				m.More++
				continue
			}
			out = append(out, p)
		}
		return out
	}
	m.Paths, m.Derivations = keep(paths), keep(drvs)
	return m
}
