package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types of an AgentPool.
const (
	// AgentPoolConditionReady is True while at least minReplicas agents hold a live Lease.
	AgentPoolConditionReady = "Ready"
	// AgentPoolConditionTemplateValid is False while the pool's pod cannot be made from its spec
	// (the message names the field and the fix); no pod is created or changed meanwhile.
	AgentPoolConditionTemplateValid = "TemplateValid"
	// AgentPoolConditionScaling says what the pool's size follows and why it last changed.
	AgentPoolConditionScaling = "Scaling"
	// AgentPoolConditionRolledOut is False while agents of an older template are drained and replaced.
	AgentPoolConditionRolledOut = "RolledOut"
)

// Isolation is how builds are isolated from the node: the daemon sidecar needs privileges to make
// its build sandboxes, and the pool says which kind it gets. There is no unisolated profile.
// +kubebuilder:validation:Enum=Privileged;UserNamespace
type Isolation string

const (
	// IsolationPrivileged runs the daemon sidecar privileged (the default; works on every node).
	IsolationPrivileged Isolation = "Privileged"
	// IsolationUserNamespace runs the pod in its own user namespace (hostUsers: false) and gives
	// the daemon only the capabilities its sandboxes need; the node must support user namespaces.
	IsolationUserNamespace Isolation = "UserNamespace"
)

// DaemonSpec is the pool's build daemon sidecar. Empty fields take the farm's defaults (the
// controller's --daemon-* flags, set from the chart's values).
type DaemonSpec struct {
	// Image of the daemon (guix-daemon by default).
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// Command replaces the image's daemon command (the farm's default runs guix-daemon).
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=1024
	Command []string `json:"command,omitempty"`

	// Args are added after the farm's daemon arguments.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=1024
	Args []string `json:"args,omitempty"`

	// SubstituteURLs the daemon may substitute from, after the farm's bucket.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=512
	SubstituteURLs []string `json:"substituteURLs,omitempty"`

	// AuthorizedKeys are Guix public keys (the contents of a signing-key.pub) whose signatures
	// the daemon accepts on substitutes, besides the farm's own.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=1024
	AuthorizedKeys []string `json:"authorizedKeys,omitempty"`
}

// Autoscaling sizes the pool from its queue.
type Autoscaling struct {
	// Enabled lets the controller set spec.replicas from the builds the pool's agents could claim
	// and those they run: min(maxReplicas (default 100), max(minReplicas, ceil((claimable +
	// running) / maxParallelBuilds))). Off, spec.replicas is the user's (kubectl scale) or an HPA's.
	// +optional
	Enabled bool `json:"enabled,omitempty"`

	// StabilizationWindowSeconds: the pool shrinks only to the largest size wanted over this window.
	// +optional
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	StabilizationWindowSeconds int32 `json:"stabilizationWindowSeconds,omitempty"`

	// IdleGraceSeconds: a newly ready agent does not count as idle before this.
	// +optional
	// +kubebuilder:default=60
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	IdleGraceSeconds int32 `json:"idleGraceSeconds,omitempty"`
}

// AgentPoolSpec describes a set of identical agents.
// +kubebuilder:validation:XValidation:rule="!has(self.maxReplicas) || !has(self.replicas) || self.replicas <= self.maxReplicas",message="spec.replicas must not exceed spec.maxReplicas: raise maxReplicas first"
// +kubebuilder:validation:XValidation:rule="!has(self.minReplicas) || !has(self.replicas) || self.replicas >= self.minReplicas",message="spec.replicas must not be below spec.minReplicas: lower minReplicas first"
// +kubebuilder:validation:XValidation:rule="!has(self.maxReplicas) || !has(self.minReplicas) || self.minReplicas <= self.maxReplicas",message="spec.minReplicas must not exceed spec.maxReplicas"
type AgentPoolSpec struct {
	// Systems the agents build for, e.g. x86_64-linux, i686-linux.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=63
	Systems []string `json:"systems"`

	// Features the agents offer (kvm, big-parallel, ...), matched against a Build's requirements.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=63
	Features []string `json:"features,omitempty"`

	// Replicas is the desired number of agents; `kubectl scale agentpool` sets it.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	Replicas *int32 `json:"replicas,omitempty"`

	// MinReplicas bounds scaling from below.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MinReplicas *int32 `json:"minReplicas,omitempty"`

	// MaxReplicas bounds scaling from above.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxReplicas *int32 `json:"maxReplicas,omitempty"`

	// MaxParallelBuilds is the number of builds one agent runs at once.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=256
	MaxParallelBuilds int32 `json:"maxParallelBuilds,omitempty"`

	// Isolation of the builds: Privileged (default) or UserNamespace.
	// +optional
	// +kubebuilder:default=Privileged
	Isolation Isolation `json:"isolation,omitempty"`

	// Daemon is the build daemon sidecar.
	// +optional
	Daemon *DaemonSpec `json:"daemon,omitempty"`

	// Autoscaling sizes the pool from its queue.
	// +optional
	Autoscaling *Autoscaling `json:"autoscaling,omitempty"`

	// Template adds to the agent pod the controller makes (an agent container and a daemon
	// sidecar sharing the store): labels, annotations, node selectors, tolerations, affinity,
	// resources and volumes, and containers named "agent" or "daemon" merged into those.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	Template *corev1.PodTemplateSpec `json:"template,omitempty"`
}

// AgentPoolStatus is what the pool looks like now.
type AgentPoolStatus struct {
	// Replicas is the number of the pool's pods that exist and have not failed.
	// +optional
	Replicas int32 `json:"replicas"`

	// UpdatedReplicas is the number of pods made from the current template.
	// +optional
	UpdatedReplicas int32 `json:"updatedReplicas,omitempty"`

	// DrainingAgents is the number of agents taking no new builds before they go (scale-down or
	// template change).
	// +optional
	DrainingAgents int32 `json:"drainingAgents,omitempty"`

	// DesiredReplicas is the size autoscaling last wanted (without autoscaling: spec.replicas).
	// +optional
	DesiredReplicas int32 `json:"desiredReplicas,omitempty"`

	// Isolation in use by the pool's pods.
	// +optional
	Isolation Isolation `json:"isolation,omitempty"`

	// LastScaleTime is when autoscaling last changed spec.replicas.
	// +optional
	LastScaleTime *metav1.Time `json:"lastScaleTime,omitempty"`

	// ReadyAgents is the number of agents with a live Lease.
	// +optional
	ReadyAgents int32 `json:"readyAgents"`

	// RunningBuilds is the number of builds the pool's agents run.
	// +optional
	RunningBuilds int32 `json:"runningBuilds"`

	// QueueDepth is the number of pending builds for the pool's systems.
	// +optional
	QueueDepth int32 `json:"queueDepth"`

	// ClaimableBuilds is the number of builds the pool's agents could claim now (their inputs
	// ready, systems and features served): what autoscaling follows.
	// +optional
	ClaimableBuilds int32 `json:"claimableBuilds,omitempty"`

	// Selector is the label selector of the pool's agents, for the scale subresource (HPA).
	// +optional
	Selector string `json:"selector,omitempty"`

	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AgentPool is a set of identical agents for some systems.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=ap,categories=guixfarm
// +kubebuilder:printcolumn:name="Systems",type=string,JSONPath=`.spec.systems`
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.spec.replicas`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.replicas`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyAgents`
// +kubebuilder:printcolumn:name="Running",type=integer,JSONPath=`.status.runningBuilds`
// +kubebuilder:printcolumn:name="Queue",type=integer,JSONPath=`.status.queueDepth`
// +kubebuilder:printcolumn:name="Isolation",type=string,JSONPath=`.status.isolation`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AgentPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AgentPoolSpec   `json:"spec"`
	Status AgentPoolStatus `json:"status,omitempty"`
}

// AgentPoolList is a list of AgentPools.
// +kubebuilder:object:root=true
type AgentPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AgentPool `json:"items"`
}
