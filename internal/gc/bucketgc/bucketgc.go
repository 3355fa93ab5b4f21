// Package bucketgc runs the reference-aware GC of internal/gc against the
// S3 bucket that serves substitutes: it lists narinfos and nars, reads the
// narinfos, asks gc.Compute for a plan, and deletes narinfos first, then
// the nars no kept narinfo points at. See docs/gc.md.
package bucketgc

import (
	"bytes"
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
	// maxRootsListSize bounds the roots list read from the bucket (a
	// million store paths is about 80 MiB; the tops of closures suffice).
	maxRootsListSize = 128 << 20
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

	// Mode says what a run may delete (default gc.ModeOrphans: only nars
	// no narinfo names). gc.ModeRoots also deletes the substitutes no kept
	// root reaches, and takes a declared keep policy: Declared, RootsKey or
	// Keep. Roots and the declared policy are only asked in ModeRoots.
	Mode gc.Mode
	// Roots are the farm's own roots: what its live Builds need and
	// produced (controllers.BuildRoots).
	Roots gc.Roots
	// Declared are roots users declare outside the bucket: Builds by tag,
	// a roots file.
	Declared gc.Roots
	// RootsKey names an object of the bucket listing roots, one store path
	// per line (# comments), e.g. "gc/roots": what a distribution wants kept,
	// such as its current release's closure. A run fails while it is
	// missing: collecting without it would unroot that closure.
	RootsKey string
	// Keep selects more roots among the bucket's narinfos (age, name globs,
	// paths).
	Keep gc.RootSelector
	// AllowNoRoots lets a ModeRoots run go on when all its sources return
	// nothing and Keep is empty; otherwise that is an error, since it would
	// collect everything older than the grace (a broken roots source, most
	// likely).
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
	// the narinfos deleted and, index by index, their Deriver ("" when the
	// narinfo names none), after they are gone and before their nars are
	// deleted: the controller marks those outputs unavailable, so no build
	// waits on them, and finds the derivations that rebuild them even when
	// no Build of theirs is left.
	OnDeleted func(storePaths, derivers []string)

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
	if strings.HasPrefix(o.RootsKey, o.NarPrefix) {
		return o, fmt.Errorf("bucketgc: Options.RootsKey %q is under the nar prefix %q, where GC deletes what no narinfo names: put it elsewhere, e.g. gc/roots", o.RootsKey, o.NarPrefix)
	}
	return o, o.checkPolicy()
}

// Validate checks the options as a run would, so a controller can refuse a
// bad configuration at start rather than at every scheduled run.
func (o Options) Validate() error {
	_, err := o.withDefaults()
	return err
}

// checkPolicy refuses a mode that does not match what is declared: deleting
// substitutes takes a declared keep policy, and a keep policy given with
// ModeOrphans would be silently ignored.
func (o *Options) checkPolicy() error {
	mode, err := gc.ParseMode(string(o.Mode))
	if err != nil {
		return fmt.Errorf("bucketgc: Options.Mode: %w", err)
	}
	o.Mode = mode
	declared := o.Declared != nil || o.RootsKey != "" || !o.Keep.Empty()
	switch {
	case mode == gc.ModeRoots && !declared:
		return errors.New("bucketgc: policy roots deletes the substitutes no kept root reaches, and needs a declared keep policy: " +
			"roots by tag (Declared), a roots list in the bucket (RootsKey), or Keep (max age, name globs, paths); " +
			"without one, use policy orphans, which deletes only orphan nars")
	case mode == gc.ModeOrphans && declared:
		return errors.New("bucketgc: a keep policy (Declared, RootsKey or Keep) is given with policy orphans, which deletes no substitute " +
			"whatever it says: set policy roots to delete what it does not keep, or drop it")
	}
	return nil
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
	r.report = &Report{Bucket: opts.Bucket, DryRun: opts.DryRun, Mode: opts.Mode, Started: start}
	err = r.do(ctx, start)
	r.report.Finished = opts.Clock.Now()
	r.report.finish()
	if err != nil {
		return r.report, err
	}
	r.log.Info("gc done", "policy", opts.Mode, "dryRun", opts.DryRun,
		"keptNarInfos", r.report.Stats.KeptNarInfos, "deletedNarInfos", r.report.DeletedNarInfos,
		"deletedNars", r.report.DeletedNars, "deletedBytes", r.report.DeletedBytes,
		"skipped", r.report.Skipped, "missingNars", r.report.Stats.MissingNars)
	return r.report, nil
}

type run struct {
	opts   Options
	log    logr.Logger
	report *Report
	plan   *gc.Plan // the final plan, which explains its actions

	mu       sync.Mutex
	interned map[string]string // reference hash parts
}

func (r *run) do(ctx context.Context, now time.Time) error {
	o := r.opts
	roots, err := r.roots(ctx)
	if err != nil {
		return err
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
	policy := gc.Policy{Mode: o.Mode, Grace: o.Grace, Keep: o.Keep, DeleteMissingNar: o.DeleteMissingNar}
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
	r.plan = plan
	r.report.Stats = plan.Stats
	for _, a := range plan.Reports {
		r.record(a, OutcomeReported, a.Detail)
	}
	if o.DryRun {
		for _, a := range plan.DeleteNarInfos {
			r.record(a, OutcomeWouldDelete, "")
		}
		for _, a := range plan.DeleteNars {
			r.record(a, OutcomeWouldDelete, "")
		}
		return nil
	}
	return r.delete(ctx, plan)
}

// roots gathers a ModeRoots run's roots: the farm's, the declared ones and
// the bucket's roots list. Any source's error aborts the run: a partial
// root set would make roots look like garbage. A ModeOrphans run needs none.
func (r *run) roots(ctx context.Context) ([]string, error) {
	o := r.opts
	if o.Mode != gc.ModeRoots {
		return nil, nil
	}
	roots, err := gc.MultiRoots{o.Roots, o.Declared}.Roots(ctx)
	if err != nil {
		return nil, fmt.Errorf("bucketgc: getting GC roots: %w (not collecting without them)", err)
	}
	if o.RootsKey != "" {
		list, err := r.readRootsList(ctx)
		if err != nil {
			return nil, err
		}
		roots = append(roots, list...)
	}
	if len(roots) == 0 && o.Keep.Empty() && !o.AllowNoRoots {
		return nil, errors.New("bucketgc: no GC roots and no Keep selector: this run would delete everything older than the grace period; " +
			"check the roots sources and the roots list, or set AllowNoRoots (--allow-no-roots) if that is meant")
	}
	return roots, nil
}

// readRootsList reads the RootsKey object.
func (r *run) readRootsList(ctx context.Context) ([]string, error) {
	key := r.opts.RootsKey
	obj, err := r.opts.Client.GetObject(ctx, r.opts.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, r.explain(err, key, "reading the roots list")
	}
	defer obj.Close()
	data, err := io.ReadAll(io.LimitReader(obj, maxRootsListSize+1))
	switch {
	case isNotFound(err):
		return nil, fmt.Errorf("bucketgc: roots list s3://%s/%s is missing: upload it (store paths, one per line) or drop RootsKey (--gc-roots-key, gc --roots-key); "+
			"not collecting without it", r.opts.Bucket, key)
	case err != nil:
		return nil, r.explain(err, key, "reading the roots list")
	case len(data) > maxRootsListSize:
		return nil, fmt.Errorf("bucketgc: roots list s3://%s/%s is larger than %d MiB: list the tops of the closures to keep, not every path", r.opts.Bucket, key, maxRootsListSize>>20)
	}
	return gc.ParseRootsList(bytes.NewReader(data), "s3://"+r.opts.Bucket+"/"+key)
}

// record adds a's outcome to the report, with why the plan deletes it.
func (r *run) record(a gc.Action, o Outcome, note string) {
	r.report.add(a, r.plan.Why(a), o, note)
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
		out.Err, out.URL = err.Error(), urlLine(data)
		r.log.Info("unreadable narinfo kept; fix or delete it by hand", "key", listed.Key, "err", err.Error())
		return out, true, nil
	}
	// Keep only what the plan needs, without pinning the narinfo's text:
	// references shrink to interned hash parts (many narinfos reference
	// the same few paths).
	out.StorePath, out.URL, out.Deriver = strings.Clone(ni.StorePath), strings.Clone(ni.URL), strings.Clone(ni.Deriver)
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

// urlLine finds the URL line of a narinfo that does not parse, so its nar
// is kept with it: what GC cannot read must not make its nar an orphan.
func urlLine(data []byte) string {
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "URL:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
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
			r.record(a, OutcomeSkipped, keep[i])
			continue
		}
		todo = append(todo, a)
	}
	gone := map[string]bool{}
	var deletedPaths, derivers []string
	failures := r.remove(ctx, todo, func(a gc.Action) {
		gone[a.Key] = true
		if a.StorePath != "" {
			deletedPaths = append(deletedPaths, a.StorePath)
			derivers = append(derivers, a.Deriver)
		}
	})
	if len(deletedPaths) > 0 && o.OnDeleted != nil {
		o.OnDeleted(deletedPaths, derivers)
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
				r.record(a, OutcomeSkipped, "a narinfo pointing at it was not deleted")
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
			r.record(a, OutcomeSkipped, keep[i])
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
				r.record(a, OutcomeFailed, res.Err.Error())
				errs = append(errs, r.explain(res.Err, a.Key, "deleting"))
				continue
			}
			r.record(a, OutcomeDeleted, "")
			r.log.V(1).Info("deleted", "kind", a.Kind, "key", a.Key, "reason", a.Reason, "storePath", a.StorePath)
			done(a)
		}
		for _, a := range byKey { // no answer: not known to be deleted
			err := ctx.Err()
			if err == nil {
				err = errors.New("no answer from the server")
			}
			r.record(a, OutcomeFailed, err.Error())
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
