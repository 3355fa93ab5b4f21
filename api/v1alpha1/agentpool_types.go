package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types of an AgentPool.
const (
	// AgentPoolConditionReady is True while at least minReplicas agents hold a live Lease.
	AgentPoolConditionReady = "Ready"
)

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

	// Template is the agent pod: the agent container and a guix-daemon sidecar sharing the store.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	Template *corev1.PodTemplateSpec `json:"template,omitempty"`
}

// AgentPoolStatus is what the pool looks like now.
type AgentPoolStatus struct {
	// Replicas is the number of agents of this pool holding a live Lease.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyAgents is the number of agents with a live Lease.
	// +optional
	ReadyAgents int32 `json:"readyAgents"`

	// RunningBuilds is the number of builds the pool's agents run.
	// +optional
	RunningBuilds int32 `json:"runningBuilds"`

	// QueueDepth is the number of pending builds for the pool's systems.
	// +optional
	QueueDepth int32 `json:"queueDepth"`

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
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyAgents`
// +kubebuilder:printcolumn:name="Running",type=integer,JSONPath=`.status.runningBuilds`
// +kubebuilder:printcolumn:name="Queue",type=integer,JSONPath=`.status.queueDepth`
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
