// Package controllers wires the farm's reconcilers and the planning loop into a manager.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/controllers/agents"
	"github.com/guixfarm/guix-farm/controllers/builds"
	"github.com/guixfarm/guix-farm/controllers/planloop"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/index"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/internal/publishing"
)

// LeaderElectionID names the Lease the controller's replicas elect a leader with. It is named
// here, not only in cmd, so tests can check that agents cannot touch it.
const LeaderElectionID = "guix-farm-controller.build.guixfarm.io"

// Options configure the farm's controllers.
type Options struct {
	Strategy planner.Strategy
	// Facts reads .drv files.
	Facts builds.FactsSource
	// Bucket (optional) is the farm's bucket as the availability owner asks it (a
	// bucket.Reader). Without it, only the farm's own successes make outputs available.
	Bucket availability.Store
	// AvailabilityEntries bounds the derivations the availability owner remembers (0: its
	// default); the rest are asked of the bucket again when needed.
	AvailabilityEntries int
	// BuildTTL deletes finished Builds after this long (0 keeps them).
	BuildTTL time.Duration
	// PlanDebounce batches a burst of events into one planning pass.
	PlanDebounce time.Duration
	// BuildWorkers is the number of Builds reconciled in parallel.
	BuildWorkers int
	// WriteQueueStatus also writes the status of a queued Build that only waits (for its inputs,
	// or for a free agent): its system, name and wait reason, one write per queued Build. Off by
	// default, such a Build keeps the status it was created with (the CRD defaults its phase to
	// Pending) until it is allocated: docs/scale.md measures both (555 against 1,272 etcd bytes
	// per queued Build, and a cold start of 10^5 bound by those writes).
	WriteQueueStatus bool
	// ExpectedBuilds sizes the planner's tables once (the usual queue length); 0 lets them grow.
	ExpectedBuilds int
	// AgentGrace is added to a Lease's expiry before its agent is declared lost.
	AgentGrace time.Duration
	// AgentNamespace, when set, is the only namespace whose agent Leases are accepted: with the
	// controller watching every namespace, a Lease labelled as an agent elsewhere is ignored.
	AgentNamespace string
	// Publisher, when set, is the publisher service the manager serves at PublisherAddr
	// (internal/publishing): its Builds (fresh reads), Cache, Outputs and Recorder are filled in
	// here from the manager and Facts.
	Publisher     *publishing.Options
	PublisherAddr string
	// AgentPods make the pools' agent pods; with no AgentImage, no pods are made and pools report
	// on agents started elsewhere.
	AgentPods agentpool.Defaults
	Clock     clock.Clock
	Metrics   *metrics.Metrics
	Log       logr.Logger
}

// Farm is what Setup wired: the planning loop (whose planner tests reach) and the availability
// owner (which the GC tells of deletions).
type Farm struct {
	Loop         *planloop.Loop
	Availability *availability.Owner
	// Loading holds the first plan until the model is loaded.
	Loading *planloop.Loading
	// Publisher is the publisher service, when Options.Publisher was set.
	Publisher *publishing.Server
}

// Ready is the controller's readiness: its caches have synced and the planner has planned over a
// loaded model. With leader election, a replica that is not the leader plans nothing, and is
// ready once its caches are; without it the one replica must plan (the manager says it is
// "elected" only once it has started its runnables, which a probe may come before).
func (f *Farm) Ready(mgr ctrl.Manager, leaderElection bool) func(*http.Request) error {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("caches not synced yet")
		}
		leader := !leaderElection
		if !leader {
			select {
			case <-mgr.Elected():
				leader = true
			default:
			}
		}
		if leader && !f.Loop.Planned() {
			return fmt.Errorf("first full plan not done yet (%d Builds still loading into the planner)", f.Loading.Pending())
		}
		return nil
	}
}

// Setup registers indexes, reconcilers, the planning loop and the availability owner with mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) (*Farm, error) {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New(nil)
	}
	if o.Strategy == "" {
		o.Strategy = planner.Basic
	}
	if o.Strategy != planner.Basic && o.Strategy != planner.DerivationOrdered {
		return nil, fmt.Errorf("strategy %q: want %q or %q", o.Strategy, planner.Basic, planner.DerivationOrdered)
	}
	if o.Facts == nil {
		return nil, fmt.Errorf("controllers: a derivation source is required (--drv-dir or --drv-url)")
	}
	fi := mgr.GetFieldIndexer()
	if err := fi.IndexField(ctx, &farmv1.Build{}, index.BuildDerivation, index.Derivation); err != nil {
		return nil, fmt.Errorf("indexing %s: %w", index.BuildDerivation, err)
	}
	if err := fi.IndexField(ctx, &farmv1.Build{}, index.BuildAttemptAgent, index.AttemptAgent); err != nil {
		return nil, fmt.Errorf("indexing %s: %w", index.BuildAttemptAgent, err)
	}

	// The Build reconciler reads a new Build's wait reason itself (CurrentWait), so the planner
	// need not report first waits: at 10^5 new Builds that saves as many reconciles.
	// The planner asks the owner (a cache read) what it knows of each new input; the owner's
	// answers from the bucket reach the planner through OnAnswer. The owner is made last, once
	// the loop its answers kick exists, and before anything can ask it.
	var owner *availability.Owner
	p := planner.New(planner.Options{Strategy: o.Strategy, ExpectedBuilds: o.ExpectedBuilds, SkipInitialWaits: true,
		Lookup: func(drv string) (bool, bool) { return owner.Peek(drv) }})
	br := &builds.Reconciler{
		Client: mgr.GetClient(), Facts: o.Facts, Clock: o.Clock,
		Recorder: mgr.GetEventRecorder("guix-farm"), Metrics: o.Metrics, DefaultTTL: o.BuildTTL,
		MaxConcurrentReconciles: max(o.BuildWorkers, 1), WriteQueueStatus: o.WriteQueueStatus,
	}
	loop := planloop.New(p, o.Clock, o.Log.WithName("planner"), o.Metrics, o.PlanDebounce, br.Notify)
	br.Loop = loop
	loading := planloop.NewLoading(unfinishedBuilds(mgr.GetCache()), o.Clock, o.Log.WithName("loading"), loop.Kick)
	loading.ListCapabilities = agentsAndPools(mgr.GetCache(), o.AgentNamespace)
	loop.Loading, br.Loading = loading, loading
	var err error
	owner, err = availability.New(availability.Options{
		Store: o.Bucket, Outputs: outputPaths(o.Facts), MaxEntries: o.AvailabilityEntries, Clock: o.Clock,
		Log: o.Log.WithName("availability"),
		OnAnswer: func(drv string, available bool) {
			p.SetAvailable(drv, available)
			loop.Kick()
		},
		OnLost: func(_, why string) {
			source := "report" // an agent could not substitute it, or its nar was gone
			if strings.HasPrefix(why, availability.WhyGC) {
				source = "gc"
			}
			o.Metrics.OutputsLost.WithLabelValues(source).Inc()
		},
		OnUntrusted: untrustedOutput(ctx, mgr),
	})
	if err != nil {
		return nil, fmt.Errorf("setting up the availability owner: %w", err)
	}
	br.Availability = owner
	resolver := &planloop.Resolver{Client: mgr.GetClient(), Owner: owner, Planner: p, Kick: loop.Kick,
		Log: o.Log.WithName("resolver")}
	loop.Unresolved = resolver.Resolve
	if err := br.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the build controller: %w", err)
	}
	view, err := agents.NewView(mgr.GetConfig(), o.Clock, o.Log.WithName("view"))
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(view); err != nil {
		return nil, fmt.Errorf("adding the apiserver probe: %w", err)
	}
	ar := &agents.Reconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Loop: loop, Clock: o.Clock,
		Metrics: o.Metrics, Grace: o.AgentGrace, Recorder: mgr.GetEventRecorder("guix-farm"), View: view,
		Namespace: o.AgentNamespace, Loading: loading}
	if err := ar.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the agent controller: %w", err)
	}
	pr := &agentpool.Reconciler{Client: mgr.GetClient(), Loop: loop, Clock: o.Clock, Defaults: o.AgentPods,
		Recorder: mgr.GetEventRecorder("guix-farm"), Loading: loading}
	if err := pr.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the agentpool controller: %w", err)
	}
	if err := mgr.Add(loading); err != nil {
		return nil, fmt.Errorf("adding the model's loading: %w", err)
	}
	if err := mgr.Add(loop); err != nil {
		return nil, fmt.Errorf("adding the planning loop: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		owner.Close()
		return nil
	})); err != nil {
		return nil, fmt.Errorf("adding the availability owner: %w", err)
	}
	farm := &Farm{Loop: loop, Availability: owner, Loading: loading}
	if o.Publisher != nil {
		po := *o.Publisher
		po.Builds, po.Cache = mgr.GetAPIReader(), mgr.GetClient()
		if po.Outputs == nil {
			po.Outputs = outputPaths(o.Facts)
		}
		if po.Recorder == nil {
			po.Recorder = mgr.GetEventRecorder("guix-farm-publisher")
		}
		if po.Log.GetSink() == nil {
			po.Log = o.Log.WithName("publisher")
		}
		srv, err := publishing.NewServer(po)
		if err != nil {
			return nil, fmt.Errorf("setting up the publisher service: %w", err)
		}
		srv.Addr = o.PublisherAddr
		if err := mgr.Add(srv); err != nil {
			return nil, fmt.Errorf("adding the publisher service: %w", err)
		}
		farm.Publisher = srv
	}
	return farm, nil
}

// unfinishedBuilds lists the keys of the cached Builds that have not finished, reading the cache
// in place: a deep copy of 10^5 Builds would double the controller's memory for a moment.
func unfinishedBuilds(c client.Reader) func(ctx context.Context) ([]planner.BuildKey, error) {
	return func(ctx context.Context) ([]planner.BuildKey, error) {
		var list farmv1.BuildList
		if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
			return nil, err
		}
		keys := make([]planner.BuildKey, 0, len(list.Items))
		for i := range list.Items {
			if b := &list.Items[i]; !b.Status.Phase.Finished() {
				keys = append(keys, planner.BuildKey(b.Namespace+"/"+b.Name))
			}
		}
		return keys, nil
	}
}

// agentsAndPools lists what the agent and pool reconcilers tell the planner at start: the agent
// Leases (in namespace, when set) and the AgentPools, as planloop.CapabilityKey keys.
func agentsAndPools(c client.Reader, namespace string) func(ctx context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		var leases coordinationv1.LeaseList
		if err := c.List(ctx, &leases, client.InNamespace(namespace), client.MatchingLabels{agentlease.LabelAgent: "true"}); err != nil {
			return nil, err
		}
		var pools farmv1.AgentPoolList
		if err := c.List(ctx, &pools); err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(leases.Items)+len(pools.Items))
		for i := range leases.Items {
			keys = append(keys, planloop.CapabilityKey("lease", client.ObjectKeyFromObject(&leases.Items[i])))
		}
		for i := range pools.Items {
			keys = append(keys, planloop.CapabilityKey("pool", client.ObjectKeyFromObject(&pools.Items[i])))
		}
		return keys, nil
	}
}

// untrustedOutput tells of an output whose narinfo in the bucket is not trusted (no trusted key
// signed it): the availability owner counted it absent and logged it; a Warning Event on each
// Build of the derivation says so where users look.
func untrustedOutput(ctx context.Context, mgr ctrl.Manager) func(drv, path string, err error) {
	rec := mgr.GetEventRecorder("guix-farm")
	return func(drv, path string, err error) {
		var l farmv1.BuildList
		if mgr.GetClient().List(ctx, &l, client.MatchingFields{index.BuildDerivation: drv}) != nil {
			return
		}
		for i := range l.Items {
			rec.Eventf(&l.Items[i], nil, corev1.EventTypeWarning, "UntrustedOutput", "CheckOutputs",
				"output %s counted absent: its narinfo in the bucket is not trusted: %v", path, err)
		}
	}
}

// outputPaths adapts the facts cache to the availability owner: a derivation's output paths.
func outputPaths(f builds.FactsSource) availability.Outputs {
	return func(ctx context.Context, drv string) ([]string, error) {
		facts, err := f.Get(ctx, drv)
		if err != nil {
			return nil, err
		}
		paths := make([]string, len(facts.Outputs))
		for i, o := range facts.Outputs {
			paths[i] = o.Path
		}
		return paths, nil
	}
}

// RBAC of the controller (config/rbac/controller is generated from these).
// +kubebuilder:rbac:groups=build.guixfarm.io,resources=builds,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=build.guixfarm.io,resources=builds/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=build.guixfarm.io,resources=agentpools,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=apps,resources=statefulsets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=build.guixfarm.io,resources=agentpools/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
