// Package gc decides which objects of the substitute bucket may go: a pure,
// reference-aware garbage collection plan over narinfos and nars, with no
// I/O (the S3 side is internal/gc/bucketgc).
//
// What may go depends on the Mode. ModeOrphans (the default) deletes only
// garbage by construction: nars no narinfo names. ModeRoots, which takes a
// declared keep policy, also deletes substitutes: a narinfo is kept while it
// is reachable through References from a root, or from anything else that
// is kept (a narinfo younger than the grace period, one the RootSelector
// picks, one that cannot be parsed). The kept set is closed under
// References, so a client that can fetch a kept item can fetch its whole
// closure. In both modes a nar is kept while a kept narinfo points at it.
// See docs/gc.md.
package gc

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// HashLen is the length of a store path's hash part.
const HashLen = 32

// DefaultNarPrefix is where the bucket keeps nars (nar/<compression>/...).
const DefaultNarPrefix = "nar/"

// NarInfo is one listed narinfo object.
type NarInfo struct {
	// Key is the object name, "<hash>.narinfo".
	Key string
	// StorePath, References and URL (the nar object, relative to the
	// bucket root) are the narinfo's fields. References may be base names
	// ("<hash>-<name>") or just hash parts: only the hash part is used.
	StorePath  string
	References []string
	URL        string
	// Deriver is the narinfo's Deriver (a .drv base name), if any: the farm
	// maps a deleted output to the derivation that rebuilds it.
	Deriver string
	// Size, LastModified and ETag are the object's, from the listing; ETag
	// is carried to the plan for the re-check before deletion.
	Size         int64
	LastModified time.Time
	ETag         string
	// Err, when set, says why the narinfo could not be parsed. Such a
	// narinfo is kept and reported: the collector never deletes what it
	// cannot read. URL may still be set (read leniently), so its nar is
	// kept too.
	Err string
}

// Nar is one listed nar object.
type Nar struct {
	Key          string
	Size         int64
	LastModified time.Time
	ETag         string
}

// Inventory is what the bucket holds.
type Inventory struct {
	NarInfos []NarInfo
	Nars     []Nar
	// NarPrefix is the prefix under which Nars were listed (default
	// DefaultNarPrefix). A narinfo URL outside it is external: neither
	// checked for presence nor ever deleted.
	NarPrefix string
}

// RootSelector picks configured roots among the bucket's narinfos, besides
// the roots a Roots source returns.
type RootSelector struct {
	// MaxAge keeps every narinfo published (LastModified) within MaxAge of
	// now: "keep everything of the last N days". 0 selects none.
	MaxAge time.Duration
	// NameGlobs keep narinfos whose store path name (after "<hash>-")
	// matches one of these path.Match patterns, e.g. "guile-3.0*" or
	// "*-doc". A prefix is written "prefix*".
	NameGlobs []string
	// Paths are store paths or base names kept explicitly.
	Paths []string
}

// Empty reports whether the selector selects nothing.
func (s RootSelector) Empty() bool {
	return s.MaxAge <= 0 && len(s.NameGlobs) == 0 && len(s.Paths) == 0
}

// Validate checks the globs.
func (s RootSelector) Validate() error {
	for _, g := range s.NameGlobs {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("gc: RootSelector.NameGlobs: %q: %w (use path.Match syntax: *, ?, [a-z])", g, err)
		}
	}
	if s.MaxAge < 0 {
		return fmt.Errorf("gc: RootSelector.MaxAge %v is negative", s.MaxAge)
	}
	return nil
}

// Mode says what a plan may delete.
type Mode string

const (
	// ModeOrphans deletes only garbage by construction: nars no narinfo
	// names (a publisher that died between its nar and its narinfo), older
	// than the grace. Every narinfo stays, whatever roots say: without a
	// declared keep policy nobody said which substitutes may go. It is the
	// zero value's meaning.
	ModeOrphans Mode = "orphans"
	// ModeRoots also deletes the narinfos no kept root reaches, and the
	// nars only they point at. It takes a declared keep policy (roots by
	// tag, a roots list, a RootSelector): the caller checks that one is.
	ModeRoots Mode = "roots"
)

// ParseMode reads a mode as flags and values spell it; "" is ModeOrphans.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return ModeOrphans, nil
	case ModeOrphans, ModeRoots:
		return m, nil
	}
	return "", fmt.Errorf("gc: policy %q: want %q (delete only orphan nars) or %q (also substitutes no declared root reaches)",
		s, ModeOrphans, ModeRoots)
}

// Policy is how the plan is made.
type Policy struct {
	// Mode says what may go (default ModeOrphans).
	Mode Mode
	// Grace protects young objects: a narinfo or nar whose LastModified is
	// within Grace of now is never deleted (an upload in flight between its
	// nar and its narinfo, a publisher racing the collector). Young
	// narinfos are also roots.
	Grace time.Duration
	// Keep selects configured roots (ModeRoots).
	Keep RootSelector
	// DeleteMissingNar deletes narinfos whose nar is not in the bucket,
	// rooted or not: such a narinfo promises what the bucket cannot serve.
	// Without it they are only reported.
	DeleteMissingNar bool
}

// young reports whether an object modified at t is within the grace.
func (p Policy) young(t, now time.Time) bool { return now.Sub(t) < p.Grace }

// Kind of object.
type Kind string

const (
	KindNarInfo Kind = "narinfo"
	KindNar     Kind = "nar"
)

// Reason an object is deleted (or reported).
type Reason string

const (
	// ReasonUnreachable: a narinfo no root reaches, older than the grace.
	ReasonUnreachable Reason = "unreachable"
	// ReasonMissingNar: a narinfo whose nar is not in the bucket.
	ReasonMissingNar Reason = "missing-nar"
	// ReasonUnreadable: a narinfo that cannot be parsed (reported, kept).
	ReasonUnreadable Reason = "unreadable"
	// ReasonNarOfDeleted: a nar only deleted narinfos point at.
	ReasonNarOfDeleted Reason = "nar-of-deleted"
	// ReasonOrphan: a nar no narinfo points at, older than the grace (a
	// publisher that died between nar and narinfo).
	ReasonOrphan Reason = "orphan"
)

// Action is one object the plan deletes or reports.
type Action struct {
	Kind   Kind
	Key    string
	Reason Reason
	// StorePath of a narinfo (empty for nars and unreadable narinfos).
	StorePath    string
	Size         int64
	LastModified time.Time
	ETag         string
	// NarKey is, for a narinfo, the nar it points at.
	NarKey string
	// Deriver is, for a narinfo, its Deriver (see NarInfo.Deriver).
	Deriver string
	// Reachable is, for a narinfo with a missing nar, whether the plan
	// keeps it but for that (a root reaches it, or the policy keeps every
	// narinfo): such a narinfo is only reported, unless DeleteMissingNar.
	Reachable bool
	// NarInfos are, for a nar of deleted narinfos, the keys of those
	// narinfos: the nar may go only once all of them are gone.
	NarInfos []string
	// Detail explains a report (the parse error of an unreadable narinfo).
	Detail string
}

// Stats are the plan's counts.
type Stats struct {
	NarInfos, Nars int
	// Roots given (source and selector paths) and those that matched no
	// narinfo (not published, or already collected).
	Roots, RootsUnmatched int
	// KeptNarInfos = reachable from roots, young or selected, closed under
	// References. Rooted, Young and Selected count the starting points.
	KeptNarInfos, Rooted, Young, Selected int
	KeptNars                              int
	KeptNarBytes                          int64
	// DanglingReferences: references of kept narinfos to paths that have no
	// narinfo in the bucket (an incomplete closure).
	DanglingReferences int
	MissingNars        int // narinfos whose nar is absent
	Unreadable         int
	// ExternalURLs: narinfos whose URL is outside the nar prefix.
	ExternalURLs int
}

// Plan is what may go, in deletion order: narinfos before nars.
type Plan struct {
	DeleteNarInfos []Action // sorted by Key
	DeleteNars     []Action // sorted by Key
	// Reports are narinfos with a problem that are not deleted: missing
	// nar (without DeleteMissingNar) and unreadable.
	Reports []Action
	Stats   Stats

	// policy and now made the plan; Why explains its actions with them.
	policy Policy
	now    time.Time
}

// HashPart returns the hash part of a store path, base name or narinfo
// key, or "" if s has none.
func HashPart(s string) string {
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) < HashLen {
		return ""
	}
	if len(s) > HashLen && s[HashLen] != '-' && s[HashLen] != '.' {
		return ""
	}
	return s[:HashLen]
}

// storeName returns the name part of a store path ("hello-2.12").
func storeName(storePath string) string {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	if len(base) > HashLen+1 {
		return base[HashLen+1:]
	}
	return ""
}

// narKey turns a narinfo URL into a key under prefix, or "" if it points
// outside the bucket's nar prefix.
func narKey(url, prefix string) string {
	if strings.Contains(url, "://") {
		return ""
	}
	k := path.Clean(strings.TrimPrefix(url, "./"))
	if !strings.HasPrefix(k, prefix) {
		return ""
	}
	return k
}

// Compute makes the plan. roots are store paths or base names (the live
// Builds' outputs and configured roots); now is the collector's clock.
// Compute does not modify inv.
func Compute(inv *Inventory, roots []string, p Policy, now time.Time) (*Plan, error) {
	if err := p.Keep.Validate(); err != nil {
		return nil, err
	}
	if p.Grace < 0 {
		return nil, fmt.Errorf("gc: Policy.Grace %v is negative", p.Grace)
	}
	var err error
	if p.Mode, err = ParseMode(string(p.Mode)); err != nil {
		return nil, err
	}
	prefix := inv.NarPrefix
	if prefix == "" {
		prefix = DefaultNarPrefix
	}
	plan := &Plan{Stats: Stats{NarInfos: len(inv.NarInfos), Nars: len(inv.Nars)}, policy: p, now: now}
	st := &plan.Stats
	var kept []bool
	if p.Mode == ModeOrphans {
		// No substitute may go: every narinfo is kept, so only the nars
		// none names are left to collect.
		kept = make([]bool, len(inv.NarInfos))
		for i := range kept {
			kept[i] = true
		}
	} else {
		kept = markReachable(inv, roots, p, now, st)
	}

	// Nars: which are listed, which a kept narinfo points at.
	narIdx := make(map[string]int32, len(inv.Nars))
	for i := range inv.Nars {
		narIdx[inv.Nars[i].Key] = int32(i)
	}
	const (
		narUnpointed uint8 = iota
		narOfDeleted
		narKept
	)
	narState := make([]uint8, len(inv.Nars))
	var ofDeleted map[int32][]string // nar → deleted narinfos pointing at it
	for i := range inv.NarInfos {
		ni := &inv.NarInfos[i]
		if ni.Err != "" {
			st.Unreadable++
			plan.Reports = append(plan.Reports, narInfoAction(ni, ReasonUnreadable, ""))
			if j, ok := narIdx[narKey(ni.URL, prefix)]; ok {
				narState[j] = narKept // what the collector cannot read still names its nar
			}
			continue
		}
		key := narKey(ni.URL, prefix)
		if key == "" {
			st.ExternalURLs++
			if kept[i] {
				st.KeptNarInfos++
			} else {
				plan.DeleteNarInfos = append(plan.DeleteNarInfos, narInfoAction(ni, ReasonUnreachable, ""))
			}
			continue
		}
		j, present := narIdx[key]
		if !present {
			st.MissingNars++
			a := narInfoAction(ni, ReasonMissingNar, key)
			a.Reachable = kept[i]
			if p.DeleteMissingNar || !kept[i] {
				plan.DeleteNarInfos = append(plan.DeleteNarInfos, a)
			} else {
				plan.Reports = append(plan.Reports, a)
				st.KeptNarInfos++
			}
			continue
		}
		if kept[i] {
			st.KeptNarInfos++
			narState[j] = narKept
			continue
		}
		plan.DeleteNarInfos = append(plan.DeleteNarInfos, narInfoAction(ni, ReasonUnreachable, key))
		if narState[j] != narKept {
			narState[j] = narOfDeleted
			if ofDeleted == nil {
				ofDeleted = map[int32][]string{}
			}
			ofDeleted[j] = append(ofDeleted[j], ni.Key)
		}
	}
	for j := range inv.Nars {
		nar := &inv.Nars[j]
		if narState[j] == narKept || p.young(nar.LastModified, now) {
			st.KeptNars++
			st.KeptNarBytes += nar.Size
			continue
		}
		a := Action{Kind: KindNar, Key: nar.Key, Size: nar.Size, LastModified: nar.LastModified, ETag: nar.ETag}
		if narState[j] == narOfDeleted {
			a.Reason = ReasonNarOfDeleted
			a.NarInfos = ofDeleted[int32(j)]
			slices.Sort(a.NarInfos)
		} else {
			a.Reason = ReasonOrphan
		}
		plan.DeleteNars = append(plan.DeleteNars, a)
	}
	byKey := func(a, b Action) int { return strings.Compare(a.Key, b.Key) }
	slices.SortFunc(plan.DeleteNarInfos, byKey)
	slices.SortFunc(plan.DeleteNars, byKey)
	slices.SortFunc(plan.Reports, byKey)
	return plan, nil
}

// markReachable marks the narinfos kept in ModeRoots: the roots, the young,
// the unreadable and the selected ones, and everything they reach through
// References.
func markReachable(inv *Inventory, roots []string, p Policy, now time.Time, st *Stats) []bool {
	byHash := make(map[string]int32, len(inv.NarInfos))
	for i := range inv.NarInfos {
		if h := HashPart(inv.NarInfos[i].Key); h != "" {
			byHash[h] = int32(i)
		}
	}
	kept := make([]bool, len(inv.NarInfos))
	stack := make([]int32, 0, 1024)
	push := func(i int32) {
		if !kept[i] {
			kept[i] = true
			stack = append(stack, i)
		}
	}
	rootSet := func(list []string) {
		for _, r := range list {
			st.Roots++
			i, ok := byHash[HashPart(r)]
			if !ok {
				st.RootsUnmatched++
				continue
			}
			if !kept[i] {
				st.Rooted++
			}
			push(i)
		}
	}
	rootSet(roots)
	rootSet(p.Keep.Paths)
	for i := range inv.NarInfos {
		ni := &inv.NarInfos[i]
		switch {
		case kept[i]:
		case ni.Err != "":
			push(int32(i))
		case p.young(ni.LastModified, now):
			st.Young++
			push(int32(i))
		case p.Keep.MaxAge > 0 && now.Sub(ni.LastModified) < p.Keep.MaxAge,
			len(p.Keep.NameGlobs) > 0 && matchAny(p.Keep.NameGlobs, storeName(ni.StorePath)):
			st.Selected++
			push(int32(i))
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, ref := range inv.NarInfos[i].References {
			j, ok := byHash[HashPart(ref)]
			if !ok {
				st.DanglingReferences++
				continue
			}
			push(j)
		}
	}
	return kept
}

func narInfoAction(ni *NarInfo, r Reason, narKey string) Action {
	return Action{Kind: KindNarInfo, Key: ni.Key, Reason: r, StorePath: ni.StorePath, Size: ni.Size,
		LastModified: ni.LastModified, ETag: ni.ETag, NarKey: narKey, Deriver: ni.Deriver, Detail: ni.Err}
}

func matchAny(globs []string, name string) bool {
	if name == "" {
		return false
	}
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// DeletedStorePaths returns the store paths of the plan's narinfo
// deletions, for telling the farm.
func (p *Plan) DeletedStorePaths() []string {
	out := make([]string, 0, len(p.DeleteNarInfos))
	for _, a := range p.DeleteNarInfos {
		if a.StorePath != "" {
			out = append(out, a.StorePath)
		}
	}
	return out
}

// Why says, for people, why the plan deletes or reports a: what kept it
// from being kept, with its age against the grace and the policy's age
// rule. It is computed on demand (reports, dry runs), not for every
// action of a plan.
func (p *Plan) Why(a Action) string {
	age := fmt.Sprintf("%s (%s ago)", a.LastModified.UTC().Format(time.RFC3339), p.now.Sub(a.LastModified).Round(time.Second))
	switch a.Reason {
	case ReasonUnreachable:
		rule := fmt.Sprintf("older than the grace (%s)", p.policy.Grace)
		if p.policy.Keep.MaxAge > 0 {
			rule += fmt.Sprintf(" and the keep max age (%s)", p.policy.Keep.MaxAge)
		}
		return fmt.Sprintf("no kept root reaches it (policy %s); published %s, %s", p.policy.Mode, age, rule)
	case ReasonMissingNar:
		switch {
		case !a.Reachable:
			return fmt.Sprintf("its nar %s is not in the bucket, and no kept root reaches it", a.NarKey)
		case p.policy.DeleteMissingNar:
			return fmt.Sprintf("its nar %s is not in the bucket, and missing nars are deleted: it promises what the bucket cannot serve", a.NarKey)
		}
		return fmt.Sprintf("its nar %s is not in the bucket; kept, as something keeps it: delete it by hand or with DeleteMissingNar to have it rebuilt", a.NarKey)
	case ReasonOrphan:
		return fmt.Sprintf("no narinfo names it; uploaded %s, older than the grace (%s)", age, p.policy.Grace)
	case ReasonNarOfDeleted:
		return fmt.Sprintf("only narinfos this run deletes point at it (%s); uploaded %s", strings.Join(a.NarInfos, ", "), age)
	case ReasonUnreadable:
		return "cannot be parsed, so it is kept (with its nar, when its URL line is readable): fix or delete it by hand"
	}
	return string(a.Reason)
}
