// Package index names the field indexes the controller registers on its Build cache, so every
// query spells them the same way.
package index

import (
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

const (
	// BuildDerivation indexes Builds by spec.derivation (finding the Builds of an input derivation).
	BuildDerivation = "spec.derivation"
	// BuildAttemptAgent indexes Builds by the agent running their attempt (agent loss).
	BuildAttemptAgent = "status.attempt.agent"
)

// Derivation is the BuildDerivation index function.
func Derivation(o client.Object) []string {
	b, ok := o.(*farmv1.Build)
	if !ok {
		return nil
	}
	return []string{b.Spec.Derivation}
}

// AttemptAgent is the BuildAttemptAgent index function.
func AttemptAgent(o client.Object) []string {
	b, ok := o.(*farmv1.Build)
	if !ok || b.Status.Attempt == nil {
		return nil
	}
	return []string{b.Status.Attempt.Agent}
}
