package agent

import (
	"context"
	"errors"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

// Builder is the agent's build step: substitute the inputs, build through the daemon, publish the
// outputs. The daemon-backed builder comes with the daemon issue; tests drive a test builder.
type Builder interface {
	// Build runs one attempt. It returns the outputs (with NarHash once published) or an error,
	// which fails the attempt. Wrap ErrRelease to give the Build back without spending an attempt.
	// ctx is canceled when the Build is canceled or the agent stops.
	Build(ctx context.Context, req Request) (Result, error)
}

// Request is one attempt of one Build.
type Request struct {
	// Build is a copy of the claimed Build.
	Build *farmv1.Build
	// Attempt numbers attempts from 1.
	Attempt int32
	// Agent is the name of the agent running the attempt.
	Agent string
}

// Result is a successful attempt.
type Result struct {
	Outputs []farmv1.Output
}

// ErrRelease marks a setup failure (e.g. missing inputs): the Build goes back to Pending without
// counting the attempt against its retry budget.
var ErrRelease = errors.New("released")
