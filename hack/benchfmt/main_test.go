package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const header = "goos: linux\ngoarch: amd64\npkg: example.com/p\ncpu: Some CPU\n"

func TestParse(t *testing.T) {
	cases := map[string]struct {
		raw     string
		results map[string]result
		skipped map[string]string
		failed  map[string]bool
		notes   map[string]string
	}{
		"custom metrics, B/op, procs suffix dropped": {
			raw: header + "BenchmarkPlan100k/derivation-ordered-2         \t       1\t 307000000 ns/op\t       318.0 cpu-ms/op\t        77.98 heap-MiB\t57298056 B/op\t  265150 allocs/op\nPASS\n",
			results: map[string]result{"BenchmarkPlan100k/derivation-ordered": {pkg: "example.com/p", metrics: map[string]float64{
				"ns/op": 307000000, "cpu-ms/op": 318, "heap-MiB": 77.98, "B/op": 57298056, "allocs/op": 265150}}},
		},
		"GOMAXPROCS=1: no suffix; MB/s": {
			raw: header + "BenchmarkNixCopy1GiB   \t       1\t5000000000 ns/op\t 214.75 MB/s\t 30.5 peak-RSS-MiB\n",
			results: map[string]result{"BenchmarkNixCopy1GiB": {pkg: "example.com/p", metrics: map[string]float64{
				"ns/op": 5e9, "MB/s": 214.75, "peak-RSS-MiB": 30.5}}},
		},
		"-v name lines, logs and child output before the figures": {
			raw: header + "BenchmarkThroughput\nchild says hi\n    bench_test.go:40: a log line\nBenchmarkThroughput-2 \t 1\t 9000000000 ns/op\t 120.5 builds/s\t 800 updates/s\n",
			results: map[string]result{"BenchmarkThroughput": {pkg: "example.com/p", metrics: map[string]float64{
				"ns/op": 9e9, "builds/s": 120.5, "updates/s": 800}}},
		},
		"figures on a line of their own after the name": {
			raw:     header + "BenchmarkX-2   \tnoise from a child\n       1\t  42 ns/op\n",
			results: map[string]result{"BenchmarkX": {pkg: "example.com/p", metrics: map[string]float64{"ns/op": 42}}},
		},
		"skipped, with its reason (logged before --- SKIP under -v)": {
			raw:     header + "BenchmarkNixCopy1GiB\n    bench_test.go:12: nix-daemon not found: run hack/tools.sh nix\n--- SKIP: BenchmarkNixCopy1GiB\n",
			skipped: map[string]string{"BenchmarkNixCopy1GiB": "skipped: nix-daemon not found: run hack/tools.sh nix"},
		},
		"failed": {
			raw:    header + "BenchmarkBoom\n    b_test.go:3: boom\n--- FAIL: BenchmarkBoom\nFAIL\n",
			failed: map[string]bool{"BenchmarkBoom": true},
		},
		"a package that ran nothing says why": {
			raw:   "### pkg ./test/integration\nskipping integration tests: no kube-apiserver in .cache/tools/bin\nok  \tx\t0.1s\n",
			notes: map[string]string{"./test/integration": "skipping integration tests: no kube-apiserver in .cache/tools/bin"},
		},
		"several packages; the pkg line follows": {
			raw: "### pkg ./a\n" + header + "BenchmarkA-2 \t 1\t 1 ns/op\n### pkg ./b\ngoos: linux\npkg: example.com/b\nBenchmarkB-2 \t 1\t 2 ns/op\n",
			results: map[string]result{
				"BenchmarkA": {pkg: "example.com/p", metrics: map[string]float64{"ns/op": 1}},
				"BenchmarkB": {pkg: "example.com/b", metrics: map[string]float64{"ns/op": 2}},
			},
		},
		"the --- BENCH log block of a result is not a figure": {
			raw:     header + "BenchmarkLog-2 \t 1\t 812.0 ns/op\n--- BENCH: BenchmarkLog-2\n    s_test.go:8: 3 things\n",
			results: map[string]result{"BenchmarkLog": {pkg: "example.com/p", metrics: map[string]float64{"ns/op": 812}}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := parse(strings.NewReader(tc.raw))
			if err != nil {
				t.Fatal(err)
			}
			opts := []cmp.Option{cmp.AllowUnexported(result{}), cmpopts.EquateEmpty()}
			if diff := cmp.Diff(tc.results, got.results, opts...); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.skipped, got.skipped, opts...); diff != "" {
				t.Errorf("skipped (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.failed, got.failed, opts...); diff != "" {
				t.Errorf("failed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.notes, got.notes, opts...); diff != "" {
				t.Errorf("notes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLine(t *testing.T) {
	res := func(m map[string]float64) result { return result{metrics: m} }
	r := run{
		results: map[string]result{
			"BenchmarkPlan100k/derivation-ordered": res(map[string]float64{"ns/op": 307e6, "heap-MiB": 78, "B/op": 60 << 20}),
			"BenchmarkPlan100k/basic":              res(map[string]float64{"ns/op": 400e6}),
			"BenchmarkGuixSign":                    res(map[string]float64{"ns/op": 65400, "x_ed25519_sign": 2.94}),
			"BenchmarkThroughput":                  res(map[string]float64{"builds/s": 120, "updates/s": 800}),
			"BenchmarkPublishClosure1GiB":          res(map[string]float64{"MB/s": 300}),
			"BenchmarkAutoscaleBurstyTrace":        res(map[string]float64{"scale-changes": 1.4, "naive-scale-changes": 13.5}),
		},
		skipped: map[string]string{"BenchmarkNixCopy1GiB": "skipped: no nix-daemon"},
		failed:  map[string]bool{"BenchmarkEtcdBytesPerBuild": true},
		notes:   map[string]string{},
	}
	byName := map[string]figure{}
	for _, f := range table {
		byName[f.name] = f
	}
	cases := map[string]struct {
		figure figure
		want   string
	}{
		"against a target": {
			figure: byName["plan100k.time"],
			want:   "plan100k.time 0.307 s/op (target 1 s/op, ratio 0.307)",
		},
		"against another benchmark of the same run": {
			figure: byName["plan100k.time.vs-basic"],
			want:   "plan100k.time.vs-basic 0.307 s/op (BenchmarkPlan100k/basic 0.4 s/op, ratio 0.767)",
		},
		"B/op in MiB": {
			figure: byName["plan100k.alloc"],
			want:   "plan100k.alloc 60 MiB/op (target 1024 MiB/op, ratio 0.0586)",
		},
		"a ratio the benchmark reports itself": {
			figure: byName["signing.guix-sign"],
			want:   "signing.guix-sign 65.4 µs/op (Nix ed25519 sign 22.2 µs/op, ratio 2.94)",
		},
		"a baseline metric of the same benchmark, in its own unit": {
			figure: byName["throughput"],
			want:   "throughput 120 builds/s (plain status updates 800 updates/s, ratio 0.15)",
		},
		"a published reference": {
			figure: byName["throughput.vs-kueue"],
			want:   "throughput.vs-kueue 120 builds/s (kueue published, other hardware 43 admissions/s, ratio 2.79)",
		},
		"a baseline metric of the same benchmark, in the figure's unit": {
			figure: byName["autoscale.scale-changes"],
			want:   "autoscale.scale-changes 1.4 changes (naive scaler 13.5 changes, ratio 0.104)",
		},
		"baseline skipped": {
			figure: byName["publish.speed"],
			want:   "publish.speed 300 MB/s (BenchmarkNixCopy1GiB: missing (benchmark BenchmarkNixCopy1GiB skipped: no nix-daemon))",
		},
		"baseline not written yet": {
			figure: byName["publish.speed.vs-plain"],
			want:   "publish.speed.vs-plain 300 MB/s (BenchmarkPlainUpload1GiB: missing (benchmark BenchmarkPlainUpload1GiB not found))",
		},
		"metric not reported": {
			figure: byName["publish.rss"],
			want:   "publish.rss: missing (benchmark BenchmarkPublishClosure1GiB reports no peak-RSS-MiB)",
		},
		"benchmark absent": {
			figure: byName["replan100k.time"],
			want:   "replan100k.time: missing (benchmark BenchmarkReplanAfterFinish100k/derivation-ordered not found)",
		},
		"benchmark failed": {
			figure: byName["etcd.bytes-per-build"],
			want:   "etcd.bytes-per-build: failed (benchmark BenchmarkEtcdBytesPerBuild failed)",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if tc.figure.name == "" {
				t.Fatal("no such figure in the table")
			}
			if got := line(r, tc.figure); got != tc.want {
				t.Errorf("line =\n  %s\nwant\n  %s", got, tc.want)
			}
		})
	}
}

func TestNum(t *testing.T) {
	cases := map[float64]string{0.307: "0.307", 1: "1", 22.24: "22.2", 1024: "1024", 0.0586: "0.0586", 2.5e9: "2.5e+09", 0: "0"}
	for v, want := range cases {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}
