package bucketgc

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/guixfarm/guix-farm/internal/gc"
)

// Outcome of one object in a run.
type Outcome string

const (
	OutcomeWouldDelete Outcome = "would-delete" // dry run
	OutcomeDeleted     Outcome = "deleted"
	// OutcomeSkipped: planned, but the re-check kept it (re-published,
	// already gone, its narinfo was kept).
	OutcomeSkipped Outcome = "skipped"
	OutcomeFailed  Outcome = "failed"
	// OutcomeReported: a problem that is not deleted (missing nar without
	// DeleteMissingNar, unreadable narinfo).
	OutcomeReported Outcome = "report"
)

// Line is one object of the report.
type Line struct {
	Outcome   Outcome
	Kind      gc.Kind
	Key       string
	Reason    gc.Reason
	StorePath string
	Size      int64
	// Why says why the plan deletes (or reports) it: orphan, unreachable
	// and how old, nar of which deleted narinfos (gc.Plan.Why).
	Why string
	// Note says why an object was skipped or failed, or what is wrong.
	Note string
}

// Report is what a run did (or, in a dry run, would do). Its counts are
// meant for metrics; in a dry run Deleted* count what would be deleted.
type Report struct {
	Bucket string
	DryRun bool
	// Mode is the run's policy: orphans or roots.
	Mode              gc.Mode
	Started, Finished time.Time
	// Stats are the plan's (kept, roots, missing nars, ...).
	Stats gc.Stats

	DeletedNarInfos int
	DeletedNars     int
	// DeletedBytes: the sizes of deleted narinfos and nars.
	DeletedBytes int64
	// Orphans: nars deleted that no narinfo pointed at.
	Orphans int
	// MissingNarsDeleted: narinfos deleted because their nar was missing.
	MissingNarsDeleted int
	Skipped, Failed    int
	// Rescued: narinfos published during the run, added before deleting.
	Rescued int

	// Lines, in a stable order once the run returns: outcome groups as in
	// WriteTo, narinfos before nars, then by key.
	Lines []Line

	mu sync.Mutex
}

func (r *Report) add(a gc.Action, why string, o Outcome, note string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Lines = append(r.Lines, Line{Outcome: o, Kind: a.Kind, Key: a.Key, Reason: a.Reason, StorePath: a.StorePath, Size: a.Size, Why: why, Note: note})
	switch o {
	case OutcomeDeleted, OutcomeWouldDelete:
		r.DeletedBytes += a.Size
		if a.Kind == gc.KindNarInfo {
			r.DeletedNarInfos++
			if a.Reason == gc.ReasonMissingNar {
				r.MissingNarsDeleted++
			}
		} else {
			r.DeletedNars++
			if a.Reason == gc.ReasonOrphan {
				r.Orphans++
			}
		}
	case OutcomeSkipped:
		r.Skipped++
	case OutcomeFailed:
		r.Failed++
	}
}

var outcomeOrder = map[Outcome]int{OutcomeWouldDelete: 0, OutcomeDeleted: 0, OutcomeSkipped: 1, OutcomeFailed: 2, OutcomeReported: 3}

// finish sorts the lines.
func (r *Report) finish() {
	slices.SortFunc(r.Lines, func(a, b Line) int {
		if c := outcomeOrder[a.Outcome] - outcomeOrder[b.Outcome]; c != 0 {
			return c
		}
		if a.Kind != b.Kind {
			if a.Kind == gc.KindNarInfo {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Key, b.Key)
	})
}

// StorePaths returns the store paths of the narinfos deleted (or, in a dry
// run, that would be).
func (r *Report) StorePaths() []string {
	var out []string
	for _, l := range r.Lines {
		if l.Kind == gc.KindNarInfo && (l.Outcome == OutcomeDeleted || l.Outcome == OutcomeWouldDelete) && l.StorePath != "" {
			out = append(out, l.StorePath)
		}
	}
	return out
}

// LogLines logs each line of the report (what was, or would be, deleted
// and why) and its counts: a controller's dry run shows its plan this way.
func (r *Report) LogLines(log logr.Logger) {
	for _, l := range r.Lines {
		log.Info("gc "+string(l.Outcome), "kind", l.Kind, "key", l.Key, "reason", l.Reason, "storePath", l.StorePath,
			"size", l.Size, "why", l.Why, "note", l.Note)
	}
	log.Info("gc summary", "dryRun", r.DryRun, "policy", r.Mode, "deletedNarInfos", r.DeletedNarInfos, "deletedNars", r.DeletedNars,
		"deletedBytes", r.DeletedBytes, "keptNarInfos", r.Stats.KeptNarInfos, "roots", r.Stats.Roots, "skipped", r.Skipped, "failed", r.Failed)
}

// WriteTo writes the report for people: one line per object,
//
//	<outcome> <kind> <key> <reason> [<store path>] size=<bytes> [why=<...>] [note=<...>]
//
// then one summary line of key=value counts.
func (r *Report) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	mode := "run"
	if r.DryRun {
		mode = "dry-run"
	}
	fmt.Fprintf(&b, "gc %s bucket=%s policy=%s started=%s finished=%s\n", mode, r.Bucket, r.Mode,
		r.Started.UTC().Format(time.RFC3339), r.Finished.UTC().Format(time.RFC3339))
	for _, l := range r.Lines {
		fmt.Fprintf(&b, "%s %s %s %s", l.Outcome, l.Kind, l.Key, l.Reason)
		if l.StorePath != "" {
			fmt.Fprintf(&b, " %s", l.StorePath)
		}
		fmt.Fprintf(&b, " size=%d", l.Size)
		if l.Why != "" {
			fmt.Fprintf(&b, " why=%q", l.Why)
		}
		if l.Note != "" {
			fmt.Fprintf(&b, " note=%q", l.Note)
		}
		b.WriteByte('\n')
	}
	s := r.Stats
	fmt.Fprintf(&b, "summary narinfos=%d nars=%d roots=%d roots-unmatched=%d kept-narinfos=%d kept-nars=%d kept-nar-bytes=%d "+
		"deleted-narinfos=%d deleted-nars=%d deleted-bytes=%d orphans=%d missing-nars=%d missing-nars-deleted=%d "+
		"unreadable=%d dangling-references=%d skipped=%d failed=%d rescued=%d\n",
		s.NarInfos, s.Nars, s.Roots, s.RootsUnmatched, s.KeptNarInfos, s.KeptNars, s.KeptNarBytes,
		r.DeletedNarInfos, r.DeletedNars, r.DeletedBytes, r.Orphans, s.MissingNars, r.MissingNarsDeleted,
		s.Unreadable, s.DanglingReferences, r.Skipped, r.Failed, r.Rescued)
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}
