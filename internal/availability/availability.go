// Package availability is the controller's one owner of "are this
// derivation's outputs available as substitutes?" (docs/availability.md).
//
// Its answers come from three places: succeeded Builds (Succeeded: the
// agent published every output's nar then narinfo before reporting), the
// bucket (Check and Resolve ask it, through Store, whenever the owner does
// not know or no longer trusts what it knew), and news of loss (Gone,
// PathsDeleted: GC deletions, nar 404s, agents that could not substitute a
// path). Memory is an LRU of at most MaxEntries derivations, and every
// answer expires, so a farm that succeeded millions of builds neither grows
// without end nor believes forever in an output that was deleted behind its
// back. Nothing is persisted: after a restart the owner starts empty and
// learns again from the bucket, lazily, as derivations are asked about.
//
// The package is ground floor: it knows neither Kubernetes objects nor the
// bucket's client, only the two functions it is given.
package availability

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/internal/lru"
)

// Store is the bucket as the owner asks it: Present reports whether a store
// path has a narinfo whose nar is there too. It must not cache: the owner
// decides how long an answer stands. A narinfo that must not be believed (a
// signature no trusted key made) is reported with an error matching
// ErrUntrusted: the owner counts the path absent and tells OnUntrusted.
type Store interface {
	Present(ctx context.Context, storePath string) (bool, error)
}

// ErrUntrusted is matched by a Store's error for a path whose narinfo is there
// but not trusted: never counted available.
var ErrUntrusted = errors.New("not trusted")

// Outputs returns a derivation's output store paths (from its .drv; the
// controller passes its facts cache).
type Outputs func(ctx context.Context, drv string) ([]string, error)

// Defaults of Options.
const (
	DefaultMaxEntries   = 200_000
	DefaultAvailableTTL = 10 * time.Minute
	DefaultAbsentTTL    = 30 * time.Second
	DefaultLookups      = 8
)

// Backoff of Resolve lookups that failed (a Store or Outputs error).
const (
	retryInitial = time.Second
	retryMax     = time.Minute
)

// Options configure an Owner.
type Options struct {
	// Store is the bucket. Nil means no bucket: only Succeeded marks
	// derivations available (and such an answer never expires, since
	// nothing could confirm it again), Check and Resolve answer "absent" at
	// once for anything else.
	Store Store
	// Outputs is required when Store is set.
	Outputs Outputs
	// MaxEntries bounds the derivations remembered (least recently used go
	// first); default DefaultMaxEntries.
	MaxEntries int
	// AvailableTTL is how long an "available" answer is trusted before
	// the bucket is asked again (default 10 min): an output is deleted only
	// by GC or by hand, and GC tells the owner.
	AvailableTTL time.Duration
	// AbsentTTL is the same for "absent" (default 30 s): a missing output
	// may be published at any time, by a build outside the farm too.
	AbsentTTL time.Duration
	// Lookups is the number of concurrent bucket lookups for Resolve
	// (default 8).
	Lookups int
	// Clock tells the time (default clock.RealClock{}). If it also
	// implements clock.WithDelayedExecution (a fake clock does), Resolve's
	// retries wait on it; otherwise on real timers.
	Clock clock.PassiveClock
	// OnAnswer is called for every Resolve answer and every change
	// (Succeeded, Gone of an available derivation), in the order the
	// answers were formed, from one goroutine of the owner's, never with the
	// owner's lock held, so it may take its own locks and call the Owner.
	// Answers not yet delivered when Close is called are dropped. May be nil.
	OnAnswer func(drv string, available bool)
	// OnLost is called (without the owner's lock) when outputs the owner counted available are
	// found lost (Gone, PathsDeleted), with why: the caller's metric and log. May be nil.
	OnLost func(drv, why string)
	// OnUntrusted is called (without the owner's lock) when a lookup finds an
	// output of drv whose narinfo is not trusted (ErrUntrusted), with the
	// Store's error: the caller's log, Event and metric. The output counts
	// absent. May be nil.
	OnUntrusted func(drv, path string, err error)
	Log         logr.Logger
}

// Stats are the owner's counters, for metrics and tests.
type Stats struct {
	Entries int    // derivations remembered (at most MaxEntries)
	Paths   int    // output paths in the path→derivation index
	Pending int    // Resolve lookups queued, running or waiting to retry
	Lookups uint64 // Store.Present calls made
	Lost    uint64 // Gone calls (outputs known lost)
	Hits    uint64 // questions answered from memory (Peek, Check, Resolve)
}

// entry is what the owner remembers of a derivation. It is kept small and
// by value in the LRU: a million successes must fit in a bounded heap.
type entry struct {
	outputs []string // output paths, when known; indexed in Owner.index
	// expires is the clock's UnixNano after which the answer is no longer
	// trusted (math.MaxInt64: never).
	expires int64
	// seq orders answers: Succeeded and Gone take a new sequence number, a
	// bucket lookup the number current when it began, so a lookup that
	// began before a later Succeeded or Gone does not overwrite it.
	seq       uint64
	available bool
}

// job is a Resolve lookup waiting for a worker.
type job struct {
	drv   string
	delay time.Duration // the backoff that preceded this try; 0 for the first
}

type answer struct {
	drv       string
	available bool
}

// Owner owns the availability of derivations' outputs. Safe for concurrent
// use. Make it with New, stop it with Close.
type Owner struct {
	store        Store
	outputs      Outputs
	availableTTL time.Duration
	absentTTL    time.Duration
	clk          clock.PassiveClock
	after        func(d time.Duration, f func()) (stop func() bool)
	onAnswer     func(drv string, available bool)
	onLost       func(drv, why string)
	onUntrusted  func(drv, path string, err error)
	log          logr.Logger

	ctx         context.Context // cancelled by Close: ends Resolve's lookups
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	flight      lru.Flight[bool] // one bucket lookup per derivation at a time
	freshFlight lru.Flight[bool] // the same for CheckFresh, which must not share a cached answer

	lookups, lost, hits atomic.Uint64

	// mu guards everything below and is held around every use of cache, so
	// that the eviction callback (which runs inside cache.Add) may touch
	// index. It is never held while calling Store, Outputs or OnAnswer.
	mu    sync.Mutex
	cache *lru.Cache[entry]
	// index maps an output path to the derivation that produces it, for
	// PathsDeleted. It holds only outputs of derivations in cache (an
	// eviction drops them), so it is bounded with cache. A path two
	// derivations produce (fixed-output derivations) maps to the latest.
	index   map[string]string
	seq     uint64
	queue   []job               // Resolve lookups waiting for a worker
	pending map[string]struct{} // drvs queued, looked up or waiting to retry: Resolve's dedup
	timers  map[string]func() bool
	answers []answer // OnAnswer calls waiting for the deliverer
	work    *sync.Cond
	deliver *sync.Cond
	closed  bool
}

// New makes an Owner and starts its Resolve workers.
func New(o Options) (*Owner, error) {
	if o.Store != nil && o.Outputs == nil {
		return nil, errors.New("availability: Options.Outputs is required with a Store: the owner asks the bucket about a derivation's outputs")
	}
	if o.MaxEntries < 0 || o.AvailableTTL < 0 || o.AbsentTTL < 0 || o.Lookups < 0 {
		return nil, fmt.Errorf("availability: negative option (MaxEntries %d, AvailableTTL %s, AbsentTTL %s, Lookups %d)",
			o.MaxEntries, o.AvailableTTL, o.AbsentTTL, o.Lookups)
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.AvailableTTL == 0 {
		o.AvailableTTL = DefaultAvailableTTL
	}
	if o.AbsentTTL == 0 {
		o.AbsentTTL = DefaultAbsentTTL
	}
	if o.Lookups == 0 {
		o.Lookups = DefaultLookups
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	w := &Owner{
		store: o.Store, outputs: o.Outputs,
		availableTTL: o.AvailableTTL, absentTTL: o.AbsentTTL,
		clk: o.Clock, onAnswer: o.OnAnswer, onLost: o.OnLost, onUntrusted: o.OnUntrusted, log: o.Log,
		index:   map[string]string{},
		pending: map[string]struct{}{},
		timers:  map[string]func() bool{},
	}
	w.cache = lru.NewWithEvict(o.MaxEntries, w.evicted)
	w.work = sync.NewCond(&w.mu)
	w.deliver = sync.NewCond(&w.mu)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	if c, ok := o.Clock.(clock.WithDelayedExecution); ok {
		// A fake clock runs f inside Step with its own lock held, and the
		// owner reads the clock under its lock: f must not take it there.
		w.after = func(d time.Duration, f func()) func() bool { return c.AfterFunc(d, func() { go f() }).Stop }
	} else {
		w.after = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if w.store != nil {
		for range o.Lookups {
			w.wg.Go(w.worker)
		}
	}
	if w.onAnswer != nil {
		w.wg.Go(w.deliverer)
	}
	return w, nil
}

// Close stops the Resolve workers and retries, cancels lookups in flight
// and drops answers not yet delivered. It waits for the owner's goroutines,
// so it must not be called from OnAnswer. The Owner still answers Peek and
// Check afterwards; Resolve does nothing.
func (o *Owner) Close() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.closed = true
	for drv, stop := range o.timers {
		stop()
		delete(o.timers, drv)
	}
	o.queue, o.answers = nil, nil
	o.mu.Unlock()
	o.cancel()
	o.work.Broadcast()
	o.deliver.Broadcast()
	o.wg.Wait()
}

// Succeeded records that a Build of drv succeeded at the time at: its
// outputs were available then, since its agent published every output's nar
// then its narinfo before reporting. The answer is trusted for AvailableTTL
// from at: a success older than that (a Build found Succeeded after a
// restart) says nothing of the bucket now, is not recorded, and Succeeded
// reports false, so the caller asks the bucket instead. outputs (store
// paths; nil when unknown) feed the index PathsDeleted uses.
func (o *Owner) Succeeded(drv string, outputs []string, at time.Time) bool {
	expires := at.Add(o.availableTTL).UnixNano()
	if o.store == nil {
		expires = math.MaxInt64 // nothing could confirm it again
	} else if expires <= o.clk.Now().UnixNano() {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq++
	o.putLocked(drv, entry{available: true, expires: expires, seq: o.seq}, outputs)
	o.answerLocked(drv, true)
	return true
}

// Gone records that the outputs of drv are known lost (GC deleted them, a
// nar 404, an agent could not substitute them): drv is absent for AbsentTTL,
// after which the bucket is asked again. OnAnswer(drv, false) is called if
// the owner counted drv available (even if that answer had expired: a
// consumer may still believe it).
func (o *Owner) Gone(drv string, why string) {
	expires := o.clk.Now().Add(o.absentTTL).UnixNano()
	o.mu.Lock()
	old, had := o.cache.Get(drv)
	o.seq++
	o.putLocked(drv, entry{available: false, expires: expires, seq: o.seq}, nil)
	wasAvailable := had && old.available
	if wasAvailable {
		o.answerLocked(drv, false)
	}
	o.mu.Unlock()
	o.lost.Add(1)
	if wasAvailable {
		o.log.Info("outputs lost: no longer available", "drv", drv, "why", why)
		if o.onLost != nil {
			o.onLost(drv, why)
		}
	} else {
		o.log.V(1).Info("outputs lost (not counted available)", "drv", drv, "why", why)
	}
}

// WhyGC starts the why of a loss PathsDeleted records, so a caller's OnLost can tell GC
// deletions from other news of loss.
const WhyGC = "garbage collection deleted "

// PathsDeleted records that GC deleted these store paths. derivers[i] is
// the Deriver of paths[i]'s deleted narinfo ("" or missing when unknown; a
// narinfo's base name is taken in paths[i]'s store directory). Every
// deriver, and every derivation the index knows produced a deleted path,
// is Gone, once per call.
func (o *Owner) PathsDeleted(paths []string, derivers []string) {
	type lost struct{ drv, path string }
	var gone []lost
	seen := map[string]bool{}
	add := func(drv, p string) {
		if drv != "" && !seen[drv] {
			seen[drv] = true
			gone = append(gone, lost{drv, p})
		}
	}
	o.mu.Lock()
	for i, p := range paths {
		if i < len(derivers) {
			d := derivers[i]
			if d == "unknown-deriver" { // what Nix says of a path it did not build
				d = ""
			}
			if d != "" && !strings.Contains(d, "/") {
				d = path.Dir(p) + "/" + d
			}
			add(d, p)
		}
		// Also the index's derivation when it differs: a path two
		// derivations produce is lost to both.
		add(o.index[p], p)
	}
	o.mu.Unlock()
	for _, g := range gone {
		o.Gone(g.drv, WhyGC+g.path)
	}
}

// Peek reports what the owner knows of drv without blocking or I/O; an
// expired answer is reported unknown (known false).
func (o *Owner) Peek(drv string) (available, known bool) {
	now := o.clk.Now().UnixNano()
	o.mu.Lock()
	e, ok := o.cache.Get(drv)
	o.mu.Unlock()
	if !ok || now > e.expires {
		return false, false
	}
	o.hits.Add(1)
	return e.available, true
}

// Check returns a fresh answer for drv: the remembered one if it has not
// expired, else the bucket's (available when every output is Present),
// with one lookup per derivation however many ask at once. A Store or
// Outputs error is returned and nothing is remembered. Without a Store an
// unknown derivation is absent.
func (o *Owner) Check(ctx context.Context, drv string) (bool, error) {
	if available, known := o.Peek(drv); known {
		return available, nil
	}
	if o.store == nil {
		return false, nil
	}
	return o.flight.Do(ctx, drv, func() (bool, error) { return o.lookup(ctx, drv, false) })
}

// CheckFresh is Check without trusting what the owner remembers: it asks the bucket (once at a
// time per derivation) and remembers the answer. For decisions a stale "available" would make
// wrong for good, such as ending a Build Succeeded without building it
// (spec.skipIfOutputsAvailable). Without a bucket it is Check.
func (o *Owner) CheckFresh(ctx context.Context, drv string) (bool, error) {
	if o.store == nil {
		return o.Check(ctx, drv)
	}
	return o.freshFlight.Do(ctx, drv, func() (bool, error) { return o.lookup(ctx, drv, true) })
}

// Resolve asks, asynchronously, about each of drvs, and delivers each
// answer through OnAnswer (from the owner's goroutine, never the caller's:
// a caller holding its own lock is never re-entered). A known answer is
// delivered at once; an unknown or expired one is looked up in the bucket
// by one of Lookups workers, once however many Resolve calls name it while
// it is pending. A failed lookup is logged and tried again with backoff
// (1 s doubling to 1 min) until it succeeds or the owner is closed.
func (o *Owner) Resolve(drvs []string) {
	now := o.clk.Now().UnixNano()
	var hits uint64
	o.mu.Lock()
	defer func() {
		o.mu.Unlock()
		o.hits.Add(hits)
	}()
	if o.closed {
		return
	}
	queued := false
	for _, drv := range drvs {
		if _, ok := o.pending[drv]; ok {
			continue // its lookup will answer
		}
		if e, ok := o.cache.Get(drv); ok && now <= e.expires {
			hits++
			o.answerLocked(drv, e.available)
			continue
		}
		if o.store == nil {
			o.answerLocked(drv, false)
			continue
		}
		o.pending[drv] = struct{}{}
		o.queue = append(o.queue, job{drv: drv})
		queued = true
	}
	if queued {
		o.work.Broadcast()
	}
}

// Stats returns the owner's counters.
func (o *Owner) Stats() Stats {
	o.mu.Lock()
	s := Stats{Entries: o.cache.Len(), Paths: len(o.index), Pending: len(o.pending)}
	o.mu.Unlock()
	s.Lookups, s.Lost, s.Hits = o.lookups.Load(), o.lost.Load(), o.hits.Load()
	return s
}

// lookup asks the bucket about drv (the body of a flight) and remembers the
// answer. It returns the answer the owner holds afterwards, which is a
// Succeeded's or Gone's if one came while the bucket was being asked.
func (o *Owner) lookup(ctx context.Context, drv string, fresh bool) (bool, error) {
	now := o.clk.Now()
	o.mu.Lock()
	e, ok := o.cache.Get(drv)
	start := o.seq
	o.mu.Unlock()
	if ok && now.UnixNano() <= e.expires && !fresh { // answered while we queued
		o.hits.Add(1)
		return e.available, nil
	}
	wasAvailable := ok && e.available // even if expired: a consumer may still count on it
	outs, err := o.outputs(ctx, drv)
	if err != nil {
		return false, fmt.Errorf("outputs of %s: %w", drv, err)
	}
	if len(outs) == 0 {
		return false, fmt.Errorf("derivation %s has no outputs", drv)
	}
	available := true
	for _, p := range outs {
		o.lookups.Add(1)
		ok, err := o.store.Present(ctx, p)
		if errors.Is(err, ErrUntrusted) {
			o.log.Info("output's narinfo not trusted: counted absent", "drv", drv, "path", p, "why", err.Error())
			if o.onUntrusted != nil {
				o.onUntrusted(drv, p, err)
			}
			ok, err = false, nil
		}
		if err != nil {
			return false, fmt.Errorf("output of %s: %w", drv, err)
		}
		if !ok {
			available = false
			break // one missing output is enough
		}
	}
	// The answer is as old as the question.
	ttl := o.absentTTL
	if available {
		ttl = o.availableTTL
	}
	o.mu.Lock()
	if cur, ok := o.cache.Get(drv); ok && cur.seq > start {
		o.mu.Unlock()
		return cur.available, nil // a newer Succeeded or Gone wins
	}
	o.putLocked(drv, entry{available: available, expires: now.Add(ttl).UnixNano(), seq: start}, outs)
	lost := wasAvailable && !available
	if lost {
		o.answerLocked(drv, false)
	}
	o.mu.Unlock()
	if lost { // found out by asking: as much a loss as a GC's report
		o.lost.Add(1)
		why := "the bucket no longer has all its outputs (narinfo and nar)"
		o.log.Info("outputs lost: no longer available", "drv", drv, "why", why)
		if o.onLost != nil {
			o.onLost(drv, why)
		}
	}
	return available, nil
}

// worker runs Resolve's lookups until Close.
func (o *Owner) worker() {
	for {
		o.mu.Lock()
		for len(o.queue) == 0 && !o.closed {
			o.work.Wait()
		}
		if o.closed {
			o.mu.Unlock()
			return
		}
		j := o.queue[0]
		o.queue[0] = job{}
		o.queue = o.queue[1:]
		if len(o.queue) == 0 {
			o.queue = nil // let the backing array go
		}
		o.mu.Unlock()

		available, err := o.flight.Do(o.ctx, j.drv, func() (bool, error) { return o.lookup(o.ctx, j.drv, false) })
		if err != nil {
			if o.ctx.Err() != nil {
				return // closing
			}
			o.retry(j, err)
			continue
		}
		o.mu.Lock()
		delete(o.pending, j.drv)
		// Deliver the state now held, under the same lock as any later
		// change's answer, so the last answer delivered is the current one.
		if e, ok := o.cache.Get(j.drv); ok {
			available = e.available
		}
		o.answerLocked(j.drv, available)
		o.mu.Unlock()
	}
}

// retry schedules j again after its backoff; the drv stays pending, so
// Resolve calls meanwhile add nothing.
func (o *Owner) retry(j job, err error) {
	delay := retryInitial
	if j.delay > 0 {
		delay = min(2*j.delay, retryMax)
	}
	if j.delay == 0 {
		o.log.Error(err, "availability lookup failed; retrying with backoff", "drv", j.drv, "retryIn", delay)
	} else {
		o.log.V(1).Info("availability lookup failed again; retrying with backoff", "drv", j.drv, "retryIn", delay, "err", err.Error())
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.timers[j.drv] = o.after(delay, func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		delete(o.timers, j.drv)
		if o.closed {
			return
		}
		o.queue = append(o.queue, job{drv: j.drv, delay: delay})
		o.work.Signal()
	})
}

// deliverer calls OnAnswer for queued answers, in order, until Close.
func (o *Owner) deliverer() {
	for {
		o.mu.Lock()
		for len(o.answers) == 0 && !o.closed {
			o.deliver.Wait()
		}
		if o.closed {
			o.mu.Unlock()
			return
		}
		batch := o.answers
		o.answers = nil
		o.mu.Unlock()
		for _, a := range batch {
			o.onAnswer(a.drv, a.available)
		}
	}
}

// answerLocked queues an OnAnswer call. o.mu must be held.
func (o *Owner) answerLocked(drv string, available bool) {
	if o.onAnswer == nil || o.closed {
		return
	}
	o.answers = append(o.answers, answer{drv, available})
	if len(o.answers) == 1 {
		o.deliver.Signal()
	}
}

// putLocked remembers e for drv with outputs (nil: keep the ones known) and
// keeps the index in step. Strings are copied so the owner never pins a
// caller's larger buffer. o.mu must be held.
func (o *Owner) putLocked(drv string, e entry, outputs []string) {
	old, had := o.cache.Get(drv)
	e.outputs = old.outputs
	key := drv
	if !had {
		key = strings.Clone(drv)
	}
	if outputs != nil && !(had && slices.Equal(old.outputs, outputs)) {
		if had {
			o.unindexLocked(drv, old.outputs)
			key = strings.Clone(drv)
		}
		e.outputs = make([]string, len(outputs))
		for i, p := range outputs {
			e.outputs[i] = strings.Clone(p)
			o.index[e.outputs[i]] = key
		}
	}
	o.cache.Add(key, e)
}

// evicted is the cache's eviction callback; it runs inside cache.Add, so
// with o.mu held.
func (o *Owner) evicted(drv string, e entry) { o.unindexLocked(drv, e.outputs) }

// unindexLocked drops drv's outputs from the index, unless another
// derivation took them over since.
func (o *Owner) unindexLocked(drv string, outputs []string) {
	for _, p := range outputs {
		if o.index[p] == drv {
			delete(o.index, p)
		}
	}
}
