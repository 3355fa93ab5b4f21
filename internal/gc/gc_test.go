package gc

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

const grace = 24 * time.Hour

// hash makes a store hash part for a test name.
func hash(name string) string {
	sum := sha256.Sum256([]byte(name))
	return nixbase32.EncodeToString(sum[:20])
}

func base(name string) string { return hash(name) + "-" + name }
func path_(name string) string {
	return "/gnu/store/" + base(name)
}
func narKeyOf(name string) string { return "nar/zstd/" + hash("nar "+name) + ".nar.zst" }

type item struct {
	refs  []string
	age   time.Duration
	nar   string // nar name; default the item's own
	noNar bool   // the nar is not in the bucket
	url   string // overrides the URL
	bad   bool   // unreadable
	// badURL: unreadable, but its URL line is read (leniently)
	badURL bool
}

// inventory builds an inventory from items and extra (orphan) nars with
// their ages.
func inventory(items map[string]item, orphans map[string]time.Duration) *Inventory {
	inv := &Inventory{}
	nars := map[string]time.Duration{}
	for name, it := range items {
		ni := NarInfo{Key: hash(name) + ".narinfo", StorePath: path_(name), Size: 300, LastModified: now.Add(-it.age), ETag: "e-" + name}
		for _, r := range it.refs {
			ni.References = append(ni.References, base(r))
		}
		narName := name
		if it.nar != "" {
			narName = it.nar
		}
		ni.URL = narKeyOf(narName)
		if it.url != "" {
			ni.URL = it.url
		}
		if it.bad || it.badURL {
			url := ""
			if it.badURL {
				url = ni.URL
			}
			ni = NarInfo{Key: ni.Key, Size: 10, LastModified: ni.LastModified, URL: url, Err: "narinfo line 1: broken"}
		}
		inv.NarInfos = append(inv.NarInfos, ni)
		if !it.noNar && it.url == "" {
			if old, ok := nars[narName]; !ok || it.age < old {
				nars[narName] = it.age // a nar is at least as old as its narinfo
			}
		}
	}
	for name, age := range orphans {
		nars[name] = age
	}
	for name, age := range nars {
		inv.Nars = append(inv.Nars, Nar{Key: narKeyOf(name), Size: 1000, LastModified: now.Add(-age)})
	}
	return inv
}

const old = 30 * 24 * time.Hour

func TestCompute(t *testing.T) {
	chain := map[string]item{
		"a": {refs: []string{"b"}, age: old},
		"b": {refs: []string{"c"}, age: old},
		"c": {age: old},
	}
	cases := map[string]struct {
		items   map[string]item
		orphans map[string]time.Duration // nar name → age
		roots   []string                 // item names, or literal store paths when starting with /
		policy  Policy

		narInfos map[string]Reason // deleted narinfos, by item name
		nars     map[string]Reason // deleted nars, by nar name
		reports  map[string]Reason
		stats    *Stats
	}{
		"rooted chain keeps all three": {
			items: chain, roots: []string{"a"},
			stats: &Stats{NarInfos: 3, Nars: 3, Roots: 1, KeptNarInfos: 3, Rooted: 1, KeptNars: 3, KeptNarBytes: 3000},
		},
		"unrooted chain goes after the grace": {
			items:    chain,
			narInfos: map[string]Reason{"a": ReasonUnreachable, "b": ReasonUnreachable, "c": ReasonUnreachable},
			nars:     map[string]Reason{"a": ReasonNarOfDeleted, "b": ReasonNarOfDeleted, "c": ReasonNarOfDeleted},
		},
		"unrooted chain stays within the grace": {
			items: map[string]item{
				"a": {refs: []string{"b"}, age: grace - time.Second},
				"b": {refs: []string{"c"}, age: grace - time.Second},
				"c": {age: grace - time.Second},
			},
		},
		"unrooted chain goes exactly at the grace": {
			items: map[string]item{
				"a": {refs: []string{"b"}, age: grace},
				"b": {refs: []string{"c"}, age: grace},
				"c": {age: grace},
			},
			narInfos: map[string]Reason{"a": ReasonUnreachable, "b": ReasonUnreachable, "c": ReasonUnreachable},
			nars:     map[string]Reason{"a": ReasonNarOfDeleted, "b": ReasonNarOfDeleted, "c": ReasonNarOfDeleted},
		},
		"root in the middle keeps its closure only": {
			items: chain, roots: []string{"b"},
			narInfos: map[string]Reason{"a": ReasonUnreachable},
			nars:     map[string]Reason{"a": ReasonNarOfDeleted},
		},
		"a young narinfo keeps its old references": {
			items: map[string]item{
				"new": {refs: []string{"dep"}, age: time.Hour},
				"dep": {age: old},
				"x":   {age: old},
			},
			narInfos: map[string]Reason{"x": ReasonUnreachable},
			nars:     map[string]Reason{"x": ReasonNarOfDeleted},
			stats:    &Stats{NarInfos: 3, Nars: 3, KeptNarInfos: 2, Young: 1, KeptNars: 2, KeptNarBytes: 2000},
		},
		"a nar a kept narinfo points at is never deleted": {
			items: map[string]item{
				"kept": {age: old, nar: "shared"},
				"gone": {age: old, nar: "shared"},
			},
			roots:    []string{"kept"},
			narInfos: map[string]Reason{"gone": ReasonUnreachable},
		},
		"a nar shared by two deleted narinfos goes once": {
			items: map[string]item{
				"x": {age: old, nar: "shared"},
				"y": {age: old, nar: "shared"},
			},
			narInfos: map[string]Reason{"x": ReasonUnreachable, "y": ReasonUnreachable},
			nars:     map[string]Reason{"shared": ReasonNarOfDeleted},
		},
		"a young nar of a deleted narinfo stays (re-uploaded)": {
			items:    map[string]item{"x": {age: old, nar: "n"}},
			orphans:  map[string]time.Duration{"n": time.Minute},
			narInfos: map[string]Reason{"x": ReasonUnreachable},
		},
		"orphan nar younger than the grace stays": {
			orphans: map[string]time.Duration{"inflight": grace - time.Second},
			stats:   &Stats{Nars: 1, KeptNars: 1, KeptNarBytes: 1000},
		},
		"orphan nar older than the grace goes": {
			orphans: map[string]time.Duration{"crashed": grace + time.Second},
			nars:    map[string]Reason{"crashed": ReasonOrphan},
		},
		"rooted cycle keeps both": {
			items: map[string]item{
				"a": {refs: []string{"a", "b"}, age: old},
				"b": {refs: []string{"a", "b"}, age: old},
			},
			roots: []string{"b"},
		},
		"unrooted cycle and self-reference go": {
			items: map[string]item{
				"a":    {refs: []string{"a", "b"}, age: old},
				"b":    {refs: []string{"a"}, age: old},
				"self": {refs: []string{"self"}, age: old},
			},
			narInfos: map[string]Reason{"a": ReasonUnreachable, "b": ReasonUnreachable, "self": ReasonUnreachable},
			nars:     map[string]Reason{"a": ReasonNarOfDeleted, "b": ReasonNarOfDeleted, "self": ReasonNarOfDeleted},
		},
		"dangling references and unmatched roots are counted": {
			items: map[string]item{"a": {refs: []string{"gone"}, age: old}},
			roots: []string{"a", "/gnu/store/" + base("unpublished"), "not-a-path"},
			stats: &Stats{NarInfos: 1, Nars: 1, Roots: 3, RootsUnmatched: 2, KeptNarInfos: 1, Rooted: 1, KeptNars: 1, KeptNarBytes: 1000, DanglingReferences: 1},
		},
		"rooted narinfo with a missing nar is reported": {
			items:   map[string]item{"a": {age: old, noNar: true}},
			roots:   []string{"a"},
			reports: map[string]Reason{"a": ReasonMissingNar},
		},
		"rooted narinfo with a missing nar is deleted when asked": {
			items:    map[string]item{"a": {refs: []string{"b"}, age: old, noNar: true}, "b": {age: old}},
			roots:    []string{"a"},
			policy:   Policy{Grace: grace, DeleteMissingNar: true},
			narInfos: map[string]Reason{"a": ReasonMissingNar},
		},
		"young narinfo with a missing nar is deleted when asked": {
			items:    map[string]item{"a": {age: time.Minute, noNar: true}},
			policy:   Policy{Grace: grace, DeleteMissingNar: true},
			narInfos: map[string]Reason{"a": ReasonMissingNar},
		},
		"unrooted narinfo with a missing nar goes": {
			items:    map[string]item{"a": {age: old, noNar: true}},
			narInfos: map[string]Reason{"a": ReasonMissingNar},
		},
		"unreadable narinfo is kept and reported": {
			items:   map[string]item{"bad": {age: old, bad: true}},
			reports: map[string]Reason{"bad": ReasonUnreadable},
			// Its nar is unknown, so it looks orphaned.
			nars: map[string]Reason{"bad": ReasonOrphan},
		},
		"external URL: narinfo follows reachability, nothing else": {
			items: map[string]item{
				"kept": {age: old, url: "https://mirror.example/nar/x.nar"},
				"gone": {age: old, url: "../elsewhere.nar"},
			},
			roots:    []string{"kept"},
			narInfos: map[string]Reason{"gone": ReasonUnreachable},
		},
		"unreadable narinfo whose URL is read keeps its nar": {
			items:   map[string]item{"bad": {age: old, badURL: true}},
			reports: map[string]Reason{"bad": ReasonUnreadable},
		},
		"orphans policy: only orphan nars older than the grace go": {
			items: map[string]item{
				"a":           {refs: []string{"b"}, age: old},
				"b":           {age: old},
				"unreachable": {age: old},
				"shared-1":    {age: old, nar: "shared"},
				"shared-2":    {age: old, nar: "shared"},
			},
			orphans: map[string]time.Duration{"crashed": grace + time.Second, "inflight": grace - time.Second},
			policy:  Policy{Mode: ModeOrphans},
			nars:    map[string]Reason{"crashed": ReasonOrphan},
			stats:   &Stats{NarInfos: 5, Nars: 6, KeptNarInfos: 5, KeptNars: 5, KeptNarBytes: 5000},
		},
		"orphans policy: roots and selectors change nothing": {
			items:  map[string]item{"a": {age: old}, "b": {age: old}},
			roots:  []string{"a"},
			policy: Policy{Mode: ModeOrphans, Keep: RootSelector{MaxAge: time.Hour}},
			stats:  &Stats{NarInfos: 2, Nars: 2, KeptNarInfos: 2, KeptNars: 2, KeptNarBytes: 2000},
		},
		"orphans policy: a narinfo with a missing nar is reported, not deleted": {
			items:   map[string]item{"a": {age: old, noNar: true}},
			policy:  Policy{Mode: ModeOrphans},
			reports: map[string]Reason{"a": ReasonMissingNar},
		},
		"orphans policy: a missing nar's narinfo goes when asked": {
			items:    map[string]item{"a": {age: old, noNar: true}},
			policy:   Policy{Mode: ModeOrphans, DeleteMissingNar: true},
			narInfos: map[string]Reason{"a": ReasonMissingNar},
		},
		"orphans policy: an unreadable narinfo's nar stays when its URL is read": {
			items:   map[string]item{"bad": {age: old, badURL: true}, "worse": {age: old, bad: true}},
			policy:  Policy{Mode: ModeOrphans},
			reports: map[string]Reason{"bad": ReasonUnreadable, "worse": ReasonUnreadable},
			nars:    map[string]Reason{"worse": ReasonOrphan},
		},
		"selector MaxAge keeps the last days and their closure": {
			items: map[string]item{
				"recent": {refs: []string{"dep"}, age: 3 * 24 * time.Hour},
				"dep":    {age: old},
				"older":  {age: 10 * 24 * time.Hour},
			},
			policy:   Policy{Grace: grace, Keep: RootSelector{MaxAge: 7 * 24 * time.Hour}},
			narInfos: map[string]Reason{"older": ReasonUnreachable},
			nars:     map[string]Reason{"older": ReasonNarOfDeleted},
		},
		"selector name globs and paths": {
			items: map[string]item{
				"guile-3.0.9":     {refs: []string{"libgc-8"}, age: old},
				"libgc-8":         {age: old},
				"hello-2.12":      {age: old},
				"hello-2.12-doc":  {age: old},
				"coreutils-9.1":   {age: old},
				"coreutils-9.1.2": {age: old},
			},
			policy: Policy{Grace: grace, Keep: RootSelector{
				NameGlobs: []string{"guile-*", "*-doc"},
				Paths:     []string{"/gnu/store/" + base("coreutils-9.1")},
			}},
			narInfos: map[string]Reason{"hello-2.12": ReasonUnreachable, "coreutils-9.1.2": ReasonUnreachable},
			nars:     map[string]Reason{"hello-2.12": ReasonNarOfDeleted, "coreutils-9.1.2": ReasonNarOfDeleted},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if tc.policy.Grace == 0 {
				tc.policy.Grace = grace
			}
			if tc.policy.Mode == "" {
				tc.policy.Mode = ModeRoots
			}
			var roots []string
			for _, r := range tc.roots {
				if _, ok := tc.items[r]; ok {
					roots = append(roots, path_(r))
				} else {
					roots = append(roots, r)
				}
			}
			inv := inventory(tc.items, tc.orphans)
			plan, err := Compute(inv, roots, tc.policy, now)
			if err != nil {
				t.Fatal(err)
			}
			byKey := map[string]string{}
			for n := range tc.items {
				byKey[hash(n)+".narinfo"] = n
			}
			for n := range tc.orphans {
				byKey[narKeyOf(n)] = n
			}
			for n, it := range tc.items {
				if it.nar != "" {
					byKey[narKeyOf(it.nar)] = it.nar
				} else {
					byKey[narKeyOf(n)] = n
				}
			}
			got := func(as []Action, kind Kind) map[string]Reason {
				m := map[string]Reason{}
				for _, a := range as {
					if a.Kind != kind {
						t.Errorf("%s: kind %s, want %s", a.Key, a.Kind, kind)
					}
					m[byKey[a.Key]] = a.Reason
				}
				return m
			}
			want := func(m map[string]Reason) map[string]Reason {
				if m == nil {
					return map[string]Reason{}
				}
				return m
			}
			if d := cmp.Diff(want(tc.narInfos), got(plan.DeleteNarInfos, KindNarInfo)); d != "" {
				t.Errorf("deleted narinfos (-want +got):\n%s", d)
			}
			if d := cmp.Diff(want(tc.nars), got(plan.DeleteNars, KindNar)); d != "" {
				t.Errorf("deleted nars (-want +got):\n%s", d)
			}
			if d := cmp.Diff(want(tc.reports), got(plan.Reports, KindNarInfo)); d != "" {
				t.Errorf("reports (-want +got):\n%s", d)
			}
			if tc.stats != nil {
				if d := cmp.Diff(*tc.stats, plan.Stats); d != "" {
					t.Errorf("stats (-want +got):\n%s", d)
				}
			}
			checkInvariants(t, inv, plan)
		})
	}
}

// checkInvariants: no kept narinfo references a deleted one (unless the
// deleted one's nar is missing), no deleted nar is pointed at by a kept
// narinfo, and every deleted nar of deleted narinfos names them.
func checkInvariants(t *testing.T, inv *Inventory, plan *Plan) {
	t.Helper()
	deleted := map[string]Reason{}
	for _, a := range plan.DeleteNarInfos {
		deleted[a.Key] = a.Reason
	}
	deletedNars := map[string]bool{}
	for _, a := range plan.DeleteNars {
		deletedNars[a.Key] = true
	}
	for _, ni := range inv.NarInfos {
		if _, gone := deleted[ni.Key]; gone {
			continue
		}
		for _, r := range ni.References {
			if why, gone := deleted[HashPart(r)+".narinfo"]; gone && why != ReasonMissingNar {
				t.Errorf("kept %s references deleted %s", ni.StorePath, r)
			}
		}
		if deletedNars[ni.URL] {
			t.Errorf("kept %s points at deleted nar %s", ni.StorePath, ni.URL)
		}
	}
	for _, a := range plan.DeleteNars {
		for _, k := range a.NarInfos {
			if _, gone := deleted[k]; !gone {
				t.Errorf("nar %s lists %s, which is not deleted", a.Key, k)
			}
		}
	}
}

// TestUnrootAcceptance walks the acceptance case through time: A → B → C
// published at t0, rooted by A; then A is unrooted.
func TestUnrootAcceptance(t *testing.T) {
	t0 := now
	inv := &Inventory{}
	for _, it := range []struct{ name, ref string }{{"a", "b"}, {"b", "c"}, {"c", ""}} {
		ni := NarInfo{Key: hash(it.name) + ".narinfo", StorePath: path_(it.name), URL: narKeyOf(it.name), LastModified: t0}
		if it.ref != "" {
			ni.References = []string{base(it.ref)}
		}
		inv.NarInfos = append(inv.NarInfos, ni)
		inv.Nars = append(inv.Nars, Nar{Key: narKeyOf(it.name), LastModified: t0})
	}
	steps := map[string]struct {
		at      time.Time
		roots   []string
		deleted int
	}{
		"rooted, long after":          {at: t0.Add(100 * grace), roots: []string{path_("a")}, deleted: 0},
		"unrooted, before the grace":  {at: t0.Add(grace - time.Nanosecond), deleted: 0},
		"unrooted, after the grace":   {at: t0.Add(grace + time.Minute), deleted: 3},
		"unrooted, at once":           {at: t0, deleted: 0},
		"rooted by C only, after all": {at: t0.Add(2 * grace), roots: []string{path_("c")}, deleted: 2},
	}
	for name, s := range steps {
		t.Run(name, func(t *testing.T) {
			plan, err := Compute(inv, s.roots, Policy{Mode: ModeRoots, Grace: grace}, s.at)
			if err != nil {
				t.Fatal(err)
			}
			if len(plan.DeleteNarInfos) != s.deleted || len(plan.DeleteNars) != s.deleted {
				t.Errorf("deletes %d narinfos and %d nars, want %d each", len(plan.DeleteNarInfos), len(plan.DeleteNars), s.deleted)
			}
		})
	}
}

func TestComputeErrors(t *testing.T) {
	cases := map[string]Policy{
		"bad glob":         {Grace: grace, Keep: RootSelector{NameGlobs: []string{"[a-"}}},
		"negative grace":   {Grace: -time.Second},
		"negative max age": {Grace: grace, Keep: RootSelector{MaxAge: -time.Hour}},
		"unknown mode":     {Grace: grace, Mode: "everything"},
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Compute(&Inventory{}, nil, p, now); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// TestZeroPolicyDeletesNoSubstitute: a Policy nobody set a mode on is the
// orphans policy, so forgetting the mode never deletes a substitute.
func TestZeroPolicyDeletesNoSubstitute(t *testing.T) {
	inv := inventory(map[string]item{"a": {age: old}}, map[string]time.Duration{"crashed": old})
	plan, err := Compute(inv, nil, Policy{Grace: grace}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.DeleteNarInfos) != 0 || len(plan.DeleteNars) != 1 || plan.DeleteNars[0].Reason != ReasonOrphan {
		t.Errorf("plan deletes narinfos %+v and nars %+v; want only the orphan nar", plan.DeleteNarInfos, plan.DeleteNars)
	}
}

// TestWhy: each deletion says why, with its age against the grace and the
// age rule.
func TestWhy(t *testing.T) {
	inv := inventory(map[string]item{
		"gone":    {age: 48 * time.Hour},
		"missing": {age: old, noNar: true},
	}, map[string]time.Duration{"crashed": 30 * time.Hour})
	plan, err := Compute(inv, nil, Policy{Mode: ModeRoots, Grace: grace, Keep: RootSelector{MaxAge: 36 * time.Hour}}, now)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range append(plan.DeleteNarInfos, plan.DeleteNars...) {
		got[string(a.Reason)] = plan.Why(a)
	}
	want := map[string]string{
		"unreachable":    "no kept root reaches it (policy roots); published 2026-11-22T12:00:00Z (48h0m0s ago), older than the grace (24h0m0s) and the keep max age (36h0m0s)",
		"missing-nar":    "its nar " + narKeyOf("missing") + " is not in the bucket, and no kept root reaches it",
		"orphan":         "no narinfo names it; uploaded 2026-11-23T06:00:00Z (30h0m0s ago), older than the grace (24h0m0s)",
		"nar-of-deleted": "only narinfos this run deletes point at it (" + hash("gone") + ".narinfo); uploaded 2026-11-22T12:00:00Z (48h0m0s ago)",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeOrphans, "orphans": ModeOrphans, "roots": ModeRoots} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("age"); err == nil {
		t.Error("ParseMode(age): no error")
	}
}

func TestParseRootsList(t *testing.T) {
	list := "# the 2026.1 release\n\n" + path_("guile") + "\n  " + base("hello") + "  \n"
	got, err := ParseRootsList(strings.NewReader(list), "roots")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{path_("guile"), base("hello")}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	_, err = ParseRootsList(strings.NewReader(path_("guile")+"\nguile\n"), "s3://b/gc/roots")
	if err == nil || !strings.Contains(err.Error(), "s3://b/gc/roots line 2") {
		t.Errorf("a bad line: %v, want an error naming the list and the line", err)
	}
}

func TestHashPart(t *testing.T) {
	h := hash("x")
	cases := map[string]string{
		"/gnu/store/" + h + "-hello": h,
		h + "-hello":                 h,
		h + ".narinfo":               h,
		h:                            h,
		"short":                      "",
		h + "xhello":                 "",
	}
	for in, want := range cases {
		if got := HashPart(in); got != want {
			t.Errorf("HashPart(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMultiRoots(t *testing.T) {
	boom := errors.New("apiserver unreachable")
	cases := map[string]struct {
		roots   MultiRoots
		want    []string
		wantErr bool
	}{
		"union": {roots: MultiRoots{StaticRoots{"a", "b"}, nil, RootsFunc(func(context.Context) ([]string, error) { return []string{"c"}, nil })}, want: []string{"a", "b", "c"}},
		"an error fails the whole": {
			roots:   MultiRoots{StaticRoots{"a"}, RootsFunc(func(context.Context) ([]string, error) { return nil, boom })},
			wantErr: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := tc.roots.Roots(context.Background())
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}
