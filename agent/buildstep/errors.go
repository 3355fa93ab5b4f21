package buildstep

import (
	"errors"
	"fmt"
	"strings"
)

// Kind says why an attempt did not succeed; Transition maps each to what happens to the Build.
type Kind int

const (
	// KindBuildFailed: the builder failed. Retried while attempts remain.
	KindBuildFailed Kind = iota
	// KindMissingInputs: inputs are neither valid on the agent nor substitutable. The Build goes
	// back without spending an attempt; the controller builds the derivations that produce them.
	KindMissingInputs
	// KindSetupFailed: the attempt could not start (the .drv could not be fetched, the daemon
	// refused it). Retried while attempts remain: a setup failure that never heals must end.
	KindSetupFailed
	// KindTimedOut: the build ran past its timeout or was silent past its max silent time. Not
	// retried: another attempt would spend the same hours.
	KindTimedOut
	// KindLogLimit: the build's log grew past the limit. Not retried.
	KindLogLimit
	// KindNotReproducible: an output is already published with another NarHash. Not retried:
	// the bucket keeps the first result and the user must look at the derivation.
	KindNotReproducible
	// KindAgentUnhealthy: the agent cannot build right now (daemon unreachable, bucket refusing
	// writes). The Build goes back without spending an attempt, and the agent stops claiming.
	KindAgentUnhealthy
)

var kindNames = [...]string{"BuildFailed", "MissingInputs", "SetupFailed", "TimedOut", "LogLimitExceeded", "NotReproducible", "AgentUnhealthy"}

// String is the kind's reason word, as recorded on the Build's attempt.
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// Error is a step's typed failure.
type Error struct {
	Kind Kind
	// Message says what happened, for the attempt's record.
	Message string
	// LogTail holds the log's last lines (BuildFailed, TimedOut), oldest first.
	LogTail []string
	// MissingPaths and MissingDerivations are the inputs that could not be had (MissingInputs):
	// store paths, and the derivations that produce them where known.
	MissingPaths, MissingDerivations []string
	// Err is the underlying error, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind.String())
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf is the kind of err: an *Error's, or KindBuildFailed for any other error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindBuildFailed
}

// BuildFailed is a failed build with the log's last lines.
func BuildFailed(err error, tail []string) *Error {
	return &Error{Kind: KindBuildFailed, Err: err, LogTail: tail}
}

// MissingInputs reports inputs the agent could not substitute.
func MissingInputs(paths, derivations []string) *Error {
	return &Error{Kind: KindMissingInputs, MissingPaths: paths, MissingDerivations: derivations,
		Message: fmt.Sprintf("%d input paths neither valid nor substitutable", len(paths))}
}

// SetupFailed is an attempt that could not start.
func SetupFailed(err error) *Error { return &Error{Kind: KindSetupFailed, Err: err} }

// TimedOut is a build past its timeout or max silent time.
func TimedOut(err error, tail []string) *Error {
	return &Error{Kind: KindTimedOut, Err: err, LogTail: tail}
}

// LogLimit is a build whose log grew past the limit.
func LogLimit(limit int64) *Error {
	return &Error{Kind: KindLogLimit, Message: fmt.Sprintf("build log longer than %d bytes", limit)}
}

// NotReproducible is an output already published with another NarHash.
func NotReproducible(err error) *Error { return &Error{Kind: KindNotReproducible, Err: err} }

// AgentUnhealthy is an agent that cannot build now.
func AgentUnhealthy(err error) *Error { return &Error{Kind: KindAgentUnhealthy, Err: err} }
