package agent

// The harness of the agent's package tests: a fake apiserver (controller-runtime's fake client with
// the Build status subresource), a fake Build cache over it that selects the agent's Builds the way
// CacheOptions does (and can lag behind, like a real informer), a fake clock, a build step the test
// drives through channels and a LogStore that records uploads. Nothing waits on real time for
// correctness: tests advance the fake clock and poll with short, bounded timeouts.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/agentlease"
)

const (
	testNS    = "farm"
	testAgent = "agent-1"
	// waitFor bounds every poll: generous for a loaded 2-core machine, never reached when passing.
	waitFor = 5 * time.Second
)

// t0 is the fake clock's start, on a whole second (metav1.Time keeps seconds only).
var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ---- fake Build cache ----

// stubInformer is the agent's view of the Build informer: it only registers handlers, which the
// harness calls as a watch would deliver events. The agent uses nothing else of it.
type stubInformer struct {
	cache.Informer // nil: any other method panics

	mu       sync.Mutex
	handlers []toolscache.ResourceEventHandler
}

func (s *stubInformer) AddEventHandler(h toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers = append(s.handlers, h)
	return nil, nil
}

func (s *stubInformer) fire() {
	s.mu.Lock()
	hs := slices.Clone(s.handlers)
	s.mu.Unlock()
	for _, h := range hs {
		h.OnUpdate(nil, nil)
	}
}

// fakeCache reads Builds from the fake apiserver and keeps those allocated to agent, like the
// field-selected cache of CacheOptions. Frozen, it keeps answering with a snapshot: a cache
// lagging behind the apiserver.
type fakeCache struct {
	r     client.Reader
	agent string
	inf   *stubInformer
	lists atomic.Int64 // List calls: the agent lists once per pass of its loop
	// unfiltered lists every Build, so that the agent's own checks are what keeps it off others'.
	unfiltered bool

	mu     sync.Mutex
	frozen *farmv1.BuildList
	// gate, when set, holds List calls until it is closed; blocked hears of each held call.
	gate    chan struct{}
	blocked chan struct{}
}

var _ BuildCache = (*fakeCache)(nil)

func (c *fakeCache) live(ctx context.Context, opts ...client.ListOption) (*farmv1.BuildList, error) {
	var all farmv1.BuildList
	if err := c.r.List(ctx, &all, opts...); err != nil {
		return nil, err
	}
	out := &farmv1.BuildList{}
	for _, b := range all.Items {
		if c.unfiltered || b.Status.Allocation != nil && b.Status.Allocation.Agent == c.agent {
			out.Items = append(out.Items, b)
		}
	}
	return out, nil
}

func (c *fakeCache) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	c.lists.Add(1)
	bl, ok := list.(*farmv1.BuildList)
	if !ok {
		return fmt.Errorf("fake cache holds Builds only, not %T", list)
	}
	c.mu.Lock()
	frozen, gate, blocked := c.frozen, c.gate, c.blocked
	c.mu.Unlock()
	if gate != nil {
		select {
		case blocked <- struct{}{}:
		default:
		}
		<-gate
	}
	if frozen != nil {
		frozen.DeepCopyInto(bl)
		return nil
	}
	got, err := c.live(ctx, opts...)
	if err != nil {
		return err
	}
	got.DeepCopyInto(bl)
	return nil
}

func (c *fakeCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	b, ok := obj.(*farmv1.Build)
	if !ok {
		return fmt.Errorf("fake cache holds Builds only, not %T", obj)
	}
	list := &farmv1.BuildList{}
	if err := c.List(ctx, list, client.InNamespace(key.Namespace)); err != nil {
		return err
	}
	for i := range list.Items {
		if list.Items[i].Name == key.Name {
			list.Items[i].DeepCopyInto(b)
			return nil
		}
	}
	return apierrors.NewNotFound(schema.GroupResource{Group: farmv1.GroupVersion.Group, Resource: "builds"}, key.Name)
}

func (c *fakeCache) GetInformer(context.Context, client.Object, ...cache.InformerGetOption) (cache.Informer, error) {
	return c.inf, nil
}

func (c *fakeCache) WaitForCacheSync(context.Context) bool { return true }

// freeze makes the cache keep answering with what it holds now.
func (c *fakeCache) freeze(t *testing.T) {
	t.Helper()
	got, err := c.live(context.Background(), client.InNamespace(testNS))
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.frozen = got
	c.mu.Unlock()
}

// thaw lets the cache catch up, delivering one event for what it missed.
func (c *fakeCache) thaw() {
	c.mu.Lock()
	c.frozen = nil
	c.mu.Unlock()
	c.inf.fire()
}

// hold makes List calls wait until the returned func is called; blocked hears of them.
func (c *fakeCache) hold() (blocked <-chan struct{}, release func()) {
	b, gate := make(chan struct{}, 1), make(chan struct{})
	c.mu.Lock()
	c.gate, c.blocked = gate, b
	c.mu.Unlock()
	return b, func() {
		c.mu.Lock()
		c.gate, c.blocked = nil, nil
		c.mu.Unlock()
		close(gate)
	}
}

func (c *fakeCache) isFrozen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frozen != nil
}

// ---- fake build step ----

type stepResult struct {
	res buildstep.Result
	err error
}

// stepRun is one call of the fake step: the test reads its request and ends it.
type stepRun struct {
	ctx    context.Context
	req    buildstep.Request
	result chan stepResult
}

// finish makes the step return res and err.
func (r *stepRun) finish(res buildstep.Result, err error) { r.result <- stepResult{res, err} }

func (r *stepRun) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(r.req.Log, s); err != nil {
		t.Fatalf("writing the build log: %v", err)
	}
}

// fakeStep is a buildstep.Step whose runs the test ends. A run whose ctx ends returns ctx.Err(),
// as a real step stops its build.
type fakeStep struct {
	started chan *stepRun
	// stubborn makes runs ignore their ctx, as a step stuck in a daemon that does not answer.
	stubborn atomic.Bool

	mu   sync.Mutex
	runs []*stepRun
}

func newFakeStep() *fakeStep { return &fakeStep{started: make(chan *stepRun, 64)} }

func (s *fakeStep) Run(ctx context.Context, req buildstep.Request) (buildstep.Result, error) {
	r := &stepRun{ctx: ctx, req: req, result: make(chan stepResult, 1)}
	s.mu.Lock()
	s.runs = append(s.runs, r)
	s.mu.Unlock()
	s.started <- r
	done := ctx.Done()
	if s.stubborn.Load() {
		done = nil
	}
	select {
	case res := <-r.result:
		return res.res, res.err
	case <-done:
		return buildstep.Result{}, ctx.Err()
	}
}

// next waits for the step's next run.
func (s *fakeStep) next(t *testing.T) *stepRun {
	t.Helper()
	select {
	case r := <-s.started:
		return r
	case <-time.After(waitFor):
		t.Fatal("timed out waiting for the step to run")
		return nil
	}
}

// builds lists the Builds the step was run for, in order.
func (s *fakeStep) builds() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.runs {
		out = append(out, r.req.Build)
	}
	return out
}

// ---- fake log store ----

type upload struct {
	drv     string
	attempt int32
	data    string
	final   bool
}

type fakeLogStore struct {
	mu      sync.Mutex
	uploads []upload
}

func (s *fakeLogStore) PutAttemptLog(_ context.Context, drv string, attempt int32, r io.Reader, final bool) error {
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uploads = append(s.uploads, upload{drv, attempt, buf.String(), final})
	return nil
}

func (s *fakeLogStore) all() []upload {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.uploads)
}

// ---- harness ----

type harness struct {
	t     *testing.T
	clk   *clocktesting.FakeClock
	c     client.Client // the test's client: writes reach the agent's cache as watch events
	cache *fakeCache
	step  *fakeStep
	logs  *fakeLogStore
	agent *Agent

	// statusHook, when set, sees each Build status update the agent makes before it is applied;
	// it returns an error to fail the write instead.
	statusHook atomic.Pointer[func(ctx context.Context, b *farmv1.Build) error]
	// leaseHook, when set, runs before each Lease update of the agent; its error fails the update.
	leaseHook atomic.Pointer[func() error]
	// getHook, when set, runs before each direct Build read of the agent; its error fails it.
	getHook atomic.Pointer[func() error]
	// statusUpdates counts the agent's Build status writes that were applied, statusAttempts all
	// it tried (conflicts included).
	statusUpdates, statusAttempts atomic.Int64

	runCancel context.CancelFunc
	runDone   chan error
}

type option func(*Config, *Deps)

func withSlots(n int) option { return func(c *Config, _ *Deps) { c.Slots = n } }

func withHealth(h HealthCheck) option { return func(_ *Config, d *Deps) { d.Health = h } }

func newHarness(t *testing.T, builds []*farmv1.Build, opts ...option) *harness {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := farmv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clk: clocktesting.NewFakeClock(t0), step: newFakeStep(), logs: &fakeLogStore{}}
	objs := make([]client.Object, 0, len(builds))
	for _, b := range builds {
		objs = append(objs, b)
	}
	inf := &stubInformer{}
	// Every Build write reaches the cache as an event, unless the cache is frozen (lagging).
	event := func(obj client.Object) {
		if _, ok := obj.(*farmv1.Build); ok && !h.cache.isFrozen() {
			inf.fire()
		}
	}
	base := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&farmv1.Build{}).WithObjects(objs...).
		WithInterceptorFuncs(interceptor.Funcs{
			// The apiserver gives every object a UID; the fake does not, and a Lease's UID is
			// the agent's term.
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				if obj.GetUID() == "" {
					obj.SetUID(uuid.NewUUID())
				}
				return c.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				err := c.Update(ctx, obj, opts...)
				if err == nil {
					event(obj)
				}
				return err
			},
			Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				err := c.Delete(ctx, obj, opts...)
				if err == nil {
					event(obj)
				}
				return err
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				err := c.SubResource(sub).Update(ctx, obj, opts...)
				if err == nil {
					event(obj)
				}
				return err
			},
		}).Build()
	h.c = base
	h.cache = &fakeCache{r: base, agent: testAgent, inf: inf}
	// The agent's client: the test's, plus fault injection.
	agentClient := interceptor.NewClient(base, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*farmv1.Build); ok {
				if p := h.getHook.Load(); p != nil {
					if err := (*p)(); err != nil {
						return err
					}
				}
			}
			return c.Get(ctx, key, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if _, ok := obj.(*coordinationv1.Lease); ok {
				if p := h.leaseHook.Load(); p != nil {
					if err := (*p)(); err != nil {
						return err
					}
				}
			}
			return c.Update(ctx, obj, opts...)
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			if b, ok := obj.(*farmv1.Build); ok && sub == "status" {
				h.statusAttempts.Add(1)
				if p := h.statusHook.Load(); p != nil {
					if err := (*p)(ctx, b); err != nil {
						return err
					}
				}
			}
			err := c.SubResource(sub).Update(ctx, obj, opts...)
			if err == nil {
				h.statusUpdates.Add(1)
			}
			return err
		},
	})
	// A Lease term far longer than the minutes tests step the clock by: past a term without a
	// renewal the agent claims nothing, and a jump of the fake clock must not race the renewal
	// that follows it (TestLeaseOutageKeepsBuilding steps whole terms on purpose).
	cfg := Config{Name: testAgent, Namespace: testNS, Pool: "x86", Systems: []string{"x86_64-linux"}, Slots: 1,
		LeaseDuration: 10 * time.Minute, RenewInterval: 10 * time.Second, ReleaseTimeout: 5 * time.Second,
		MaxLogBytes: 1 << 20, LogFlushInterval: 3 * time.Second, HealthInterval: 5 * time.Second}
	deps := Deps{Client: agentClient, Cache: h.cache, Step: h.step, Logs: h.logs, Clock: h.clk}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	a, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	t.Cleanup(func() {
		if h.runCancel != nil {
			h.runCancel()
			select {
			case <-h.runDone:
			case <-time.After(waitFor):
				t.Error("agent did not stop")
			}
		}
	})
	return h
}

// onStatusUpdate installs the status hook.
func (h *harness) onStatusUpdate(f func(ctx context.Context, b *farmv1.Build) error) {
	h.statusHook.Store(&f)
}

// failBuildReads makes the agent's direct Build reads fail with err (nil: they work again).
func (h *harness) failBuildReads(err error) {
	if err == nil {
		h.getHook.Store(nil)
		return
	}
	f := func() error { return err }
	h.getHook.Store(&f)
}

// failLeaseUpdates makes the agent's Lease updates fail with err.
func (h *harness) failLeaseUpdates(err error) {
	f := func() error { return err }
	h.leaseHook.Store(&f)
}

// holdLeaseRenewal makes the agent's next Lease renewal block, and waits until it does: the
// Lease loop is then busy, so canceling Run's ctx leaves ctx.Done the only thing Run can see
// (TestShutdownRacingTheLeaseLoop is the other order). The returned func lets the renewal go.
func (h *harness) holdLeaseRenewal() (release func()) {
	h.t.Helper()
	entered, gate := make(chan struct{}, 1), make(chan struct{})
	f := func() error {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-gate
		return nil
	}
	h.leaseHook.Store(&f)
	var once sync.Once
	release = func() { once.Do(func() { h.leaseHook.Store(nil); close(gate) }) }
	h.t.Cleanup(release)
	eventually(h.t, "a Lease renewal", func() bool {
		h.clk.Step(h.agent.cfg.RenewInterval)
		select {
		case <-entered:
			return true
		default:
			return false
		}
	})
	return release
}

// start runs the agent until the test ends or stop is called.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.runCancel, h.runDone = cancel, make(chan error, 1)
	go func() { h.runDone <- h.agent.Run(ctx) }()
}

// stop cancels Run's ctx and returns what Run returned.
func (h *harness) stop() error {
	h.t.Helper()
	h.runCancel()
	select {
	case err := <-h.runDone:
		h.runCancel = nil
		return err
	case <-time.After(waitFor):
		h.t.Fatal("agent did not stop")
		return nil
	}
}

// settle returns once the agent's loop has completed a whole pass that began after the call:
// two further List calls of its cache (each pass lists once, at its start).
func (h *harness) settle() {
	h.t.Helper()
	for range 2 {
		n := h.cache.lists.Load()
		eventually(h.t, "a pass of the agent's loop", func() bool {
			h.cache.inf.fire()
			return h.cache.lists.Load() > n
		})
	}
}

// idle waits until the agent runs nothing: every attempt it started has been reported.
func (h *harness) idle() {
	h.t.Helper()
	eventually(h.t, "the agent to run nothing", func() bool { return h.running() == 0 })
}

func (h *harness) running() int {
	h.agent.mu.Lock()
	defer h.agent.mu.Unlock()
	return len(h.agent.running)
}

func (h *harness) get(name string) *farmv1.Build {
	h.t.Helper()
	b := &farmv1.Build{}
	if err := h.c.Get(context.Background(), client.ObjectKey{Namespace: testNS, Name: name}, b); err != nil {
		h.t.Fatal(err)
	}
	return b
}

// update changes a Build as another writer would (the user, the controller, another agent).
func (h *harness) update(name string, change func(*farmv1.Build)) {
	h.t.Helper()
	if err := h.write(name, false, change); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updateStatus(name string, change func(*farmv1.Build)) {
	h.t.Helper()
	if err := h.write(name, true, change); err != nil {
		h.t.Fatal(err)
	}
}

// write is update or updateStatus returning the error: for hooks, which run off the test's goroutine.
func (h *harness) write(name string, status bool, change func(*farmv1.Build)) error {
	ctx := context.Background()
	b := &farmv1.Build{}
	if err := h.c.Get(ctx, client.ObjectKey{Namespace: testNS, Name: name}, b); err != nil {
		return err
	}
	change(b)
	if status {
		return h.c.Status().Update(ctx, b)
	}
	return h.c.Update(ctx, b)
}

// waitPhase waits for a Build to reach phase and returns it.
func (h *harness) waitPhase(name string, phase farmv1.BuildPhase) *farmv1.Build {
	h.t.Helper()
	var b *farmv1.Build
	eventually(h.t, fmt.Sprintf("build %s to be %s", name, phase), func() bool {
		b = h.get(name)
		return b.Status.Phase == phase
	})
	return b
}

func (h *harness) lease() (*coordinationv1.Lease, error) {
	l := &coordinationv1.Lease{}
	err := h.c.Get(context.Background(), client.ObjectKey{Namespace: testNS, Name: testAgent}, l)
	return l, err
}

func (h *harness) leaseInfo() agentlease.Info {
	h.t.Helper()
	l, err := h.lease()
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := agentlease.Parse(l)
	if err != nil {
		h.t.Fatal(err)
	}
	return info
}

// ---- Builds ----

// allocated is a Pending Build the planner allocated to agent.
func allocated(name, agent string, priority int32) *farmv1.Build {
	return &farmv1.Build{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: types.UID("uid-" + name),
			CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour))},
		Spec: farmv1.BuildSpec{Derivation: "/gnu/store/" + fmt.Sprintf("%032d", len(name)) + "-" + name + ".drv"},
		Status: farmv1.BuildStatus{Phase: farmv1.BuildAllocated, System: "x86_64-linux",
			Outputs:    []farmv1.Output{{Name: "out", Path: "/gnu/store/" + fmt.Sprintf("%032d", 7) + "-" + name}},
			Allocation: &farmv1.Allocation{Agent: agent, Priority: priority, PlannedAt: metav1.NewTime(t0)}},
	}
}

func ours(name string) *farmv1.Build { return allocated(name, testAgent, 0) }

func buildRef(name string) string { return testNS + "/" + name }
