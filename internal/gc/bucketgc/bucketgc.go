// Package bucketgc runs the reference-aware GC of internal/gc against the
// S3 bucket that serves substitutes: it lists narinfos and nars, reads the
// narinfos, asks gc.Compute for a plan, and deletes narinfos first, then
// the nars no kept narinfo points at. See docs/gc.md.
package bucketgc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/minio/minio-go/v7"
	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/narinfo"
)

// Defaults.
const (
	DefaultGrace       = 24 * time.Hour
	DefaultConcurrency = 16
	// DefaultBatchSize is S3's limit of keys per DeleteObjects request.
	DefaultBatchSize = 1000
	// maxNarInfoSize bounds a narinfo read (they are a few hundred bytes).
	maxNarInfoSize = 1 << 20
)

// Options configure one run.
type Options struct {
	// Client and Bucket say where the substitutes are.
	Client *minio.Client
	Bucket string

	// DryRun computes and reports the plan without deleting anything.
	DryRun bool
	// Grace protects objects younger than it (default DefaultGrace): an
	// upload between its nar and its narinfo, a publisher racing GC.
	Grace time.Duration
	// Roots are the GC roots (live Builds' outputs, ...); Keep selects
	// more among the bucket's narinfos (age, name globs, paths).
	Roots gc.Roots
	Keep  gc.RootSelector
	// AllowNoRoots lets a run go on when Roots returns nothing and Keep is
	// empty; otherwise that is an error, since it would collect everything
	// older than the grace (a misconfigured roots source, most likely).
	AllowNoRoots bool
	// DeleteMissingNar deletes narinfos whose nar is missing (they are
	// always reported).
	DeleteMissingNar bool

	// Concurrency of narinfo reads and re-checks (default 16), and
	// BatchSize of the DeleteObjects requests (default and max 1000).
	Concurrency int
	BatchSize   int
	// NarPrefix is where nars live (default gc.DefaultNarPrefix).
	NarPrefix string

	// OnDeleted, when set, is called once per run with the store paths of
	// the narinfos deleted, after they are gone and before their nars are
	// deleted: the controller marks those outputs unavailable, so no build
	// waits on them.
	OnDeleted func(storePaths []string)

	// Clock gives "now" (default the real clock).
	Clock clock.PassiveClock
	Log   logr.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Client == nil {
		return o, errors.New("bucketgc: Options.Client is nil: give a minio client for the substitute bucket")
	}
	if o.Bucket == "" {
		return o, errors.New("bucketgc: Options.Bucket is empty: name the bucket that serves substitutes")
	}
	if o.Grace == 0 {
		o.Grace = DefaultGrace
	}
	if o.Grace < 0 {
		return o, fmt.Errorf("bucketgc: Options.Grace %v is negative", o.Grace)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.BatchSize <= 0 || o.BatchSize > DefaultBatchSize {
		o.BatchSize = DefaultBatchSize
	}
	if o.NarPrefix == "" {
		o.NarPrefix = gc.DefaultNarPrefix
	}
	if !strings.HasSuffix(o.NarPrefix, "/") {
		o.NarPrefix += "/"
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if err := o.Keep.Validate(); err != nil {
		return o, err
	}
	return o, nil
}

// Run collects garbage once. It returns the report even on error, with
// what was done so far. A failure to list or read anything aborts before
// deleting: a plan over a partial inventory could delete what a missed
// narinfo references.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &run{opts: opts, log: opts.Log.WithValues("bucket", opts.Bucket), interned: map[string]string{}}
	start := opts.Clock.Now()
	r.report = &Report{Bucket: opts.Bucket, DryRun: opts.DryRun, Started: start}
	err = r.do(ctx, start)
	r.report.Finished = opts.Clock.Now()
	r.report.finish()
	if err != nil {
		return r.report, err
	}
	r.log.Info("gc done", "dryRun", opts.DryRun,
		"keptNarInfos", r.report.Stats.KeptNarInfos, "deletedNarInfos", r.report.DeletedNarInfos,
		"deletedNars", r.report.DeletedNars, "deletedBytes", r.report.DeletedBytes,
		"skipped", r.report.Skipped, "missingNars", r.report.Stats.MissingNars)
	return r.report, nil
}

type run struct {
	opts   Options
	log    logr.Logger
	report *Report

	mu       sync.Mutex
	interned map[string]string // reference hash parts
}

func (r *run) do(ctx context.Context, now time.Time) error {
	o := r.opts
	var roots []string
	if o.Roots != nil {
		var err error
		if roots, err = o.Roots.Roots(ctx); err != nil {
			return fmt.Errorf("bucketgc: getting GC roots: %w (not collecting without them)", err)
		}
	}
	if len(roots) == 0 && o.Keep.Empty() && !o.AllowNoRoots {
		return errors.New("bucketgc: no GC roots and no Keep selector: this run would delete everything older than the grace period; " +
			"check the roots source, or set AllowNoRoots (--allow-no-roots) if that is meant")
	}

	listed, err := r.listNarInfos(ctx)
	if err != nil {
		return err
	}
	inv := &gc.Inventory{NarPrefix: o.NarPrefix}
	if inv.NarInfos, err = r.readNarInfos(ctx, listed); err != nil {
		return err
	}
	// Nars after narinfos: a narinfo seen in the first listing had its nar
	// uploaded before, so a nar missing from the second is really missing.
	if inv.Nars, err = r.listNars(ctx); err != nil {
		return err
	}
	policy := gc.Policy{Grace: o.Grace, Keep: o.Keep, DeleteMissingNar: o.DeleteMissingNar}
	plan, err := gc.Compute(inv, roots, policy, now)
	if err != nil {
		return err
	}
	if !o.DryRun && len(plan.DeleteNarInfos)+len(plan.DeleteNars) > 0 {
		// Narinfos published while we listed may reference what the plan
		// deletes: add them as roots (whatever their time: the clocks of
		// the controller and of the S3 server may disagree) and plan again.
		added, err := r.rescan(ctx, inv, listed)
		if err != nil {
			return err
		}
		if len(added) > 0 {
			r.report.Rescued = len(added)
			roots = append(roots, added...)
			if plan, err = gc.Compute(inv, roots, policy, now); err != nil {
				return err
			}
		}
	}
	r.report.Stats = plan.Stats
	for _, a := range plan.Reports {
		r.report.add(a, OutcomeReported, a.Detail)
	}
	if o.DryRun {
		for _, a := range plan.DeleteNarInfos {
			r.report.add(a, OutcomeWouldDelete, "")
		}
		for _, a := range plan.DeleteNars {
			r.report.add(a, OutcomeWouldDelete, "")
		}
		return nil
	}
	return r.delete(ctx, plan)
}

// listedObject is what a run keeps of a listed narinfo (not the whole
// minio.ObjectInfo: a million of those is gigabytes).
type listedObject struct {
	Key, ETag    string
	LastModified time.Time
}

func etagOf(s string) string { return strings.Trim(s, `"`) }

// listNarInfos lists <hash>.narinfo at the bucket's root.
func (r *run) listNarInfos(ctx context.Context) (map[string]listedObject, error) {
	out := map[string]listedObject{}
	for obj := range r.opts.Client.ListObjects(ctx, r.opts.Bucket, minio.ListObjectsOptions{}) {
		if obj.Err != nil {
			return nil, r.explain(obj.Err, "", "listing narinfos")
		}
		if strings.HasSuffix(obj.Key, ".narinfo") && !strings.Contains(obj.Key, "/") && gc.HashPart(obj.Key) != "" {
			out[obj.Key] = listedObject{Key: obj.Key, ETag: etagOf(obj.ETag), LastModified: obj.LastModified}
		}
	}
	return out, nil
}

func (r *run) listNars(ctx context.Context) ([]gc.Nar, error) {
	var out []gc.Nar
	for obj := range r.opts.Client.ListObjects(ctx, r.opts.Bucket, minio.ListObjectsOptions{Prefix: r.opts.NarPrefix, Recursive: true}) {
		if obj.Err != nil {
			return nil, r.explain(obj.Err, "", "listing nars under "+r.opts.NarPrefix)
		}
		if strings.HasSuffix(obj.Key, "/") {
			continue
		}
		out = append(out, gc.Nar{Key: obj.Key, Size: obj.Size, LastModified: obj.LastModified, ETag: etagOf(obj.ETag)})
	}
	return out, nil
}

// readNarInfos reads the listed narinfos, Concurrency at a time. A narinfo
// gone since the listing is left out; a corrupt one is kept with Err set.
func (r *run) readNarInfos(ctx context.Context, listed map[string]listedObject) ([]gc.NarInfo, error) {
	objs := make([]listedObject, 0, len(listed))
	for _, o := range listed {
		objs = append(objs, o)
	}
	res := make([]gc.NarInfo, len(objs))
	found := make([]bool, len(objs))
	err := forEach(ctx, len(objs), r.opts.Concurrency, func(ctx context.Context, i int) error {
		ni, ok, err := r.readNarInfo(ctx, objs[i])
		res[i], found[i] = ni, ok
		return err
	})
	if err != nil {
		return nil, err
	}
	out := res[:0]
	for i := range res {
		if found[i] {
			out = append(out, res[i])
		}
	}
	return out, nil
}

func (r *run) readNarInfo(ctx context.Context, listed listedObject) (gc.NarInfo, bool, error) {
	obj, err := r.opts.Client.GetObject(ctx, r.opts.Bucket, listed.Key, minio.GetObjectOptions{})
	if err != nil {
		return gc.NarInfo{}, false, r.explain(err, listed.Key, "reading")
	}
	defer obj.Close()
	data, err := io.ReadAll(io.LimitReader(obj, maxNarInfoSize))
	if isNotFound(err) {
		return gc.NarInfo{}, false, nil // deleted since the listing
	}
	if err != nil {
		return gc.NarInfo{}, false, r.explain(err, listed.Key, "reading")
	}
	// The object read may be newer than the listing: describe what was
	// read. Stat answers from the GET's headers (no request), with the
	// size left to read, hence len(data).
	out := gc.NarInfo{Key: listed.Key, Size: int64(len(data)), LastModified: listed.LastModified, ETag: listed.ETag}
	if st, err := obj.Stat(); err == nil {
		out.ETag = etagOf(st.ETag)
		if st.LastModified.Truncate(time.Second) != listed.LastModified.Truncate(time.Second) {
			out.LastModified = st.LastModified
		}
	}
	ni, err := narinfo.Parse(data)
	if err != nil {
		out.Err = err.Error()
		r.log.Info("unreadable narinfo kept; fix or delete it by hand", "key", listed.Key, "err", err.Error())
		return out, true, nil
	}
	// Keep only what the plan needs, without pinning the narinfo's text:
	// references shrink to interned hash parts (many narinfos reference
	// the same few paths).
	out.StorePath, out.URL = strings.Clone(ni.StorePath), strings.Clone(ni.URL)
	out.References = make([]string, 0, len(ni.References))
	r.mu.Lock()
	for _, ref := range ni.References {
		h := gc.HashPart(ref)
		if h == "" {
			continue
		}
		s, ok := r.interned[h]
		if !ok {
			s = strings.Clone(h)
			r.interned[s] = s
		}
		out.References = append(out.References, s)
	}
	r.mu.Unlock()
	return out, true, nil
}

// rescan lists the narinfos again and adds those new or changed since the
// first listing to inv. It returns their keys (roots by hash part).
func (r *run) rescan(ctx context.Context, inv *gc.Inventory, first map[string]listedObject) ([]string, error) {
	again, err := r.listNarInfos(ctx)
	if err != nil {
		return nil, err
	}
	fresh := map[string]listedObject{}
	for k, o := range again {
		if f, ok := first[k]; !ok || f.ETag != o.ETag {
			fresh[k] = o
		}
	}
	if len(fresh) == 0 {
		return nil, nil
	}
	read, err := r.readNarInfos(ctx, fresh)
	if err != nil {
		return nil, err
	}
	byKey := map[string]int{}
	for i, ni := range inv.NarInfos {
		byKey[ni.Key] = i
	}
	var keys []string
	nars := make(map[string]bool, len(inv.Nars))
	for _, n := range inv.Nars {
		nars[n.Key] = true
	}
	for _, ni := range read {
		keys = append(keys, ni.Key)
		if i, ok := byKey[ni.Key]; ok {
			inv.NarInfos[i] = ni
		} else {
			inv.NarInfos = append(inv.NarInfos, ni)
		}
		// Its nar may have been uploaded after the nar listing.
		if k := strings.TrimPrefix(ni.URL, "./"); ni.Err == "" && strings.HasPrefix(k, r.opts.NarPrefix) && !nars[k] {
			st, err := r.opts.Client.StatObject(ctx, r.opts.Bucket, k, minio.StatObjectOptions{})
			if err != nil && !isNotFound(err) {
				return nil, r.explain(err, k, "checking")
			}
			if err == nil {
				nars[k] = true
				inv.Nars = append(inv.Nars, gc.Nar{Key: k, Size: st.Size, LastModified: st.LastModified, ETag: etagOf(st.ETag)})
			}
		}
	}
	r.log.Info("narinfos published during the run are protected", "count", len(read))
	return keys, nil
}

// delete carries the plan out: narinfos (each re-checked), OnDeleted, then
// the nars whose narinfos are all gone (each re-checked).
func (r *run) delete(ctx context.Context, plan *gc.Plan) error {
	o := r.opts
	// Re-check each narinfo: unchanged since the listing, and for a
	// missing nar, that the nar is still missing.
	keep := make([]string, len(plan.DeleteNarInfos)) // non-empty: why not deleted
	err := forEach(ctx, len(plan.DeleteNarInfos), o.Concurrency, func(ctx context.Context, i int) error {
		a := plan.DeleteNarInfos[i]
		why, err := r.changed(ctx, a)
		if err == nil && why == "" && a.Reason == gc.ReasonMissingNar && a.NarKey != "" {
			if _, serr := o.Client.StatObject(ctx, o.Bucket, a.NarKey, minio.StatObjectOptions{}); serr == nil {
				why = "its nar appeared since the listing"
			} else if !isNotFound(serr) {
				err = r.explain(serr, a.NarKey, "checking")
			}
		}
		keep[i] = why
		return err
	})
	if err != nil {
		return err
	}
	var todo []gc.Action
	for i, a := range plan.DeleteNarInfos {
		if keep[i] != "" {
			r.report.add(a, OutcomeSkipped, keep[i])
			continue
		}
		todo = append(todo, a)
	}
	gone := map[string]bool{}
	var deletedPaths []string
	failures := r.remove(ctx, todo, func(a gc.Action) {
		gone[a.Key] = true
		if a.StorePath != "" {
			deletedPaths = append(deletedPaths, a.StorePath)
		}
	})
	if len(deletedPaths) > 0 && o.OnDeleted != nil {
		o.OnDeleted(deletedPaths)
	}

	// Nars: those of deleted narinfos only once all of them are gone.
	var nars []gc.Action
	for _, a := range plan.DeleteNars {
		if a.Reason == gc.ReasonNarOfDeleted {
			ok := true
			for _, k := range a.NarInfos {
				ok = ok && gone[k]
			}
			if !ok {
				r.report.add(a, OutcomeSkipped, "a narinfo pointing at it was not deleted")
				continue
			}
		}
		nars = append(nars, a)
	}
	keep = make([]string, len(nars))
	if err := forEach(ctx, len(nars), o.Concurrency, func(ctx context.Context, i int) error {
		why, err := r.changed(ctx, nars[i])
		keep[i] = why
		return err
	}); err != nil {
		return errors.Join(err, failures)
	}
	todo = todo[:0]
	for i, a := range nars {
		if keep[i] != "" {
			r.report.add(a, OutcomeSkipped, keep[i])
			continue
		}
		todo = append(todo, a)
	}
	return errors.Join(failures, r.remove(ctx, todo, func(gc.Action) {}))
}

// changed says why an object must not be deleted after all: gone, or
// re-written since it was listed ("" when it is as listed).
func (r *run) changed(ctx context.Context, a gc.Action) (string, error) {
	st, err := r.opts.Client.StatObject(ctx, r.opts.Bucket, a.Key, minio.StatObjectOptions{})
	if isNotFound(err) {
		return "already gone", nil
	}
	if err != nil {
		return "", r.explain(err, a.Key, "re-checking")
	}
	// Listings carry milliseconds, HEAD answers whole seconds.
	if etagOf(st.ETag) != a.ETag || !st.LastModified.Truncate(time.Second).Equal(a.LastModified.Truncate(time.Second)) {
		return fmt.Sprintf("changed since the listing (etag %s, modified %s)", etagOf(st.ETag), st.LastModified.UTC().Format(time.RFC3339)), nil
	}
	return "", nil
}

// remove deletes the actions' objects in batches and records the outcome
// of each; done is called for each deleted one. It returns the failures.
func (r *run) remove(ctx context.Context, as []gc.Action, done func(gc.Action)) error {
	var errs []error
	for start := 0; start < len(as); start += r.opts.BatchSize {
		batch := as[start:min(start+r.opts.BatchSize, len(as))]
		byKey := make(map[string]gc.Action, len(batch))
		ch := make(chan minio.ObjectInfo, len(batch))
		for _, a := range batch {
			byKey[a.Key] = a
			ch <- minio.ObjectInfo{Key: a.Key}
		}
		close(ch)
		for res := range r.opts.Client.RemoveObjectsWithResult(ctx, r.opts.Bucket, ch, minio.RemoveObjectsOptions{}) {
			a, ok := byKey[res.ObjectName]
			if !ok {
				if res.Err != nil {
					errs = append(errs, r.explain(res.Err, res.ObjectName, "deleting"))
				}
				continue
			}
			delete(byKey, res.ObjectName)
			if res.Err != nil {
				r.report.add(a, OutcomeFailed, res.Err.Error())
				errs = append(errs, r.explain(res.Err, a.Key, "deleting"))
				continue
			}
			r.report.add(a, OutcomeDeleted, "")
			r.log.V(1).Info("deleted", "kind", a.Kind, "key", a.Key, "reason", a.Reason, "storePath", a.StorePath)
			done(a)
		}
		for _, a := range byKey { // no answer: not known to be deleted
			err := ctx.Err()
			if err == nil {
				err = errors.New("no answer from the server")
			}
			r.report.add(a, OutcomeFailed, err.Error())
			errs = append(errs, r.explain(err, a.Key, "deleting"))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bucketgc: %d deletions failed; the nars of narinfos not deleted are kept, the next run retries: %w", len(errs), errors.Join(errs...))
	}
	return nil
}

func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	er := minio.ToErrorResponse(err)
	return er.StatusCode == http.StatusNotFound || er.Code == "NoSuchKey"
}

func (r *run) explain(err error, key, what string) error {
	where := fmt.Sprintf("s3 bucket %s", r.opts.Bucket)
	if key != "" {
		where = fmt.Sprintf("s3 object %s/%s", r.opts.Bucket, key)
	}
	er := minio.ToErrorResponse(err)
	switch er.Code {
	case "NoSuchBucket":
		return fmt.Errorf("bucketgc: %s %s: %w (check --bucket / Options.Bucket)", what, where, err)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("bucketgc: %s %s: %w (check the access key and secret, and that they may list, read and delete in the bucket)", what, where, err)
	}
	return fmt.Errorf("bucketgc: %s %s: %w", what, where, err)
}

// forEach runs f(0..n-1) on up to workers goroutines and returns the first
// error, after which the remaining calls are not started.
func forEach(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		next     = make(chan int)
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(ctx, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
