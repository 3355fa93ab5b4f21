// Package builds reconciles Builds: it learns each derivation's facts, feeds the planner, writes
// the planner's allocations and wait reasons, cancels, skips what is already built, creates Builds
// for missing inputs and deletes finished Builds after their TTL. One status patch per reconcile,
// with optimistic locking, so it never overwrites an agent's claim.
package builds

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/planloop"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// FactsSource reads the facts of a .drv (system, outputs, input derivations), cached; it follows
// drvsource's error contract (drvsource.FactsCache is one).
type FactsSource interface {
	Get(ctx context.Context, drvPath string) (derivation.Facts, error)
}

// Availability is the farm's one owner of output availability (internal/availability), as the
// Build reconciler uses it: it tells the owner of successes, and asks it (never its own memory,
// never the bucket directly) whether a derivation's outputs are available.
type Availability interface {
	Succeeded(drv string, outputs []string, at time.Time) bool
	Peek(drv string) (available, known bool)
	CheckFresh(ctx context.Context, drv string) (bool, error)
	Gone(drv, why string)
}

// Reconciler reconciles Builds.
type Reconciler struct {
	Client       client.Client
	Facts        FactsSource
	Availability Availability
	Loop         *planloop.Loop
	Clock        clock.Clock
	Recorder     events.EventRecorder
	Metrics      *metrics.Metrics
	// DefaultTTL deletes finished Builds this long after they finished; 0 keeps them.
	DefaultTTL time.Duration
	// MaxConcurrentReconciles bounds parallel reconciles.
	MaxConcurrentReconciles int
	// Loading, when set, hears of each Build's first reconcile (the first plan waits for all).
	Loading *planloop.Loading
	// WriteQueueStatus: a Build that never had a status and only waits (inputs not built yet, or
	// no free agent) gets its facts and wait reason written after FactsDelay; without it, nothing
	// until it is allocated (controllers.Options.WriteQueueStatus).
	WriteQueueStatus bool

	planned chan event.TypedGenericEvent[*farmv1.Build]

	// wroteFrom holds, per Build, the resourceVersion our last status write was based on, until the
	// cache moves past it. A reconcile that still reads that version (a planner notification
	// racing our own write's watch event) would only lose a conflicting write; the watch event
	// brings the Build back anyway.
	mu        sync.Mutex
	wroteFrom map[types.NamespacedName]string
	// wroteTo holds, per Build, the resourceVersion our last status write made, until its watch
	// event arrives: that event shows exactly what the reconcile that wrote it already decided, so
	// it is not reconciled again (one reconcile per change, not two).
	wroteTo map[types.NamespacedName]string
	// pending holds, per Build, the status write in flight. Its watch event can reach the
	// predicate before the write's response reaches the reconciler (often, under load): the event
	// that moves the Build from the version the write was based on to exactly the status it set
	// is that write's, and is not reconciled again either.
	pending map[types.NamespacedName]*pendingWrite
}

// pendingWrite is a status write in flight: the version it is based on (its optimistic lock) and
// the status it sets, as the apiserver will store it.
type pendingWrite struct {
	base   string
	status farmv1.BuildStatus
	seen   bool // its watch event came before the response
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// SetupWithManager wires the reconciler: Build events (which also feed metrics and events on
// agent-made transitions) and the planner's notifications.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.planned = make(chan event.TypedGenericEvent[*farmv1.Build], 4096)
	return ctrl.NewControllerManagedBy(mgr).
		Named("build").
		WatchesRawSource(source.Kind(mgr.GetCache(), &farmv1.Build{}, &handler.TypedEnqueueRequestForObject[*farmv1.Build]{}, r)).
		WatchesRawSource(source.Channel(r.planned, &handler.TypedEnqueueRequestForObject[*farmv1.Build]{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, r.MaxConcurrentReconciles)}).
		Complete(r)
}

// Notify asks for a reconcile of the Build the planner changed.
func (r *Reconciler) Notify(k planner.BuildKey) {
	ns, name := splitKey(k)
	b := &farmv1.Build{}
	b.Namespace, b.Name = ns, name
	r.planned <- event.TypedGenericEvent[*farmv1.Build]{Object: b}
}

// Reconcile brings one Build forward.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx).WithValues("build", req.NamespacedName.String())
	ctx = ctrl.LoggerInto(ctx, log)
	key := buildKey(req.NamespacedName)
	// At start, judged only once the planner knows the agents and pools (planloop.Loading).
	if err := r.Loading.WaitCapabilities(ctx); err != nil {
		return ctrl.Result{}, err
	}
	defer r.Loading.Seen(key)
	b := &farmv1.Build{}
	if err := r.Client.Get(ctx, req.NamespacedName, b); err != nil {
		if apierrors.IsNotFound(err) {
			r.Loop.Forget(key)
			r.forgetWrite(req.NamespacedName)
			r.dropWrite(req.NamespacedName)
			r.Metrics.BuildReconciles.WithLabelValues("gone").Inc()
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if r.behindOwnWrite(req.NamespacedName, b.ResourceVersion) {
		// Our write's watch event is still to come. It must bring the Build back now (something
		// asked for this reconcile: the planner allocated it, say), so it is no longer skipped.
		// Only if that event was skipped already (it raced with this reconcile's read) does a
		// requeue stand in for it: requeueing always would cost a second pass for nothing.
		r.Metrics.BuildReconciles.WithLabelValues("behind").Inc()
		if r.keepOwnWriteEvent(req.NamespacedName) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{RequeueAfter: ownWriteRequeue}, nil
	}
	if b.Status.Phase.Finished() {
		r.Metrics.BuildReconciles.WithLabelValues("finished").Inc()
		r.Loop.Forget(key)
		if b.Status.Phase == farmv1.BuildSucceeded {
			// Its agent published every output (nar, then narinfo) before reporting; the owner
			// tells the planner. An old success (seen again after a restart) tells nothing: the
			// planner lists the derivation as unresolved, and the bucket answers.
			planloop.SucceededBuild(r.Availability, b)
		}
		return r.reconcileTTL(ctx, b, r.Clock.Now())
	}
	before := b.DeepCopy()
	res, err := r.reconcilePending(ctx, &scope{b: b, key: key, now: r.Clock.Now(), log: log})
	if !equalStatus(before, b) {
		r.expectWrite(req.NamespacedName, before.ResourceVersion, &b.Status)
	}
	if perr := r.patchStatus(ctx, before, b); perr != nil {
		r.dropWrite(req.NamespacedName)
		if apierrors.IsConflict(perr) {
			// A newer version exists, and its watch event brings us back; the requeue is a fallback.
			r.Metrics.Conflicts.WithLabelValues("controller").Inc()
			return ctrl.Result{RequeueAfter: conflictRequeue}, nil
		}
		return ctrl.Result{}, perr
	}
	if !equalStatus(before, b) {
		r.wrote(req.NamespacedName, before.ResourceVersion, b.ResourceVersion)
		r.Metrics.BuildReconciles.WithLabelValues("wrote").Inc()
	} else {
		r.Metrics.BuildReconciles.WithLabelValues("unchanged").Inc()
	}
	if before.Status.Phase != b.Status.Phase {
		agent := ""
		if b.Status.Allocation != nil {
			agent = b.Status.Allocation.Agent
		}
		log.V(1).Info("Moved build", "from", before.Status.Phase, "to", b.Status.Phase, "agent", agent)
	}
	if b.Status.Allocation != nil {
		r.Loop.Written(key, b.Status.Allocation.Agent)
	} else {
		r.Loop.Written(key, "")
	}
	return res, err
}

// behindOwnWrite says whether the cached version rv predates our last status write of n; once the
// cache has moved on, it forgets the write.
func (r *Reconciler) behindOwnWrite(n types.NamespacedName, rv string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if from, ok := r.wroteFrom[n]; ok && from == rv {
		return true
	}
	delete(r.wroteFrom, n)
	return false
}

// forgetWrite drops the record of n's last write (the Build is gone).
func (r *Reconciler) forgetWrite(n types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.wroteFrom, n)
	delete(r.wroteTo, n)
}

// wrote records that a status write of n based on version from succeeded, making version to.
func (r *Reconciler) wrote(n types.NamespacedName, from, to string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wroteFrom == nil {
		r.wroteFrom = map[types.NamespacedName]string{}
		r.wroteTo = map[types.NamespacedName]string{}
	}
	r.wroteFrom[n] = from
	if p := r.pending[n]; p == nil || !p.seen {
		r.wroteTo[n] = to // its event is still to come
	}
	delete(r.pending, n)
}

// expectWrite records the status write about to be made of n from version base.
func (r *Reconciler) expectWrite(n types.NamespacedName, base string, st *farmv1.BuildStatus) {
	p := &pendingWrite{base: base}
	// As stored: times to the second, as JSON carries them; the watch delivers that form.
	if data, err := json.Marshal(st); err != nil || json.Unmarshal(data, &p.status) != nil {
		return // unmatched, its event is simply reconciled
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		r.pending = map[types.NamespacedName]*pendingWrite{}
	}
	r.pending[n] = p
}

// dropWrite forgets a status write of n that failed.
func (r *Reconciler) dropWrite(n types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, n)
}

// keepOwnWriteEvent makes the watch event of our last write of n reconcile it after all; it says
// whether that event is still to come (false: it came and was skipped already).
func (r *Reconciler) keepOwnWriteEvent(n types.NamespacedName) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, pending := r.wroteTo[n]
	delete(r.wroteTo, n)
	return pending
}

// ownWriteRequeue is the fallback for a reconcile asked for while the cache still lagged behind
// our own write.
const ownWriteRequeue = 250 * time.Millisecond

// ownWrite says whether the update of n from version oldRV to newRV (with status st) is our own
// status write arriving through the watch, and forgets the write once its event is seen.
func (r *Reconciler) ownWrite(n types.NamespacedName, oldRV, rv string, st *farmv1.BuildStatus) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.pending[n]; p != nil && !p.seen && p.base == oldRV && equality.Semantic.DeepEqual(&p.status, st) {
		p.seen = true
		return true
	}
	w, ok := r.wroteTo[n]
	if !ok {
		return false
	}
	delete(r.wroteTo, n)
	return w == rv
}

// conflictRequeue is the fallback retry after losing a status write to a concurrent writer.
const conflictRequeue = time.Second

// scope carries what the phases of one reconcile share.
type scope struct {
	b     *farmv1.Build
	key   planner.BuildKey
	now   time.Time
	log   logr.Logger
	facts derivation.Facts
}

// reconcilePending runs the policies of a Build that has not finished, in order; each one may end
// the reconcile.
func (r *Reconciler) reconcilePending(ctx context.Context, s *scope) (ctrl.Result, error) {
	blank := blankStatus(s.b)
	if res, done := r.reconcileFacts(ctx, s); done {
		return res, nil
	}
	if r.reconcileCancel(s) {
		r.Loop.Forget(s.key)
		return ctrl.Result{}, nil
	}
	done, retrySkip := r.reconcileSkip(ctx, s)
	if done {
		r.Loop.Forget(s.key)
		return ctrl.Result{}, nil
	}
	retry := soonest(retrySkip, soonest(r.reconcileInputBuilds(ctx, s), r.reconcileMissingInputs(ctx, s)))
	r.reconcileAllocation(s)
	if !r.WriteQueueStatus && blank && onlyWaiting(s.b) {
		// Nothing a user must act on: the wait reason stays in the planner (setWait put it in the
		// copy being written; it is dropped), and the first write comes with the allocation.
		s.b.Status.Conditions = nil
		return ctrl.Result{RequeueAfter: retry}, nil
	}
	if !blank || s.b.Status.Allocation != nil || len(s.b.Status.Conditions) > 0 {
		recordFacts(s, s.b.Status.Allocation != nil)
		return ctrl.Result{RequeueAfter: retry}, nil
	}
	// Nothing to say yet: give the planner a moment, so one write carries facts and allocation.
	if age := s.now.Sub(s.b.CreationTimestamp.Time); age < FactsDelay {
		return ctrl.Result{RequeueAfter: FactsDelay - age}, nil
	}
	recordFacts(s, false)
	return ctrl.Result{RequeueAfter: retry}, nil
}

// blankStatus says whether b has never been given a status by the controller: what it was created
// with, the phase the CRD defaults (Pending, or none in a fake client) and nothing else.
func blankStatus(b *farmv1.Build) bool {
	st := &b.Status
	return (st.Phase == "" || st.Phase == farmv1.BuildPending) && st.System == "" && len(st.Conditions) == 0 &&
		st.Allocation == nil && st.Attempt == nil && st.AttemptCount == 0
}

// onlyWaiting says whether all b's status would say is that it waits for its inputs to be built
// (or for nothing: a free agent): no allocation, and no condition a user must see (no agent for
// its system, a failed input, missing inputs, an unreadable .drv).
func onlyWaiting(b *farmv1.Build) bool {
	if b.Status.Allocation != nil || b.Status.Attempt != nil || b.Status.Phase.Finished() {
		return false
	}
	for _, c := range b.Status.Conditions {
		if c.Type != farmv1.BuildConditionInputsPending || c.Reason != string(planner.InputsPending) {
			return false
		}
	}
	return true
}

// soonest is the earlier of two requeue delays, 0 meaning none.
func soonest(a, b time.Duration) time.Duration {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

// patchStatus writes the status once, if it changed, with the resourceVersion of what was read.
func (r *Reconciler) patchStatus(ctx context.Context, before, after *farmv1.Build) error {
	if equalStatus(before, after) {
		return nil
	}
	return r.Client.Status().Patch(ctx, after, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
}

func buildKey(n types.NamespacedName) planner.BuildKey {
	return planner.BuildKey(n.Namespace + "/" + n.Name)
}

func splitKey(k planner.BuildKey) (ns, name string) {
	ns, name, _ = strings.Cut(string(k), "/")
	return ns, name
}
