package availability

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// fakeStore is a bucket in memory counting Present calls per path. A path
// is present when set to true; fail makes the next calls error; gate, when
// set, holds every call until closed (or the call's context ends).
type fakeStore struct {
	mu      sync.Mutex
	present map[string]bool
	calls   map[string]int
	fail    int
	gate    chan struct{}
}

var errOutage = errors.New("bucket outage")

func newStore() *fakeStore {
	return &fakeStore{present: map[string]bool{}, calls: map[string]int{}}
}

func (s *fakeStore) Present(ctx context.Context, p string) (bool, error) {
	s.mu.Lock()
	s.calls[p]++
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return false, errOutage
	}
	return s.present[p], nil
}

func (s *fakeStore) set(present bool, paths ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range paths {
		s.present[p] = present
	}
}

func (s *fakeStore) count(p string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[p]
}

func (s *fakeStore) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		n += c
	}
	return n
}

// Test derivations: drv(i) has outputs out(i) and lib(i).
func drv(i int) string { return fmt.Sprintf("/gnu/store/%032d-pkg-%d.drv", i, i) }
func out(i int) string { return fmt.Sprintf("/gnu/store/%032d-pkg-%d", i+1_000_000, i) }
func lib(i int) string { return fmt.Sprintf("/gnu/store/%032d-pkg-%d-lib", i+2_000_000, i) }

// outputsOf parses the index back out of drv(i).
func outputsOf(_ context.Context, d string) ([]string, error) {
	var i int
	if _, err := fmt.Sscanf(d, "/gnu/store/%032d-", &i); err != nil {
		return nil, fmt.Errorf("not a test derivation: %s", d)
	}
	return []string{out(i), lib(i)}, nil
}

// answers records OnAnswer calls.
type answers struct {
	mu  sync.Mutex
	got []answer
	ch  chan answer
}

func newAnswers() *answers { return &answers{ch: make(chan answer, 100_000)} }

func (a *answers) on(drv string, available bool) {
	a.mu.Lock()
	a.got = append(a.got, answer{drv, available})
	a.mu.Unlock()
	a.ch <- answer{drv, available}
}

// next waits for the next answer.
func (a *answers) next(t *testing.T) answer {
	t.Helper()
	select {
	case x := <-a.ch:
		return x
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10 s")
		return answer{}
	}
}

// none checks no answer comes for a short while.
func (a *answers) none(t *testing.T) {
	t.Helper()
	select {
	case x := <-a.ch:
		t.Fatalf("unexpected answer %+v", x)
	case <-time.After(50 * time.Millisecond):
	}
}

var t0 = time.Unix(1_700_000_000, 0)

func newOwner(t *testing.T, o Options) *Owner {
	t.Helper()
	w, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

func peek(t *testing.T, w *Owner, d string, wantAvailable, wantKnown bool) {
	t.Helper()
	if a, k := w.Peek(d); a != wantAvailable || k != wantKnown {
		t.Errorf("Peek(%s) = %v, %v; want %v, %v", d, a, k, wantAvailable, wantKnown)
	}
}

func TestSucceededThenPeek(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ans := newAnswers()
	w := newOwner(t, Options{Store: newStore(), Outputs: outputsOf, Clock: clk, OnAnswer: ans.on})
	peek(t, w, drv(1), false, false)
	w.Succeeded(drv(1), []string{out(1), lib(1)}, w.clk.Now())
	peek(t, w, drv(1), true, true)
	if a := ans.next(t); a != (answer{drv(1), true}) {
		t.Errorf("OnAnswer %+v", a)
	}
	clk.Step(DefaultAvailableTTL - time.Second)
	peek(t, w, drv(1), true, true)
	clk.Step(2 * time.Second) // expired: reported unknown
	peek(t, w, drv(1), false, false)
	if st := w.Stats(); st.Entries != 1 || st.Paths != 2 || st.Lookups != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestCheckCachesAndExpires(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	s := newStore()
	s.set(true, out(1), lib(1), out(2)) // drv(2)'s lib is missing
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clk})
	ctx := context.Background()
	check := func(i int, want bool) {
		t.Helper()
		got, err := w.Check(ctx, drv(i))
		if err != nil || got != want {
			t.Fatalf("Check(drv %d) = %v, %v; want %v", i, got, err, want)
		}
	}
	check(1, true)
	check(1, true)
	if c := s.count(out(1)) + s.count(lib(1)); c != 2 {
		t.Errorf("%d Present calls for two outputs checked twice, want 2 (one each, then cached)", c)
	}
	peek(t, w, drv(1), true, true)
	clk.Step(DefaultAvailableTTL + time.Second)
	check(1, true)
	if c := s.count(out(1)); c != 2 {
		t.Errorf("out(1) asked %d times after expiry, want 2", c)
	}

	// Absent: cached for AbsentTTL only.
	check(2, false)
	check(2, false)
	if c := s.count(lib(2)); c != 1 {
		t.Errorf("lib(2) asked %d times, want 1", c)
	}
	s.set(true, lib(2)) // published meanwhile
	check(2, false)     // still trusting the absent answer
	clk.Step(DefaultAbsentTTL + time.Second)
	check(2, true)
	if st := w.Stats(); st.Lookups != uint64(s.total()) || st.Hits == 0 {
		t.Errorf("stats %+v, store calls %d", st, s.total())
	}
}

// A narinfo whose nar is missing is the Store's business: Present says
// false, and the derivation is absent. The first missing output ends the
// lookup.
func TestNarMissingIsAbsent(t *testing.T) {
	s := newStore()
	s.set(false, out(3)) // the narinfo is there but not its nar: Present false
	s.set(true, lib(3))
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0)})
	if ok, err := w.Check(context.Background(), drv(3)); ok || err != nil {
		t.Fatalf("Check = %v, %v; want absent", ok, err)
	}
	if c := s.count(lib(3)); c != 0 {
		t.Errorf("lib asked %d times after out was missing", c)
	}
	peek(t, w, drv(3), false, true)
}

func TestCheckErrorRemembersNothing(t *testing.T) {
	s := newStore()
	s.set(true, out(1), lib(1))
	s.fail = 1
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0)})
	ctx := context.Background()
	_, err := w.Check(ctx, drv(1))
	if !errors.Is(err, errOutage) {
		t.Fatalf("Check err = %v, want the store's", err)
	}
	t.Log(err)
	peek(t, w, drv(1), false, false)
	if st := w.Stats(); st.Entries != 0 || st.Paths != 0 {
		t.Errorf("something remembered after an error: %+v", st)
	}
	if ok, err := w.Check(ctx, drv(1)); !ok || err != nil {
		t.Errorf("Check after the outage = %v, %v", ok, err)
	}
	// An Outputs error too.
	if _, err := w.Check(ctx, "/gnu/store/not-a-test-drv.drv"); err == nil {
		t.Error("no error when the outputs are unknown")
	}
}

// Concurrent Checks of one derivation make one lookup.
func TestCheckSingleFlight(t *testing.T) {
	s := newStore()
	s.set(true, out(1), lib(1))
	s.gate = make(chan struct{})
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0)})
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if ok, err := w.Check(context.Background(), drv(1)); !ok || err != nil {
				t.Errorf("Check = %v, %v", ok, err)
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	s.mu.Lock()
	close(s.gate)
	s.mu.Unlock()
	wg.Wait()
	if c := s.count(out(1)); c != 1 {
		t.Errorf("out(1) asked %d times by 100 concurrent Checks, want 1", c)
	}
}

func TestResolveDeduplicates(t *testing.T) {
	s := newStore()
	for i := range 10 {
		s.set(i%2 == 0, out(i), lib(i))
	}
	s.gate = make(chan struct{}) // every lookup waits until all Resolves are in
	ans := newAnswers()
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0), OnAnswer: ans.on})
	drvs := make([]string, 10)
	for i := range drvs {
		drvs[i] = drv(i)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			for range 100 {
				w.Resolve(drvs)
			}
		})
	}
	wg.Wait()
	if st := w.Stats(); st.Pending != 10 {
		t.Errorf("pending = %d, want 10", st.Pending)
	}
	s.mu.Lock()
	close(s.gate)
	s.gate = nil
	s.mu.Unlock()
	got := map[string]bool{}
	for range 10 {
		a := ans.next(t)
		if _, dup := got[a.drv]; dup {
			t.Errorf("%s answered twice", a.drv)
		}
		got[a.drv] = a.available
	}
	ans.none(t)
	for i := range 10 {
		if v, ok := got[drv(i)]; !ok || v != (i%2 == 0) {
			t.Errorf("answer for drv %d: %v (answered %v)", i, v, ok)
		}
		// Absent derivations stop at their first output.
		if c := s.count(out(i)); c != 1 {
			t.Errorf("out(%d) asked %d times by 1000 Resolves, want 1", i, c)
		}
		if c := s.count(lib(i)); c > 1 {
			t.Errorf("lib(%d) asked %d times", i, c)
		}
	}
	// Known now: answered again, from memory.
	before := s.total()
	w.Resolve(drvs)
	for range 10 {
		ans.next(t)
	}
	if s.total() != before {
		t.Errorf("known derivations were looked up again")
	}
	if st := w.Stats(); st.Pending != 0 || st.Entries != 10 {
		t.Errorf("stats %+v", st)
	}
}

// OnAnswer runs on the owner's goroutine: a caller that holds its own lock
// across Resolve, Succeeded or Gone, and takes it in OnAnswer, is not
// re-entered (it would deadlock).
func TestAnswersFromAnotherGoroutine(t *testing.T) {
	var callerLock sync.Mutex
	ch := make(chan answer, 10)
	s := newStore()
	s.set(true, out(2), lib(2))
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0),
		OnAnswer: func(d string, a bool) {
			callerLock.Lock()
			defer callerLock.Unlock()
			ch <- answer{d, a}
		}})
	done := make(chan struct{})
	go func() {
		callerLock.Lock()
		w.Succeeded(drv(1), nil, w.clk.Now())
		w.Resolve([]string{drv(1), drv(2)}) // one known, one looked up
		w.Gone(drv(1), "test")
		time.Sleep(20 * time.Millisecond) // let the lookup finish while we hold the lock
		callerLock.Unlock()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("OnAnswer was called from the caller's goroutine (deadlock)")
	}
	var got []answer
	for range 4 {
		select {
		case a := <-ch:
			got = append(got, a)
		case <-time.After(10 * time.Second):
			t.Fatalf("answers so far %+v", got)
		}
	}
	// drv(1): true (Succeeded), true (Resolve, known), false (Gone), in order.
	var one []bool
	for _, a := range got {
		if a.drv == drv(1) {
			one = append(one, a.available)
		} else if a != (answer{drv(2), true}) {
			t.Errorf("answer %+v", a)
		}
	}
	if !slices.Equal(one, []bool{true, true, false}) {
		t.Errorf("answers for drv(1): %v, want [true true false]", one)
	}
}

func TestResolveRetriesWithBackoff(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	s := newStore()
	s.set(true, out(1), lib(1))
	s.fail = 2
	ans := newAnswers()
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clk, OnAnswer: ans.on})
	waitTimer := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !clk.HasWaiters() {
			if time.Now().After(deadline) {
				t.Fatal("no retry scheduled")
			}
			time.Sleep(time.Millisecond)
		}
	}
	w.Resolve([]string{drv(1)})
	waitTimer() // first failure: retry in 1 s
	ans.none(t)
	w.Resolve([]string{drv(1)}) // pending: not queued again
	clk.Step(time.Second)
	waitTimer() // second failure: retry in 2 s
	if c := s.count(out(1)); c != 2 {
		t.Errorf("out(1) asked %d times after one retry, want 2", c)
	}
	clk.Step(time.Second)
	time.Sleep(20 * time.Millisecond)
	if c := s.count(out(1)); c != 2 {
		t.Errorf("retried after 1 s, the backoff is 2 s (calls %d)", c)
	}
	if st := w.Stats(); st.Pending != 1 {
		t.Errorf("a failing drv is not pending: %+v", st)
	}
	clk.Step(time.Second)
	if a := ans.next(t); a != (answer{drv(1), true}) {
		t.Errorf("answer %+v", a)
	}
	if st := w.Stats(); st.Pending != 0 || st.Entries != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestGone(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	s := newStore()
	ans := newAnswers()
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clk, OnAnswer: ans.on})
	w.Succeeded(drv(1), []string{out(1), lib(1)}, w.clk.Now())
	ans.next(t)
	w.Gone(drv(1), "nar 404")
	if a := ans.next(t); a != (answer{drv(1), false}) {
		t.Errorf("answer %+v", a)
	}
	peek(t, w, drv(1), false, true)
	// Gone of a derivation not counted available: remembered, no answer.
	w.Gone(drv(2), "agent could not substitute it")
	ans.none(t)
	peek(t, w, drv(2), false, true)
	if st := w.Stats(); st.Lost != 2 {
		t.Errorf("lost = %d, want 2", st.Lost)
	}
	// After AbsentTTL the bucket is asked again (republished meanwhile).
	s.set(true, out(1), lib(1))
	clk.Step(DefaultAbsentTTL + time.Second)
	if ok, err := w.Check(context.Background(), drv(1)); !ok || err != nil {
		t.Errorf("Check after AbsentTTL = %v, %v", ok, err)
	}
}

// A lookup that began before a Gone (or Succeeded) does not overwrite it
// with the bucket's older answer.
func TestLaterEventWinsOverLookup(t *testing.T) {
	s := newStore()
	s.set(true, out(1), lib(1))
	s.gate = make(chan struct{})
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0)})
	res := make(chan bool)
	go func() {
		ok, _ := w.Check(context.Background(), drv(1))
		res <- ok
	}()
	for s.count(out(1)) == 0 {
		time.Sleep(time.Millisecond)
	}
	w.Gone(drv(1), "gc") // while the bucket is being asked
	s.mu.Lock()
	close(s.gate)
	s.mu.Unlock()
	if ok := <-res; ok {
		t.Error("Check returned the lookup's stale 'available' over a later Gone")
	}
	peek(t, w, drv(1), false, true)
}

func TestPathsDeleted(t *testing.T) {
	ans := newAnswers()
	w := newOwner(t, Options{Store: newStore(), Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0), OnAnswer: ans.on})
	w.Succeeded(drv(1), []string{out(1), lib(1)}, w.clk.Now())
	w.Succeeded(drv(2), []string{out(2), lib(2)}, w.clk.Now())
	w.Succeeded(drv(3), nil, w.clk.Now()) // outputs unknown: found only through a deriver
	w.Succeeded(drv(4), []string{out(4), lib(4)}, w.clk.Now())
	for range 4 {
		ans.next(t)
	}
	base3 := drv(3)[len("/gnu/store/"):]
	w.PathsDeleted(
		[]string{lib(1), out(1), out(3), out(4), "/gnu/store/00000000000000000000000000000009-src.tar.gz"},
		[]string{"", "", base3, drv(4)}, // a narinfo's Deriver is a base name; a full path works too
	)
	got := map[string]bool{}
	for range 3 {
		a := ans.next(t)
		if a.available {
			t.Errorf("answer %+v", a)
		}
		if got[a.drv] {
			t.Errorf("%s answered twice (two of its outputs deleted)", a.drv)
		}
		got[a.drv] = true
	}
	ans.none(t)
	for i, want := range map[int]bool{1: true, 3: true, 4: true, 2: false} {
		if got[drv(i)] != want {
			t.Errorf("drv %d gone = %v, want %v", i, got[drv(i)], want)
		}
		peek(t, w, drv(i), !want, true)
	}
	if st := w.Stats(); st.Lost != 3 {
		t.Errorf("lost = %d, want 3", st.Lost)
	}
}

func TestNoStore(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ans := newAnswers()
	w := newOwner(t, Options{Clock: clk, OnAnswer: ans.on})
	w.Succeeded(drv(1), nil, w.clk.Now())
	ans.next(t)
	w.Resolve([]string{drv(1), drv(2)})
	if a, b := ans.next(t), ans.next(t); a != (answer{drv(1), true}) || b != (answer{drv(2), false}) {
		t.Errorf("answers %+v %+v", a, b)
	}
	if ok, err := w.Check(context.Background(), drv(2)); ok || err != nil {
		t.Errorf("Check of unknown = %v, %v", ok, err)
	}
	clk.Step(24 * time.Hour) // nothing could confirm it again: it does not expire
	peek(t, w, drv(1), true, true)
	if st := w.Stats(); st.Entries != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Options{Store: newStore()}); err == nil {
		t.Error("a Store without Outputs accepted")
	}
	if _, err := New(Options{AbsentTTL: -time.Second}); err == nil {
		t.Error("a negative TTL accepted")
	}
}

func TestCloseStopsLookups(t *testing.T) {
	s := newStore()
	s.gate = make(chan struct{}) // never opened: lookups end only by Close
	ans := newAnswers()
	w, err := New(Options{Store: s, Outputs: outputsOf, OnAnswer: ans.on, Lookups: 2})
	if err != nil {
		t.Fatal(err)
	}
	w.Resolve([]string{drv(1), drv(2), drv(3)})
	for s.total() < 2 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() { w.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on lookups in flight")
	}
	if c := s.total(); c > 2 {
		t.Errorf("%d lookups at once with Lookups 2", c)
	}
	w.Resolve([]string{drv(4)}) // after Close: nothing
	ans.none(t)
	w.Close() // twice is fine
}

// The bound holds after a million successes, and so does the path index.
func TestMaxEntriesBound(t *testing.T) {
	const n, max = 1_000_000, 1000
	w := newOwner(t, Options{Store: newStore(), Outputs: outputsOf, MaxEntries: max})
	for i := range n {
		w.Succeeded(drv(i), []string{out(i), lib(i)}, w.clk.Now())
	}
	st := w.Stats()
	if st.Entries > max || st.Paths > 2*max {
		t.Errorf("after %d Succeeded: %+v, want at most %d entries and %d paths", n, st, max, 2*max)
	}
	peek(t, w, drv(n-1), true, true)
	peek(t, w, drv(n-max), true, true)
	peek(t, w, drv(n-max-1), false, false) // evicted
	// Evicted derivations left the index: deleting their paths finds nothing.
	w.PathsDeleted([]string{out(0), lib(n - max - 1)}, nil)
	if st := w.Stats(); st.Lost != 0 {
		t.Errorf("an evicted derivation was found through the index: %+v", st)
	}
	w.PathsDeleted([]string{lib(n - 1)}, nil)
	peek(t, w, drv(n-1), false, true)
}

// Many goroutines at once, with evictions: for the race detector.
func TestConcurrentUse(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	s := newStore()
	for i := range 200 {
		s.set(i%3 != 0, out(i), lib(i))
	}
	var answered atomic.Int64
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clk, MaxEntries: 50, Lookups: 4,
		OnAnswer: func(d string, a bool) { answered.Add(1) }})
	var wg sync.WaitGroup
	ctx := context.Background()
	for g := range 8 {
		wg.Go(func() {
			for k := range 500 {
				i := (g*131 + k*17) % 200
				switch k % 7 {
				case 0:
					w.Succeeded(drv(i), []string{out(i), lib(i)}, w.clk.Now())
				case 1:
					w.Gone(drv(i), "test")
				case 2:
					w.PathsDeleted([]string{out(i)}, nil)
				case 3:
					w.Resolve([]string{drv(i), drv((i + 1) % 200)})
				case 4:
					if _, err := w.Check(ctx, drv(i)); err != nil {
						t.Error(err)
					}
				case 5:
					w.Peek(drv(i))
				case 6:
					clk.Step(time.Second)
					w.Stats()
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().Pending > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st := w.Stats()
	if st.Entries > 50 || st.Paths > 100 || st.Pending != 0 {
		t.Errorf("stats %+v", st)
	}
	if answered.Load() == 0 {
		t.Error("no answers")
	}
}

// nixbase32 is Nix's base-32 alphabet, for realistic store paths.
const nixbase32 = "0123456789abcdfghijklmnpqrsvwxyz"

// storeHash returns 32 nixbase32 characters derived from i and salt.
func storeHash(i, salt uint64) string {
	var b [32]byte
	x := i*0x9e3779b97f4a7c15 ^ salt
	for k := range b {
		x ^= x >> 29
		x *= 0xbf58476d1ce4e5b9
		x ^= x >> 32
		b[k] = nixbase32[x&31]
	}
	return string(b[:])
}

// BenchmarkOwnerMemory1M reports the heap an Owner with default bounds holds
// after 10^6 Succeeded calls with realistic paths and two outputs each.
func BenchmarkOwnerMemory1M(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		w, err := New(Options{Store: newStore(), Outputs: outputsOf})
		if err != nil {
			b.Fatal(err)
		}
		for i := range uint64(n) {
			name := fmt.Sprintf("-name%d-1.2.3", i%5000)
			w.Succeeded("/gnu/store/"+storeHash(i, 1)+name+".drv", []string{
				"/gnu/store/" + storeHash(i, 2) + name,
				"/gnu/store/" + storeHash(i, 3) + name + "-doc",
			}, w.clk.Now())
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		st := w.Stats()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(st.Entries), "entries")
		b.ReportMetric(float64(st.Paths), "paths")
		runtime.KeepAlive(w)
		w.Close()
	}
}

// A success older than AvailableTTL (a Build found Succeeded after a restart) says nothing of
// the bucket now: it is not recorded, and the bucket is asked instead.
func TestSucceededLongAgoIsNoAnswer(t *testing.T) {
	s := newStore()
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0)})
	if w.Succeeded(drv(1), []string{out(1), lib(1)}, t0.Add(-time.Hour)) {
		t.Error("a success an hour old was recorded")
	}
	if _, known := w.Peek(drv(1)); known {
		t.Error("Peek knows a derivation only an old success spoke of")
	}
	if !w.Succeeded(drv(2), nil, t0.Add(-time.Minute)) {
		t.Error("a success a minute old was not recorded")
	}
	if avail, known := w.Peek(drv(2)); !avail || !known {
		t.Errorf("Peek = %v, %v after a recent success", avail, known)
	}
}

// CheckFresh asks the bucket even when the owner remembers "available", and a loss it finds
// is told (OnAnswer false, OnLost, Stats().Lost) like any other.
func TestCheckFreshFindsALoss(t *testing.T) {
	s := newStore()
	a := newAnswers()
	var lost atomic.Int32
	w := newOwner(t, Options{Store: s, Outputs: outputsOf, Clock: clocktesting.NewFakeClock(t0),
		OnAnswer: a.on, OnLost: func(string, string) { lost.Add(1) }})
	w.Succeeded(drv(1), []string{out(1), lib(1)}, t0)
	if x := a.next(t); !x.available {
		t.Fatalf("answer %+v after a success", x)
	}
	if ok, err := w.Check(t.Context(), drv(1)); !ok || err != nil || s.total() != 0 {
		t.Fatalf("Check = %v, %v after %d lookups; want the remembered success, no lookup", ok, err, s.total())
	}
	ok, err := w.CheckFresh(t.Context(), drv(1)) // the fake bucket has nothing
	if ok || err != nil || s.total() == 0 {
		t.Fatalf("CheckFresh = %v, %v after %d lookups; want absent, from the bucket", ok, err, s.total())
	}
	if x := a.next(t); x.available {
		t.Errorf("answer %+v after the loss, want absent", x)
	}
	if lost.Load() != 1 || w.Stats().Lost != 1 {
		t.Errorf("OnLost %d times, Stats().Lost %d; want 1, 1", lost.Load(), w.Stats().Lost)
	}
}
