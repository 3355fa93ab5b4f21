package bucketgc

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/guixfarm/guix-farm/internal/gc"
)

func TestReportWriteTo(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cases := map[string]struct {
		dryRun bool
		add    []struct {
			a gc.Action
			w string
			o Outcome
			n string
		}
		want string
	}{
		"lines sorted by outcome, kind, key": {
			add: []struct {
				a gc.Action
				w string
				o Outcome
				n string
			}{
				{gc.Action{Kind: gc.KindNar, Key: "nar/zstd/b.nar.zst", Reason: gc.ReasonOrphan, Size: 100}, "no narinfo names it", OutcomeDeleted, ""},
				{gc.Action{Kind: gc.KindNarInfo, Key: "m.narinfo", Reason: gc.ReasonMissingNar, StorePath: "/gnu/store/m-x", Size: 3}, "", OutcomeReported, ""},
				{gc.Action{Kind: gc.KindNarInfo, Key: "z.narinfo", Reason: gc.ReasonUnreachable, StorePath: "/gnu/store/z-y", Size: 5}, "", OutcomeDeleted, ""},
				{gc.Action{Kind: gc.KindNarInfo, Key: "a.narinfo", Reason: gc.ReasonUnreachable, StorePath: "/gnu/store/a-y", Size: 7}, "", OutcomeSkipped, "changed since the listing"},
				{gc.Action{Kind: gc.KindNar, Key: "nar/zstd/a.nar.zst", Reason: gc.ReasonNarOfDeleted, Size: 10}, "", OutcomeDeleted, ""},
			},
			want: `gc run bucket=b policy=roots started=2026-11-24T12:00:00Z finished=2026-11-24T12:01:00Z
deleted narinfo z.narinfo unreachable /gnu/store/z-y size=5
deleted nar nar/zstd/a.nar.zst nar-of-deleted size=10
deleted nar nar/zstd/b.nar.zst orphan size=100 why="no narinfo names it"
skipped narinfo a.narinfo unreachable /gnu/store/a-y size=7 note="changed since the listing"
report narinfo m.narinfo missing-nar /gnu/store/m-x size=3
summary narinfos=0 nars=0 roots=0 roots-unmatched=0 kept-narinfos=0 kept-nars=0 kept-nar-bytes=0 deleted-narinfos=1 deleted-nars=2 deleted-bytes=115 orphans=1 missing-nars=0 missing-nars-deleted=0 unreadable=0 dangling-references=0 skipped=1 failed=0 rescued=0
`,
		},
		"empty dry run": {
			dryRun: true,
			want: `gc dry-run bucket=b policy=roots started=2026-11-24T12:00:00Z finished=2026-11-24T12:01:00Z
summary narinfos=0 nars=0 roots=0 roots-unmatched=0 kept-narinfos=0 kept-nars=0 kept-nar-bytes=0 deleted-narinfos=0 deleted-nars=0 deleted-bytes=0 orphans=0 missing-nars=0 missing-nars-deleted=0 unreadable=0 dangling-references=0 skipped=0 failed=0 rescued=0
`,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := &Report{Bucket: "b", DryRun: tc.dryRun, Mode: gc.ModeRoots, Started: t0, Finished: t0.Add(time.Minute)}
			for _, x := range tc.add {
				r.add(x.a, x.w, x.o, x.n)
			}
			r.finish()
			var b strings.Builder
			n, err := r.WriteTo(&b)
			if err != nil || n != int64(b.Len()) {
				t.Fatalf("WriteTo = %d, %v; wrote %d", n, err, b.Len())
			}
			if d := cmp.Diff(tc.want, b.String()); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestMetricsObserve(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	r := &Report{Started: t0, Finished: t0.Add(time.Minute), Stats: gc.Stats{NarInfos: 3, KeptNarInfos: 2, MissingNars: 1}}
	r.add(gc.Action{Kind: gc.KindNarInfo, Key: "x.narinfo", Reason: gc.ReasonUnreachable, Size: 500}, "", OutcomeDeleted, "")
	r.add(gc.Action{Kind: gc.KindNar, Key: "nar/x", Reason: gc.ReasonOrphan, Size: 1500}, "", OutcomeDeleted, "")
	m.Observe(r, nil)
	m.Observe(nil, errors.New("bucket unreachable"))
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{
		"deleted bytes":       value(t, m.DeletedBytes),
		"deleted narinfos":    value(t, m.Deleted.WithLabelValues("narinfo", "unreachable")),
		"deleted orphan nars": value(t, m.Deleted.WithLabelValues("nar", "orphan")),
		"kept narinfos":       value(t, m.KeptNarInfos),
		"missing nars":        value(t, m.MissingNars),
		"ok runs":             value(t, m.Runs.WithLabelValues("ok")),
		"failed runs":         value(t, m.Runs.WithLabelValues("error")),
		"last success":        value(t, m.LastSuccess),
	}
	want := map[string]float64{
		"deleted bytes": 2000, "deleted narinfos": 1, "deleted orphan nars": 1, "kept narinfos": 2,
		"missing nars": 1, "ok runs": 1, "failed runs": 1, "last success": float64(t0.Add(time.Minute).Unix()),
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("%v is neither a counter nor a gauge", m.Desc())
	return 0
}
