// Package agent runs builds on one machine: it holds a Lease, watches the Builds the planner
// allocates to it, claims them with optimistic concurrency, runs its build step (agent/buildstep)
// and reports the result.
// It runs in an AgentPool pod or anywhere with a kubeconfig.
package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
)

// FieldAllocationAgent is the selectable field an agent watches its Builds by.
const FieldAllocationAgent = "status.allocation.agent"

// Config describes one agent.
type Config struct {
	Name      string
	Namespace string
	Pool      string
	Systems   []string
	Features  []string
	// Slots is the number of builds run at once.
	Slots int
	// LeaseDuration is how long the Lease lives without renewal; RenewInterval how often it is renewed.
	LeaseDuration time.Duration
	RenewInterval time.Duration
	// ReleaseTimeout bounds the hand-back of running builds on shutdown.
	ReleaseTimeout time.Duration
	// BuildTimeout and MaxSilent are the pool's defaults for Builds that set no
	// spec.timeoutSeconds / spec.maxSilentSeconds (0: none).
	BuildTimeout, MaxSilent time.Duration
	// MaxLogBytes bounds each build's log (default 64 MiB).
	MaxLogBytes int64
	// LogFlushInterval is how often a running build's log is uploaded so it can be followed.
	LogFlushInterval time.Duration
	// HealthInterval is how often the agent checks its health (its daemon, its bucket).
	HealthInterval time.Duration
}

func (c *Config) defaults() error {
	if c.Name == "" || c.Namespace == "" {
		return errors.New("agent config: name and namespace are required (--name, --namespace)")
	}
	if len(c.Systems) == 0 {
		return errors.New("agent config: at least one system is required (--systems x86_64-linux)")
	}
	if c.Slots <= 0 {
		c.Slots = 1
	}
	if c.LeaseDuration <= 0 {
		c.LeaseDuration = 40 * time.Second
	}
	if c.RenewInterval <= 0 {
		c.RenewInterval = c.LeaseDuration / 4
	}
	if c.ReleaseTimeout <= 0 {
		c.ReleaseTimeout = 10 * time.Second
	}
	if c.MaxLogBytes <= 0 {
		c.MaxLogBytes = 64 << 20
	}
	if c.LogFlushInterval <= 0 {
		c.LogFlushInterval = 3 * time.Second
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 5 * time.Second
	}
	return nil
}

// BuildCache is what the agent needs of its Build cache: controller-runtime's cache narrowed by
// CacheOptions in production, a fake in unit tests.
type BuildCache interface {
	client.Reader
	GetInformer(ctx context.Context, obj client.Object, opts ...cache.InformerGetOption) (cache.Informer, error)
	WaitForCacheSync(ctx context.Context) bool
}

// HealthCheck says whether the agent can build now (its daemon answers, its bucket takes
// writes, its store has room). While it fails the agent offers no slots and claims nothing.
type HealthCheck func(ctx context.Context) error

// Deps are what an agent works with.
type Deps struct {
	// Client writes to the apiserver directly.
	Client client.Client
	// Cache holds the Builds allocated to the agent (see CacheOptions).
	Cache BuildCache
	// Step runs one attempt.
	Step buildstep.Step
	// Logs stores build logs where users read them; nil keeps only their last lines.
	Logs LogStore
	// Health is checked every Config.HealthInterval; nil means always healthy.
	Health  HealthCheck
	Clock   clock.WithTicker
	Log     logr.Logger
	Metrics *Metrics
}

// Agent is one running agent.
type Agent struct {
	cfg     Config
	client  client.Client
	cache   BuildCache
	builder buildstep.Step
	logs    LogStore
	health  HealthCheck
	clock   clock.WithTicker
	log     logr.Logger
	metrics *Metrics

	// unhealthy says why the agent claims nothing now ("" while healthy).
	unhealthy atomic.Pointer[string]
	// lastRenewal is when the Lease was last renewed (unix nanoseconds on a.clock). Past the
	// Lease's term without a renewal the agent claims nothing: the controller may count it lost.
	lastRenewal atomic.Int64

	wake      chan struct{}
	leaseWake chan struct{}

	mu sync.Mutex
	// term is the UID of the agent's Lease: the owner token its claims carry. It changes when the
	// Lease was deleted (the controller declared the agent lost) and the agent makes a new one.
	term    types.UID
	running map[types.UID]*inflight
	// finished holds the attempt number of each attempt this process reported, until the cache
	// catches up: a lagging cache still shows such a build as ours (or not yet claimed), and acting
	// on that copy would only cost a conflicting write.
	finished map[types.UID]int32
}

type inflight struct {
	cancel context.CancelFunc
	done   chan struct{}
	// The attempt it runs: which Build, and which of its attempts, for a fresh ownership check.
	key     client.ObjectKey
	uid     types.UID
	attempt int32
	lease   types.UID
	// fenced is set when the Lease term the attempt was claimed in ended: another agent may run
	// it now, so nothing of it is published or reported.
	fenced atomic.Bool
	// stepped is set once the step returned: the agent is reporting, and its own report takes
	// the Build out of its cache, which must not read as a takeover.
	stepped atomic.Bool
}

// New makes an agent. The cache must select Builds with FieldAllocationAgent = cfg.Name
// (see CacheOptions).
func New(cfg Config, d Deps) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if d.Client == nil || d.Cache == nil || d.Step == nil || d.Clock == nil {
		return nil, errors.New("agent: Client, Cache, Step and Clock are required")
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics(nil)
	}
	if d.Log.GetSink() == nil {
		d.Log = logr.Discard()
	}
	return &Agent{cfg: cfg, client: d.Client, cache: d.Cache, builder: d.Step, logs: d.Logs, health: d.Health, clock: d.Clock,
		log: d.Log.WithValues("agent", cfg.Name), metrics: d.Metrics, wake: make(chan struct{}, 1), leaseWake: make(chan struct{}, 1),
		running: map[types.UID]*inflight{}, finished: map[types.UID]int32{}}, nil
}

// CacheOptions narrows the agent's Build cache to the Builds allocated to it.
func CacheOptions(name, namespace string) cache.Options {
	return cache.Options{
		DefaultNamespaces: map[string]cache.Config{namespace: {}},
		ByObject: map[client.Object]cache.ByObject{
			&farmv1.Build{}: {Field: fields.OneTermEqualSelector(FieldAllocationAgent, name)},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	}
}

// Run holds the Lease and works until ctx ends, then hands running builds back and drops the Lease.
func (a *Agent) Run(ctx context.Context) error {
	inf, err := a.cache.GetInformer(ctx, &farmv1.Build{})
	if err != nil {
		return fmt.Errorf("watching builds: %w", err)
	}
	if _, err := inf.AddEventHandler(wakeHandler{a.kick}); err != nil {
		return fmt.Errorf("watching builds: %w", err)
	}
	a.checkHealth(ctx) // before the first Lease write, so a broken agent never offers slots
	if err := a.renewLease(ctx); err != nil {
		return fmt.Errorf("creating lease %s/%s: %w", a.cfg.Namespace, a.cfg.Name, err)
	}
	if !a.cache.WaitForCacheSync(ctx) {
		return fmt.Errorf("build cache did not sync")
	}
	a.log.Info("Agent ready", "systems", a.cfg.Systems, "slots", a.cfg.Slots)

	go a.holdLease(ctx)
	go a.watchHealth(ctx)

	tick := a.clock.NewTicker(time.Second)
	defer tick.Stop()
	for {
		a.step(ctx)
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-a.wake:
		case <-tick.C():
		}
	}
}

func (a *Agent) kick() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// step claims what fits in the free slots and aborts canceled or lost builds.
func (a *Agent) step(ctx context.Context) {
	var list farmv1.BuildList
	if err := a.cache.List(ctx, &list, client.InNamespace(a.cfg.Namespace)); err != nil {
		a.log.Error(err, "Listing allocated builds")
		return
	}
	now := a.clock.Now()
	var offers []*farmv1.Build
	a.pruneFinished(list.Items)
	listed := make(map[types.UID]bool, len(list.Items))
	for i := range list.Items {
		b := &list.Items[i]
		listed[b.UID] = true
		run := a.inflight(b.UID)
		switch {
		case run == nil && a.stale(b):
			// A copy from before our own report: the cache has not caught up yet.
		case run != nil && (b.Spec.Canceled || b.Status.Phase.Finished() ||
			(b.Status.Attempt != nil && (b.Status.Attempt.Agent != a.cfg.Name || b.Status.AttemptCount > run.attempt))):
			// Canceled, or taken from us (declared lost while partitioned): stop the work.
			run.cancel()
		case run != nil:
		case run == nil && lifecycle.Holds(b, a.cfg.Name):
			// Ours from an earlier life of this agent (a restart under the same name): that attempt is gone.
			a.report(ctx, b, nil, func(fresh *farmv1.Build, now time.Time) error {
				return lifecycle.Lose(fresh, a.cfg.Name, now, "agent restarted during the attempt")
			})
		case run == nil && lifecycle.Claim(b.DeepCopy(), a.cfg.Name, "", now) == nil:
			offers = append(offers, b)
		}
	}
	a.checkUnlisted(ctx, listed)
	slices.SortFunc(offers, func(x, y *farmv1.Build) int {
		if px, py := x.Status.Allocation.Priority, y.Status.Allocation.Priority; px != py {
			return int(py) - int(px)
		}
		if c := x.CreationTimestamp.Compare(y.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(x.Name, y.Name)
	})
	for _, b := range offers {
		if a.free() == 0 {
			return
		}
		a.claim(ctx, b)
	}
}

// checkUnlisted decides about the attempts this agent runs whose Builds its cache no longer lists:
// the cache selects Builds allocated to this agent, and a takeover (the controller declared the
// agent lost and requeued the Build), a finish or a delete clears that, so the loop above never
// sees them again. A fresh read decides: a Build gone, re-created, canceled or no longer held by
// this attempt stops it (its report then finds it lost, and publishes nothing). A failed read (an
// apiserver outage) decides nothing: the attempt goes on, fenced by the Lease's term (renewLease).
func (a *Agent) checkUnlisted(ctx context.Context, listed map[types.UID]bool) {
	a.mu.Lock()
	var unlisted []*inflight
	for uid, run := range a.running {
		if !listed[uid] && !run.stepped.Load() {
			unlisted = append(unlisted, run)
		}
	}
	a.mu.Unlock()
	for _, run := range unlisted {
		got := &farmv1.Build{}
		err := a.client.Get(ctx, run.key, got)
		switch {
		case apierrors.IsNotFound(err):
			a.log.Info("Build deleted during its attempt; stopping it", "build", run.key.String())
			run.cancel()
		case err != nil:
			a.log.V(1).Info("Cannot check an attempt the cache no longer lists; it goes on", "build", run.key.String(), "error", err.Error())
		case got.UID != run.uid || got.Spec.Canceled || !lifecycle.Owns(got, a.cfg.Name, run.lease, run.attempt):
			a.log.Info("Attempt no longer ours; stopping it", "build", run.key.String(), "attempt", run.attempt)
			run.cancel()
		}
	}
}

func (a *Agent) inflight(uid types.UID) *inflight {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.running[uid]
}

// stale says whether b is a cached copy from before this process reported its attempt.
func (a *Agent) stale(b *farmv1.Build) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.staleLocked(b)
}

// staleLocked is stale with a.mu held: the copy is from before our claim of the reported attempt,
// or shows that attempt still running on us.
func (a *Agent) staleLocked(b *farmv1.Build) bool {
	n, ok := a.finished[b.UID]
	return ok && (b.Status.AttemptCount < n || b.Status.AttemptCount == n && lifecycle.Holds(b, a.cfg.Name))
}

// pruneFinished forgets reported attempts once the cache shows them done or the Build is gone.
func (a *Agent) pruneFinished(cached []farmv1.Build) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.finished) == 0 {
		return
	}
	keep := make(map[types.UID]bool, len(a.finished))
	for i := range cached {
		if a.staleLocked(&cached[i]) {
			keep[cached[i].UID] = true
		}
	}
	for uid := range a.finished {
		if !keep[uid] {
			delete(a.finished, uid)
		}
	}
}

// free is the number of builds the agent would claim now: none while it is unhealthy, nor while
// its Lease is past its term (the controller may be declaring it lost), nor before it has a Lease.
func (a *Agent) free() int {
	if a.unhealthyReason() != "" || a.lapsed() {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.term == "" {
		return 0
	}
	return a.cfg.Slots - len(a.running)
}

// lapsed says whether the Lease has gone a whole term without renewal.
func (a *Agent) lapsed() bool {
	last := a.lastRenewal.Load()
	return last != 0 && a.clock.Since(time.Unix(0, last)) >= a.cfg.LeaseDuration
}

// claim reserves a slot for b, then takes b in the background with a status update carrying its
// resourceVersion: on conflict another writer (the planner moving it, another agent) won, and the
// slot is free again. Claims run concurrently, so one slow write does not hold back the others.
func (a *Agent) claim(ctx context.Context, b *farmv1.Build) {
	b = b.DeepCopy()
	a.mu.Lock()
	term := a.term
	a.mu.Unlock()
	if term == "" || lifecycle.Claim(b, a.cfg.Name, term, a.clock.Now()) != nil {
		return
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	run := &inflight{cancel: cancel, done: make(chan struct{}), key: client.ObjectKeyFromObject(b), uid: b.UID,
		attempt: b.Status.AttemptCount, lease: term}
	a.mu.Lock()
	if a.term != term { // the term ended while we prepared: a claim in it would be fenced at once
		a.mu.Unlock()
		cancel()
		return
	}
	a.running[b.UID] = run // before the write, so a fast cache event never sees an orphan
	a.mu.Unlock()
	go func() {
		log := a.log.WithValues("build", klogRef(b))
		if err := a.client.Status().Update(ctx, b); err != nil {
			a.mu.Lock()
			delete(a.running, b.UID)
			a.mu.Unlock()
			cancel()
			close(run.done)
			a.kick()
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				a.metrics.ClaimConflicts.Inc()
				log.V(1).Info("Claim lost", "reason", err.Error())
				return
			}
			log.Error(err, "Claiming build")
			return
		}
		a.metrics.Claims.Inc()
		log.V(1).Info("Claimed build", "attempt", b.Status.AttemptCount)
		a.kickLease()
		a.execute(bctx, ctx, b, run)
	}()
}

// execute runs one attempt and reports it. parent is the agent's context: when it ends first,
// shutdown releases the build instead.
func (a *Agent) execute(ctx, parent context.Context, b *farmv1.Build, run *inflight) {
	// reported is the attempt count our report leaves on the Build: a release gives the attempt
	// back, and a copy showing that count is not stale (the planner may offer it to us again).
	reported := b.Status.AttemptCount
	defer func() {
		a.mu.Lock()
		delete(a.running, b.UID)
		a.finished[b.UID] = reported
		a.mu.Unlock()
		close(run.done)
		a.kickLease()
		a.kick()
	}()
	log := a.log.WithValues("build", klogRef(b), "attempt", b.Status.AttemptCount)
	alog := newAttemptLog(a.logs, b.Spec.Derivation, b.Status.AttemptCount, a.cfg.MaxLogBytes, a.cfg.LogFlushInterval, a.clock, log)
	res, err := a.builder.Run(ctx, a.request(b, run, alog))
	run.stepped.Store(true)
	alog.close(context.WithoutCancel(parent))
	if parent.Err() != nil || run.fenced.Load() {
		return // shutdown hands the build back; a fenced attempt reports nothing
	}
	rctx := context.WithoutCancel(parent)
	switch {
	case err == nil:
		a.metrics.Results.WithLabelValues(string(farmv1.AttemptSucceeded)).Inc()
		log.Info("Build succeeded")
		a.report(rctx, b, run, func(f *farmv1.Build, now time.Time) error {
			return lifecycle.Succeed(f, a.cfg.Name, now, mergeOutputs(f.Status.Outputs, res.Outputs))
		})
	case ctx.Err() != nil:
		a.metrics.Results.WithLabelValues(string(farmv1.AttemptCanceled)).Inc()
		log.Info("Build aborted")
		a.report(rctx, b, run, func(f *farmv1.Build, now time.Time) error {
			if !lifecycle.Holds(f, a.cfg.Name) {
				return lifecycle.ErrNotHolder
			}
			lifecycle.Cancel(f, now)
			return nil
		})
	default:
		if tail := alog.tail(); len(tail) > 0 {
			err = withTail(err, tail)
		}
		kind := buildstep.KindOf(err)
		a.metrics.Results.WithLabelValues(string(farmv1.AttemptFailed)).Inc()
		log.Info("Build did not succeed", "kind", kind.String(), "error", err.Error())
		if kind == buildstep.KindMissingInputs || kind == buildstep.KindAgentUnhealthy {
			reported--
		}
		if kind == buildstep.KindAgentUnhealthy && a.health != nil {
			a.setUnhealthy(err.Error()) // the health loop clears it once the check passes
		}
		a.report(rctx, b, run, func(f *farmv1.Build, now time.Time) error {
			return buildstep.Finish(f, a.cfg.Name, now, err)
		})
	}
}

// request is what the step learns of b.
func (a *Agent) request(b *farmv1.Build, run *inflight, log *attemptLog) buildstep.Request {
	req := buildstep.Request{
		Build: klogRef(b), BuildUID: string(b.UID), Derivation: b.Spec.Derivation, System: b.Status.System, Attempt: b.Status.AttemptCount,
		Agent: a.cfg.Name, Log: log,
		Limits:     buildstep.Limits{Timeout: a.cfg.BuildTimeout, MaxSilent: a.cfg.MaxSilent, MaxLogBytes: a.cfg.MaxLogBytes},
		StillOwned: func(ctx context.Context) error { return a.stillOwned(ctx, run) },
	}
	if s := b.Spec.TimeoutSeconds; s != nil {
		req.Limits.Timeout = time.Duration(*s) * time.Second
	}
	if s := b.Spec.MaxSilentSeconds; s != nil {
		req.Limits.MaxSilent = time.Duration(*s) * time.Second
	}
	for _, o := range b.Status.Outputs {
		req.Outputs = append(req.Outputs, buildstep.Output{Name: o.Name, Path: o.Path, NarHash: o.NarHash})
	}
	for k, v := range b.Annotations {
		if dom, _, ok := strings.Cut(k, "/"); ok && (dom == "guixfarm.io" || strings.HasSuffix(dom, ".guixfarm.io")) {
			if req.Hints == nil {
				req.Hints = map[string]string{}
			}
			req.Hints[k] = v
		}
	}
	return req
}

// stillOwned reads the Build afresh from the apiserver (not the cache, which may lag behind a
// takeover) and says whether this agent still runs the attempt it claimed, in the same Lease term.
// While the apiserver cannot answer it waits and asks again: an outage proves nothing either way,
// and the result is worth keeping until it can be reported (the attempt's own cancellation, by a
// fence or a shutdown, ends the wait).
func (a *Agent) stillOwned(ctx context.Context, run *inflight) error {
	backoff := 200 * time.Millisecond
	for {
		if run.fenced.Load() {
			return fmt.Errorf("attempt %d of %s: the Lease term it was claimed in ended: %w", run.attempt, run.key, lifecycle.ErrNotHolder)
		}
		got := &farmv1.Build{}
		err := a.client.Get(ctx, run.key, got)
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("build %s was deleted", run.key)
		case err != nil:
			if ctx.Err() != nil {
				return fmt.Errorf("checking ownership of %s: %w", run.key, ctx.Err())
			}
			a.log.Info("Cannot check ownership before publishing; holding the result", "build", run.key.String(), "error", err.Error())
			select {
			case <-ctx.Done():
			case <-a.clock.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		case got.UID != run.uid:
			return fmt.Errorf("build %s was deleted and re-created", run.key)
		case got.Spec.Canceled:
			return fmt.Errorf("build %s was canceled", run.key)
		case !lifecycle.Owns(got, a.cfg.Name, run.lease, run.attempt):
			return fmt.Errorf("attempt %d of %s is no longer held by %s: %w", run.attempt, run.key, a.cfg.Name, lifecycle.ErrNotHolder)
		}
		return nil
	}
}

// withTail gives a failure without the log's last lines those the agent kept.
func withTail(err error, tail []string) error {
	var se *buildstep.Error
	if errors.As(err, &se) {
		if len(se.LogTail) > 0 {
			return err
		}
		c := *se
		c.LogTail = tail
		return &c
	}
	return buildstep.BuildFailed(err, tail)
}

// report applies change to b and writes it. It first tries the copy it holds (after a claim, the
// agent is usually the last writer, which saves a read); on a conflict it re-reads and retries. It
// gives up when the agent no longer holds the attempt (the controller declared it lost) or, for
// an attempt run by this process (run not nil), when the Build shows another attempt or Lease term
// of this agent, or the attempt was fenced meanwhile.
func (a *Agent) report(ctx context.Context, b *farmv1.Build, run *inflight, change func(*farmv1.Build, time.Time) error) {
	if run != nil {
		inner := change
		change = func(f *farmv1.Build, now time.Time) error {
			if run.fenced.Load() || !lifecycle.Owns(f, a.cfg.Name, run.lease, run.attempt) {
				return lifecycle.ErrNotHolder
			}
			return inner(f, now)
		}
	}
	log := a.log.WithValues("build", klogRef(b))
	backoff := 100 * time.Millisecond
	failed := func(err error, what string) bool { // logs, waits, and says whether to give up
		log.Error(err, what)
		select {
		case <-ctx.Done():
			return true
		case <-a.clock.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		return ctx.Err() != nil
	}
	cur, fresh := b.DeepCopy(), false
	for conflicts := 0; conflicts < 50; {
		if cur != nil {
			if err := change(cur, a.clock.Now()); err != nil {
				if fresh {
					log.Info("Not reporting: attempt no longer ours", "reason", err.Error())
					return
				}
				cur = nil // the copy we hold may predate our own claim: judge on a fresh read
			}
		}
		if cur != nil {
			err := a.client.Status().Update(ctx, cur)
			switch {
			case err == nil || apierrors.IsNotFound(err):
				return
			case apierrors.IsConflict(err):
				conflicts++ // someone wrote since our copy: re-read at once
			default:
				if failed(err, "Reporting build") {
					return
				}
			}
		}
		got := &farmv1.Build{}
		if err := a.client.Get(ctx, client.ObjectKeyFromObject(b), got); err != nil {
			if apierrors.IsNotFound(err) || failed(err, "Reading build to report") {
				return
			}
			cur = nil
			continue
		}
		if got.UID != b.UID {
			return
		}
		cur, fresh = got, true
	}
}

// shutdown aborts running builds and hands them back, then drops the Lease so the controller
// replans at once instead of waiting for it to expire.
func (a *Agent) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ReleaseTimeout)
	defer cancel()
	a.mu.Lock()
	runs := make(map[types.UID]*inflight, len(a.running))
	for k, v := range a.running {
		runs[k] = v
	}
	a.mu.Unlock()
	var list farmv1.BuildList
	_ = a.cache.List(ctx, &list, client.InNamespace(a.cfg.Namespace))
	for _, run := range runs {
		run.cancel()
	}
	// A step stuck where cancellation does not reach (a daemon that does not answer) must not
	// hold the shutdown: half the release timeout for the steps, the rest for the reports. A step
	// that returns later reports nothing (its parent context is gone), and the process's exit
	// closes its daemon connection, which stops its build.
	wait := time.NewTimer(a.cfg.ReleaseTimeout / 2)
	defer wait.Stop()
	for _, run := range runs {
		select {
		case <-run.done:
		case <-wait.C:
			a.log.Info("Builds did not stop within half the release timeout; releasing them anyway", "timeout", a.cfg.ReleaseTimeout)
			wait.Reset(0) // do not wait for the others either
		}
	}
	for i := range list.Items {
		b := &list.Items[i]
		if _, ok := runs[b.UID]; ok {
			a.report(ctx, b, runs[b.UID], func(f *farmv1.Build, now time.Time) error {
				return lifecycle.Release(f, a.cfg.Name, now, farmv1.ReasonAgentReleased, "agent shut down")
			})
		}
	}
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.Name, Namespace: a.cfg.Namespace}}
	if err := a.client.Delete(ctx, lease); err != nil && !apierrors.IsNotFound(err) {
		a.log.Error(err, "Deleting lease")
	}
	a.log.Info("Agent stopped")
}

// fenceTerm ends the Lease term old: its attempts stop without publishing or reporting anything,
// since the controller declared the agent lost and may have given them to others. now starts.
func (a *Agent) fenceTerm(old, now types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.term = now
	for _, run := range a.running {
		if old != "" && run.lease == old {
			run.fenced.Store(true)
			run.cancel()
		}
	}
}

// mergeOutputs is the Build's outputs with what the step published: the NarHash of each.
func mergeOutputs(known []farmv1.Output, built []buildstep.Output) []farmv1.Output {
	if len(built) == 0 {
		return known
	}
	out := make([]farmv1.Output, 0, len(built))
	for _, o := range built {
		out = append(out, farmv1.Output{Name: o.Name, Path: o.Path, NarHash: o.NarHash})
	}
	return out
}

func klogRef(b *farmv1.Build) string { return b.Namespace + "/" + b.Name }

// RBAC of an agent (config/rbac/agent is generated from these): read Builds, update their status,
// hold its own Lease. Nothing more: no Build spec writes, no deletes, no Secrets. RBAC cannot tell
// one Build or Lease from another, so the agent identity policy (config/agent/identity-policy.yaml,
// docs/security.md) narrows these writes to the agent's own Lease and the Builds given to it.
// +kubebuilder:rbac:groups=build.guixfarm.io,resources=builds,verbs=get;list;watch
// +kubebuilder:rbac:groups=build.guixfarm.io,resources=builds/status,verbs=get;update
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;update;delete
