package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BuildPhase is the coarse state of a Build. Conditions carry the detail.
// +kubebuilder:validation:Enum=Pending;Allocated;Running;Succeeded;Failed;Canceled
type BuildPhase string

const (
	BuildPending   BuildPhase = "Pending"
	BuildAllocated BuildPhase = "Allocated"
	BuildRunning   BuildPhase = "Running"
	BuildSucceeded BuildPhase = "Succeeded"
	BuildFailed    BuildPhase = "Failed"
	BuildCanceled  BuildPhase = "Canceled"
)

// Finished reports whether the phase is terminal.
func (p BuildPhase) Finished() bool {
	return p == BuildSucceeded || p == BuildFailed || p == BuildCanceled
}

// Condition types of a Build.
const (
	// BuildAllocated is True while the planner has put the build in an agent's horizon.
	BuildConditionAllocated = "Allocated"
	// BuildConditionRunning is True while an agent runs an attempt.
	BuildConditionRunning = "Running"
	// BuildConditionSucceeded is True once an attempt succeeded, False once the build gave up or was canceled.
	BuildConditionSucceeded = "Succeeded"
	// BuildConditionInputsPending is True while the derivation-ordered strategy waits for input derivations.
	BuildConditionInputsPending = "InputsPending"
	// BuildConditionSchedulable is False while no agent or pool serves the build's system and requirements.
	BuildConditionSchedulable = "Schedulable"
	// BuildConditionDerivationReadable is False while the .drv cannot be read or parsed.
	BuildConditionDerivationReadable = "DerivationReadable"
	// BuildConditionOutputsChecked is False while the bucket cannot tell whether the outputs of a
	// Build with spec.skipIfOutputsAvailable exist (its message names the error); the check is
	// retried with backoff while the Build is planned as usual.
	BuildConditionOutputsChecked = "OutputsChecked"
)

// Reasons recorded on attempts and conditions.
const (
	ReasonBuildFailed     = "BuildFailed"
	ReasonAgentLost       = "AgentLost"
	ReasonAgentReleased   = "AgentReleased"
	ReasonCanceled        = "Canceled"
	ReasonSucceeded       = "Succeeded"
	ReasonRetriesExceeded = "RetriesExceeded"
	// Reasons of the agent's build step (agent/buildstep maps each failure to one).
	ReasonMissingInputs   = "MissingInputs"
	ReasonSetupFailed     = "SetupFailed"
	ReasonTimedOut        = "TimedOut"
	ReasonLogLimit        = "LogLimitExceeded"
	ReasonNotReproducible = "NotReproducible"
	ReasonAgentUnhealthy  = "AgentUnhealthy"
	// ReasonInvalidDerivation: spec.derivation names a .drv that cannot be parsed or is out of
	// bounds; it can never build, so the Build fails without an attempt.
	ReasonInvalidDerivation = "InvalidDerivation"
)

// BuildSpec is what the user asked for.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.canceled) || !oldSelf.canceled || (has(self.canceled) && self.canceled)",message="spec.canceled cannot be undone: submit a new Build for the same derivation"
type BuildSpec struct {
	// Derivation is the .drv store path to build: an absolute path in the store directory,
	// /gnu/store/<32 nix-base32 characters>-<name>.drv, e.g. /gnu/store/<hash>-hello-2.12.drv.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// The pattern is an OpenAPI pattern rather than a CEL matches(): CEL's regex made every create 5x dearer.
	// +kubebuilder:validation:Pattern=`^/([A-Za-z0-9._+-]+/)*[0123456789abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+._?=-]+[.]drv$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.derivation is immutable: create a new Build to build another derivation"
	Derivation string `json:"derivation"`

	// Priority orders pending builds: higher first. Prerequisites of urgent builds inherit their priority.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=-1000000
	// +kubebuilder:validation:Maximum=1000000
	Priority int32 `json:"priority,omitempty"`

	// Requirements are system features an agent must offer to take this build (e.g. kvm, big-parallel).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=63
	Requirements []string `json:"requirements,omitempty"`

	// Retry bounds the attempts of this build. A failed attempt is retried with exponential backoff.
	// +optional
	Retry *RetryPolicy `json:"retry,omitempty"`

	// DeferUntil keeps the build pending until this time.
	// +optional
	DeferUntil *metav1.Time `json:"deferUntil,omitempty"`

	// Canceled withdraws a pending build and tells the agent holding it to abort. It cannot be undone.
	// +optional
	Canceled bool `json:"canceled,omitempty"`

	// SkipIfOutputsAvailable finishes the build at once as Succeeded when every output is already
	// available (a succeeded build or a substitute in the farm's bucket).
	// +optional
	SkipIfOutputsAvailable bool `json:"skipIfOutputsAvailable,omitempty"`

	// EnsureInputBuilds creates a Build, at this build's priority, for every input derivation
	// whose outputs are not available and that has no Build, named as `kubectl guixfarm submit`
	// names it (internal/buildname) and annotated build.guixfarm.io/created-for with this
	// build's name. A failed input Build is not replaced: delete it (or submit the derivation
	// under another name) to build it again.
	// +optional
	EnsureInputBuilds bool `json:"ensureInputBuilds,omitempty"`

	// TTLSecondsAfterFinished deletes the Build this long after it finished. Unset takes the farm's default;
	// the bucket, not the Build, is the durable record.
	// +optional
	// +kubebuilder:validation:Minimum=0
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`

	// TimeoutSeconds bounds each attempt's build time; past it the attempt ends TimedOut and the
	// Build fails without another attempt. Unset takes the agent pool's default.
	// +optional
	// +kubebuilder:validation:Minimum=1
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`

	// MaxSilentSeconds bounds the time a build may run without log output; past it the attempt
	// ends TimedOut. Unset takes the agent pool's default.
	// +optional
	// +kubebuilder:validation:Minimum=1
	MaxSilentSeconds *int32 `json:"maxSilentSeconds,omitempty"`
}

// RetryPolicy bounds attempts and spaces them out.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first included.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxAttempts int32 `json:"maxAttempts,omitempty"`

	// BackoffSeconds is the wait before the second attempt; it doubles for each further attempt.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	BackoffSeconds int32 `json:"backoffSeconds,omitempty"`

	// MaxBackoffSeconds caps the backoff.
	// +optional
	// +kubebuilder:default=3600
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=604800
	MaxBackoffSeconds int32 `json:"maxBackoffSeconds,omitempty"`
}

// Allocation is the planner's decision: the agent that should take the build next.
type Allocation struct {
	// Agent is the name of the agent (its Lease) the build is allocated to.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Agent string `json:"agent"`
	// Priority is the effective (derived) priority at planning time; the agent takes its highest first.
	// +optional
	Priority int32 `json:"priority,omitempty"`
	// PlannedAt is when the planner made the allocation.
	// +required
	PlannedAt metav1.Time `json:"plannedAt"`
}

// Attempt is the attempt in flight.
type Attempt struct {
	// Agent runs the attempt.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Agent string `json:"agent"`
	// Started is when the agent claimed the build.
	// +required
	Started metav1.Time `json:"started"`
	// LeaseUID is the owner token: the UID of the agent's Lease when it claimed the build. An
	// agent declared lost has its Lease deleted, so a Lease it creates afterwards has another UID,
	// and the attempts of its earlier term are no longer its own (the controller ends them, the
	// agent aborts them and publishes nothing of them).
	// +optional
	// +kubebuilder:validation:MaxLength=36
	LeaseUID string `json:"leaseUID,omitempty"`
}

// AttemptResult is how an attempt ended.
// +kubebuilder:validation:Enum=Succeeded;Failed;Canceled
type AttemptResult string

const (
	AttemptSucceeded AttemptResult = "Succeeded"
	AttemptFailed    AttemptResult = "Failed"
	AttemptCanceled  AttemptResult = "Canceled"
)

// AttemptRecord is one finished attempt.
type AttemptRecord struct {
	// +required
	// +kubebuilder:validation:MaxLength=253
	Agent string `json:"agent"`
	// +required
	Start metav1.Time `json:"start"`
	// +required
	End metav1.Time `json:"end"`
	// +required
	Result AttemptResult `json:"result"`
	// Reason is a CamelCase word: BuildFailed, AgentLost, AgentReleased, ...
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Message string `json:"message,omitempty"`
}

// Output is one output of the derivation.
type Output struct {
	// +required
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
	// +required
	// +kubebuilder:validation:MaxLength=1024
	Path string `json:"path"`
	// NarHash is set once the output is published, as sha256:<nix-base32>.
	// +optional
	// +kubebuilder:validation:MaxLength=80
	NarHash string `json:"narHash,omitempty"`
}

// MaxAttemptHistory bounds status.attempts.
const MaxAttemptHistory = 8

// BuildStatus is what happened. A pending Build keeps it small: a distro farm holds 10^5 of them.
type BuildStatus struct {
	// Phase is the coarse state; conditions carry the detail.
	// +optional
	// +kubebuilder:default=Pending
	Phase BuildPhase `json:"phase,omitempty"`

	// Conditions: Allocated, Running, Succeeded, InputsPending, Schedulable, DerivationReadable.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// DerivationName is the name part of spec.derivation, for kubectl columns.
	// +optional
	// +kubebuilder:validation:MaxLength=211
	DerivationName string `json:"derivationName,omitempty"`

	// System the derivation builds for, read from the .drv.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	System string `json:"system,omitempty"`

	// Outputs of the derivation, read from the .drv; NarHash is filled once published.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Outputs []Output `json:"outputs,omitempty"`

	// Allocation is the agent the planner offers the build to.
	// +optional
	Allocation *Allocation `json:"allocation,omitempty"`

	// Attempt is the attempt in flight.
	// +optional
	Attempt *Attempt `json:"attempt,omitempty"`

	// AttemptCount is the number of attempts started, finished or not.
	// +optional
	AttemptCount int32 `json:"attemptCount,omitempty"`

	// LostAttempts counts the attempts lost to the farm's own faults (their agent was lost or
	// restarted): they are retried without spending spec.retry.maxAttempts, the user's budget for
	// failures of the build itself, up to MaxLostAttempts, past which the Build fails.
	// +optional
	// +kubebuilder:validation:Minimum=0
	LostAttempts int32 `json:"lostAttempts,omitempty"`

	// Attempts is the history of finished attempts, newest last, bounded.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Attempts []AttemptRecord `json:"attempts,omitempty"`

	// RetryAfter holds a failed build back until this time.
	// +optional
	RetryAfter *metav1.Time `json:"retryAfter,omitempty"`

	// StartTime is when the first attempt started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// CompletionTime is when the build finished.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// MissingInputs is what the last attempt could neither find nor substitute; the Build waits
	// for them (never fails for them). Kept while the next attempt runs (so a repeat is
	// counted); cleared when an attempt succeeds or fails.
	// +optional
	MissingInputs *MissingInputs `json:"missingInputs,omitempty"`
}

// MaxLostAttempts is the farm's own budget for attempts lost to its faults (agent loss, agent
// restart), apart from the user's spec.retry.maxAttempts: a build that keeps killing its agents
// still ends.
const MaxLostAttempts = 10

// MaxMissingInputs bounds each list of MissingInputs; More counts the rest.
const MaxMissingInputs = 32

// Bounds of what the API holds of a derivation, matched to real store paths: a store path's name
// has at most 211 characters (Nix's and Guix's limit), its hash 32, and the store directory is
// rarely long; 1024 leaves room for any store directory a farm would use. Guix packages have a
// handful of outputs; 64 is far past any. A .drv past them fails its Build (InvalidDerivation),
// naming the limit, instead of making every status write fail.
const (
	MaxStorePathLength  = 1024
	MaxOutputs          = 64
	MaxOutputNameLength = 63
	MaxSystemLength     = 63
)

// MissingInputs names inputs an agent could not substitute.
type MissingInputs struct {
	// Paths are the missing store paths.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=1024
	Paths []string `json:"paths,omitempty"`
	// Derivations produce the missing paths, where known.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=1024
	Derivations []string `json:"derivations,omitempty"`
	// More counts the paths and derivations left out of the lists above.
	// +optional
	More int32 `json:"more,omitempty"`
	// Releases counts the attempts in a row released for these same missing inputs; each
	// release holds the Build back (status.retryAfter) twice as long as the previous one, from 5
	// seconds up to 10 minutes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Releases int32 `json:"releases,omitempty"`
	// Agent reported them.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Agent string `json:"agent,omitempty"`
}

// Build asks the farm to build one derivation.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=bld,categories=guixfarm
// +kubebuilder:selectablefield:JSONPath=`.status.allocation.agent`
// +kubebuilder:selectablefield:JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Derivation",type=string,JSONPath=`.status.derivationName`
// +kubebuilder:printcolumn:name="Path",type=string,JSONPath=`.spec.derivation`,priority=1,description="The derivation's store path (-o wide): a queued Build shows its name and system only once allocated"
// +kubebuilder:printcolumn:name="System",type=string,JSONPath=`.status.system`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.status.allocation.priority`,description="The priority the planner uses (derived: prerequisites of urgent builds inherit it), while allocated"
// +kubebuilder:printcolumn:name="Requested",type=integer,JSONPath=`.spec.priority`,priority=1
// +kubebuilder:printcolumn:name="Agent",type=string,JSONPath=`.status.allocation.agent`
// +kubebuilder:printcolumn:name="Attempts",type=integer,JSONPath=`.status.attemptCount`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Build struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec BuildSpec `json:"spec"`
	// +kubebuilder:default={}
	Status BuildStatus `json:"status,omitempty"`
}

// BuildList is a list of Builds.
// +kubebuilder:object:root=true
type BuildList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Build `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Build{}, &BuildList{}, &AgentPool{}, &AgentPoolList{})
}
