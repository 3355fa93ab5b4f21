// Package buildstep is the contract between the agent's claim/report loop and the step that runs
// one attempt (the daemon builder in production, the test builder in tests and benchmarks). The
// agent hands the step what it needs to know about the attempt, never the Build object itself, so
// a step cannot depend on fields the agent did not mean to give it; the step answers with the
// published outputs or a typed error, and one pure function (Transition) decides what the error
// does to the Build.
package buildstep

import (
	"context"
	"io"
	"time"
)

// Step runs one attempt of one Build.
type Step interface {
	// Run builds req.Derivation's outputs and publishes them. ctx is canceled when the Build is
	// canceled, taken from the agent, or the agent stops: the step must then stop its build and
	// publish nothing more. The error, when not nil, should be an *Error (see the constructors);
	// any other error counts as a failed build.
	Run(ctx context.Context, req Request) (Result, error)
}

// Request is one attempt.
type Request struct {
	// Build names the Build ("namespace/name"), for logs and messages.
	Build string
	// BuildUID is the Build's UID: a Build deleted and made again under the same name is another
	// (the publisher service checks it).
	BuildUID string
	// Derivation is the .drv store path to build.
	Derivation string
	// System is the derivation's system (x86_64-linux, ...), as the controller read it.
	System string
	// Outputs are the derivation's outputs by name, with their paths when known (input-addressed
	// derivations know them before the build).
	Outputs []Output
	// Attempt numbers the Build's attempts from 1.
	Attempt int32
	// Agent is the name of the agent running the attempt.
	Agent string
	// Hints are the Build's annotations in the guixfarm.io domains (e.g.
	// test.guixfarm.io/duration for the test builder): requests to a particular step that the API
	// does not model.
	Hints map[string]string
	// Limits bound the build.
	Limits Limits
	// Log receives the build's log as the daemon sends it (lines end in '\n'; bytes need not be
	// UTF-8). The agent stores it where users read logs and keeps its last lines for the attempt's
	// message. It is never nil.
	Log io.Writer
	// StillOwned checks, freshly and not from a cache, that the agent still owns the attempt. A
	// step calls it right before its final publication step (the narinfo write): an attempt that
	// lost ownership publishes nothing. It is never nil.
	StillOwned func(ctx context.Context) error
}

// Limits bound one attempt; zero means no limit.
type Limits struct {
	// Timeout bounds the build's wall time (the daemon's build timeout).
	Timeout time.Duration
	// MaxSilent bounds the time without log output (the daemon's max silent time).
	MaxSilent time.Duration
	// MaxLogBytes bounds the build log; past it the attempt ends with KindLogLimit.
	MaxLogBytes int64
}

// Output is one output of the derivation.
type Output struct {
	Name string
	// Path is the output's store path.
	Path string
	// NarHash is set once the output is published ("sha256:<nix-base32>").
	NarHash string
}

// Result is a successful attempt: every requested output is published.
type Result struct {
	Outputs []Output
}
