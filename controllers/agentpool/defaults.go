package agentpool

import (
	"fmt"
	"slices"
	"strings"
)

// Defaults are the farm-wide settings of agent pods (the controller's --agent-* and --daemon-*
// flags, set from the chart's values); a pool's spec overrides the daemon's, and its template adds
// to the pod.
type Defaults struct {
	// AgentImage runs the agent container.
	AgentImage string
	// AgentArgs are added to every agent's arguments (e.g. --lease-duration=1m).
	AgentArgs []string
	// ServiceAccount the agent pods run as (the agents' least-privilege identity).
	ServiceAccount string
	// PublisherURL is the controller's publisher service; agents publish through it and hold no
	// signing key or bucket credential.
	PublisherURL string
	// TokenAudience is the audience of the pod-bound token agents send to the publisher.
	TokenAudience string
	// BucketURL is the bucket's public substitute URL, the daemon's first substituter.
	BucketURL string
	// TrustedPublicKeys are Nix-format public keys the agent tells a nix-daemon to trust.
	TrustedPublicKeys []string

	// DaemonImage runs the daemon sidecar (a guix-daemon image by default).
	DaemonImage string
	// DaemonArgs are added to guix-daemon's arguments (with the default daemon command).
	DaemonArgs []string
	// SubstituteURLs the daemon uses after the farm's bucket (a distribution's, say).
	SubstituteURLs []string
	// AuthorizedKeys are Guix public keys (signing-key.pub contents) the daemon accepts, the
	// farm's own first.
	AuthorizedKeys []string

	// SystemArch maps a Guix system to the kubernetes.io/arch of the nodes that build it natively.
	SystemArch map[string]string
	// StoreSize, when set (e.g. "100Gi"), gives each agent a PersistentVolumeClaim of that size for
	// its store (kept across restarts and scale-downs); empty, the store is an emptyDir.
	StoreSize string
	// StoreClass is the storage class of those claims ("" is the cluster's default).
	StoreClass string
}

// DefaultSystemArch returns the documented map from Guix systems to node architectures; the
// controller's --system-arch flag overrides entries.
func DefaultSystemArch() map[string]string {
	return map[string]string{
		"x86_64-linux":      "amd64",
		"i686-linux":        "amd64",
		"aarch64-linux":     "arm64",
		"armhf-linux":       "arm",
		"powerpc64le-linux": "ppc64le",
		"riscv64-linux":     "riscv64",
		"mips64el-linux":    "mips64le",
		"s390x-linux":       "s390x",
	}
}

// ParseSystemArch reads "system=arch,..." over DefaultSystemArch.
func ParseSystemArch(s string) (map[string]string, error) {
	m := DefaultSystemArch()
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		sys, arch, ok := strings.Cut(kv, "=")
		if !ok || sys == "" || arch == "" {
			return nil, fmt.Errorf("--system-arch entry %q: want system=arch, e.g. aarch64-linux=arm64", kv)
		}
		m[sys] = arch
	}
	return m, nil
}

// archOf returns the one architecture whose nodes build all of systems, or why there is none.
func (d Defaults) archOf(systems []string) (string, error) {
	var arches []string
	for _, s := range systems {
		a, ok := d.SystemArch[s]
		if !ok {
			return "", fmt.Errorf("system %q has no node architecture: add it to the controller's --system-arch (system=arch), or set spec.template.spec.nodeSelector[kubernetes.io/arch] yourself", s)
		}
		if !slices.Contains(arches, a) {
			arches = append(arches, a)
		}
	}
	if len(arches) > 1 {
		slices.Sort(arches)
		return "", fmt.Errorf("systems %v run natively on different architectures (%s): a pod runs on one node, so split the pool by architecture, or set spec.template.spec.nodeSelector[kubernetes.io/arch] for emulation", systems, strings.Join(arches, ", "))
	}
	return arches[0], nil
}
