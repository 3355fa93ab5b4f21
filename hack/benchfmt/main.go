// Command benchfmt turns the raw output of hack/bench.sh (`go test -v -bench` runs,
// concatenated) into one line per figure:
//
//	name value unit (baseline, ratio)
//
// Each figure is read from a benchmark's metric and set next to its baseline: a target, a
// benchmark measured in the same run, or a ratio the benchmark reports itself. A benchmark
// that is absent (not written yet, skipped) is printed as missing; benchfmt never fails on
// that, only on unreadable input. See docs/benchmarks.md.
package main

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
)

// baseline is what a figure is compared with, in the figure's unit unless unit is set.
type baseline struct {
	label string
	// One of: a fixed value (a target or a published figure); a benchmark's metric from the
	// same run (bench, metric, converted with the figure's scale); or the figure's own ratio
	// metric (ratio = figure / baseline, as the benchmark measured it).
	value         float64
	bench, metric string
	ratio         string
	unit          string
}

// figure is one printed line.
type figure struct {
	name   string
	pkg    string // where the benchmark lives, for the missing message
	bench  string // benchmark name without the -GOMAXPROCS suffix
	metric string // unit in the go test output
	unit   string // printed unit
	scale  float64
	base   baseline
}

const (
	nsToS  = 1e-9
	nsToMs = 1e-6
	nsToUs = 1e-3
	bToMiB = 1.0 / (1 << 20)
)

var (
	plan100k       = "BenchmarkPlan100k/derivation-ordered"
	plan100kBasic  = "BenchmarkPlan100k/basic"
	targetTime     = baseline{label: "target", value: 1}
	targetMemory   = baseline{label: "target", value: 1024}
	planPkg        = "./internal/planner"
	integrationPkg = "./test/integration"
	restartBench   = "BenchmarkControllerRestart"
	bucketPkg      = "./internal/bucket"
	daemonPkg      = "./internal/daemon"
	builderPkg     = "./agent/daemonbuilder"
	nixCopySmall   = baseline{label: "BenchmarkNixCopy1000Small", bench: "BenchmarkNixCopy1000Small", metric: "items/s"}
	autoscaleBench = "BenchmarkAutoscaleBurstyTrace"
	autoscalePkg   = "./internal/autoscale"
	// agentDirectSmall: the agent publishing with its own credentials and keys (BucketPublisher).
	agentDirectSmall = baseline{label: "BenchmarkAgentPublish1000Small (direct)", bench: "BenchmarkAgentPublish1000Small", metric: "items/s"}
)

// table is every figure `make bench` prints, in order.
var table = []figure{
	{name: "plan100k.time", pkg: planPkg, bench: plan100k, metric: "ns/op", unit: "s/op", scale: nsToS, base: targetTime},
	{name: "plan100k.time.vs-basic", pkg: planPkg, bench: plan100k, metric: "ns/op", unit: "s/op", scale: nsToS,
		base: baseline{label: plan100kBasic, bench: plan100kBasic, metric: "ns/op"}},
	{name: "plan100k.heap", pkg: planPkg, bench: plan100k, metric: "heap-MiB", unit: "MiB", scale: 1, base: targetMemory},
	{name: "plan100k.heap.vs-basic", pkg: planPkg, bench: plan100k, metric: "heap-MiB", unit: "MiB", scale: 1,
		base: baseline{label: plan100kBasic, bench: plan100kBasic, metric: "heap-MiB"}},
	{name: "plan100k.alloc", pkg: planPkg, bench: plan100k, metric: "B/op", unit: "MiB/op", scale: bToMiB, base: targetMemory},
	{name: "plan100k.alloc.vs-basic", pkg: planPkg, bench: plan100k, metric: "B/op", unit: "MiB/op", scale: bToMiB,
		base: baseline{label: plan100kBasic, bench: plan100kBasic, metric: "B/op"}},
	{name: "replan100k.time", pkg: planPkg, bench: "BenchmarkReplanAfterFinish100k/derivation-ordered", metric: "ns/op",
		unit: "ms/op", scale: nsToMs, base: baseline{label: "target", value: 10}},
	{name: "churn.withdrawals", pkg: planPkg, bench: "BenchmarkAllocationChurn", metric: "withdrawals/finished",
		unit: "withdrawals/build", scale: 1, base: baseline{label: "no keep band", bench: "BenchmarkAllocationChurn", metric: "nokeep-withdrawals/finished"}},
	{name: "churn.changes", pkg: planPkg, bench: "BenchmarkAllocationChurn", metric: "changes/finished",
		unit: "writes/build", scale: 1, base: baseline{label: "no keep band", bench: "BenchmarkAllocationChurn", metric: "nokeep-changes/finished"}},
	{name: "churn.inversions", pkg: planPkg, bench: "BenchmarkAllocationChurn", metric: "inversions",
		unit: "claims", scale: 1, base: baseline{label: "no keep band", bench: "BenchmarkAllocationChurn", metric: "nokeep-inversions"}},

	{name: "throughput", pkg: integrationPkg, bench: "BenchmarkThroughput", metric: "builds/s", unit: "builds/s", scale: 1,
		base: baseline{label: "plain status updates", bench: "BenchmarkThroughput", metric: "updates/s", unit: "updates/s"}},
	{name: "throughput.vs-kueue", pkg: integrationPkg, bench: "BenchmarkThroughput", metric: "builds/s", unit: "builds/s", scale: 1,
		base: baseline{label: "kueue published, other hardware", value: 43, unit: "admissions/s"}},
	{name: "etcd.bytes-per-build", pkg: integrationPkg, bench: "BenchmarkEtcdBytesPerBuild", metric: "bytes/build",
		unit: "bytes/build", scale: 1, base: baseline{label: "target", value: 1024}},

	{name: "publish.speed", pkg: bucketPkg, bench: "BenchmarkPublishClosure1GiB", metric: "MB/s", unit: "MB/s", scale: 1,
		base: baseline{label: "BenchmarkNixCopy1GiB", bench: "BenchmarkNixCopy1GiB", metric: "MB/s"}},
	{name: "publish.speed.vs-plain", pkg: bucketPkg, bench: "BenchmarkPublishClosure1GiB", metric: "MB/s", unit: "MB/s", scale: 1,
		base: baseline{label: "BenchmarkPlainUpload1GiB", bench: "BenchmarkPlainUpload1GiB", metric: "MB/s"}},
	{name: "publish.rss", pkg: bucketPkg, bench: "BenchmarkPublishClosure1GiB", metric: "peak-RSS-MiB", unit: "MiB", scale: 1,
		base: baseline{label: "target", value: 256}},

	{name: "publish.small", pkg: bucketPkg, bench: "BenchmarkPublishClosure1000Small", metric: "items/s", unit: "items/s",
		scale: 1, base: nixCopySmall},
	{name: "publish.small.agent", pkg: builderPkg, bench: "BenchmarkAgentPublish1000Small", metric: "items/s", unit: "items/s",
		scale: 1, base: nixCopySmall},
	{name: "publish.small.remote", pkg: builderPkg, bench: "BenchmarkAgentPublish1000SmallRemote/reread", metric: "items/s",
		unit: "items/s", scale: 1, base: agentDirectSmall},
	{name: "publish.small.remote-size-only", pkg: builderPkg, bench: "BenchmarkAgentPublish1000SmallRemote/size", metric: "items/s",
		unit: "items/s", scale: 1, base: agentDirectSmall},
	{name: "publish.verify", pkg: bucketPkg, bench: "BenchmarkVerifyUploaded128MiB/reread", metric: "MB/s", unit: "MB/s", scale: 1,
		base: baseline{label: "BenchmarkPublishClosure1GiB (upload)", bench: "BenchmarkPublishClosure1GiB", metric: "MB/s"}},
	{name: "publish.small.remote.commit", pkg: builderPkg, bench: "BenchmarkAgentPublish1000SmallRemote/reread", metric: "commit-ms",
		unit: "ms", scale: 1, base: baseline{label: "the whole publication", bench: "BenchmarkAgentPublish1000SmallRemote/reread", metric: "ms/op"}},
	{name: "daemon.nar-export", pkg: daemonPkg, bench: "BenchmarkDaemonNarExport1GiB", metric: "MiB/s", unit: "MiB/s", scale: 1,
		base: baseline{label: "BenchmarkNixStoreDump1GiB", bench: "BenchmarkNixStoreDump1GiB", metric: "MiB/s"}},
	{name: "agent.overhead", pkg: builderPkg, bench: "BenchmarkAgentOverhead", metric: "overhead-ms", unit: "ms", scale: 1,
		base: baseline{label: "the daemon's own build", bench: "BenchmarkAgentOverhead", metric: "daemon-build-ms"}},
	{name: "sample-dag.farm", pkg: integrationPkg, bench: "BenchmarkSampleDAGFarm", metric: "farm-s", unit: "s", scale: 1,
		base: baseline{label: "nix-store --realise -j 2, one daemon", bench: "BenchmarkSampleDAGFarm", metric: "nix-s"}},
	{name: "sample-dag.agents", pkg: builderPkg, bench: "BenchmarkSampleDAG", metric: "farm-s", unit: "s", scale: 1,
		base: baseline{label: "nix-store --realise -j 2, one daemon", bench: "BenchmarkSampleDAG", metric: "nix-s"}},

	// Issue 11's cold start and warm restart of a queue (10^4 in make bench; 10^5 with
	// GUIXFARM_RESTART_BUILDS=100000), against its targets.
	{name: "restart.first-plan", pkg: integrationPkg, bench: restartBench, metric: "first-plan-s", unit: "s",
		scale: 1, base: baseline{label: "creating the same Builds", bench: restartBench, metric: "create-s"}},
	{name: "restart.all-facts", pkg: integrationPkg, bench: restartBench, metric: "all-facts-s", unit: "s",
		scale: 1, base: baseline{label: "creating the same Builds", bench: restartBench, metric: "create-s"}},
	{name: "restart.writes-per-build", pkg: integrationPkg, bench: restartBench, metric: "writes/build", unit: "writes",
		scale: 1, base: baseline{label: "target", value: 1.1}},
	{name: "restart.events-per-build", pkg: integrationPkg, bench: restartBench, metric: "events/build", unit: "events",
		scale: 1, base: baseline{label: "target", value: 0.01}},
	{name: "restart.reconciles-per-build", pkg: integrationPkg, bench: restartBench, metric: "reconciles/build", unit: "reconciles",
		scale: 1, base: baseline{label: "target", value: 1.1}},
	{name: "restart.withdrawals", pkg: integrationPkg, bench: restartBench, metric: "withdrawals", unit: "withdrawals",
		scale: 1, base: baseline{label: "target", value: 5}},
	{name: "restart.rss", pkg: integrationPkg, bench: restartBench, metric: "peak-RSS-MiB", unit: "MiB",
		scale: 1, base: baseline{label: "target", value: 512}},
	{name: "restart.warm-first-plan", pkg: integrationPkg, bench: restartBench, metric: "warm-first-plan-s", unit: "s",
		scale: 1, base: baseline{label: "cold start", bench: restartBench, metric: "first-plan-s"}},
	{name: "restart.warm-writes-per-build", pkg: integrationPkg, bench: restartBench, metric: "warm-writes/build", unit: "writes",
		scale: 1, base: baseline{label: "target", value: 1.1}},
	{name: "restart.etcd-bytes-per-build", pkg: integrationPkg, bench: restartBench, metric: "etcd-bytes/build", unit: "bytes",
		scale: 1, base: baseline{label: "target", value: 1024}},
	{name: "restart.apiserver-per-build", pkg: integrationPkg, bench: restartBench, metric: "apiserver-KiB/build", unit: "KiB",
		scale: 1, base: baseline{label: "issue 11's 10^5 figure", value: 21}},
	{name: "availability.heap-1M", pkg: "./internal/availability", bench: "BenchmarkOwnerMemory1M", metric: "heap-MiB",
		unit: "MiB", scale: 1, base: baseline{label: "target", value: 256}},
	{name: "lookups10k.per-reference", pkg: integrationPkg, bench: "BenchmarkBucketLookups10k", metric: "lookups",
		unit: "lookups", scale: 1, base: baseline{label: "one per input reference", ratio: "x_per_reference"}},
	{name: "lookups10k.per-plan", pkg: integrationPkg, bench: "BenchmarkBucketLookups10k", metric: "lookups-per-plan",
		unit: "lookups/plan", scale: 1, base: baseline{label: "target", value: 0}},

	{name: "signing.guix-sign", pkg: "./internal/signing", bench: "BenchmarkGuixSign", metric: "ns/op", unit: "µs/op", scale: nsToUs,
		base: baseline{label: "Nix ed25519 sign", ratio: "x_ed25519_sign"}},
	{name: "signing.guix-verify", pkg: "./internal/signing", bench: "BenchmarkGuixVerify", metric: "ns/op", unit: "µs/op", scale: nsToUs,
		base: baseline{label: "Nix ed25519 verify", ratio: "x_ed25519_verify"}},
	{name: "narinfo.sign-both", pkg: "./internal/narinfo", bench: "BenchmarkNarinfoSignBoth", metric: "ns/op", unit: "µs/op", scale: nsToUs,
		base: baseline{label: "Nix-only signing", ratio: "x_nix_only"}},

	// Issue 9's autoscaling on simulated bursty queues, against a naive proportional scaler run on
	// the same traces (per 10-minute trace; fewer scale changes is better).
	// Issue 9: from 50 Builds queued to the pool's desired size written, through a real apiserver.
	{name: "autoscale.first-scale", pkg: integrationPkg, bench: "BenchmarkAutoscaleFirstScale", metric: "scale-s", unit: "s",
		scale: 1, base: baseline{label: "the planner knew all 50 Builds", bench: "BenchmarkAutoscaleFirstScale", metric: "facts-s"}},
	{name: "autoscale.first-scale.writes", pkg: integrationPkg, bench: "BenchmarkAutoscaleFirstScale", metric: "size-writes",
		unit: "writes", scale: 1, base: baseline{label: "target", value: 1}},
	{name: "autoscale.scale-changes", pkg: autoscalePkg, bench: autoscaleBench, metric: "scale-changes",
		unit: "changes", scale: 1, base: autoscaleNaive("naive-scale-changes")},
	{name: "autoscale.agent-seconds", pkg: autoscalePkg, bench: autoscaleBench, metric: "agent-seconds",
		unit: "agent-s", scale: 1, base: autoscaleNaive("naive-agent-seconds")},
	{name: "autoscale.mean-wait", pkg: autoscalePkg, bench: autoscaleBench, metric: "mean-wait-s",
		unit: "s", scale: 1, base: autoscaleNaive("naive-mean-wait-s")},
	{name: "autoscale.w60.scale-changes", pkg: autoscalePkg, bench: autoscaleBench, metric: "scale-changes-w60",
		unit: "changes", scale: 1, base: autoscaleNaive("naive-scale-changes")},
	{name: "autoscale.w60.agent-seconds", pkg: autoscalePkg, bench: autoscaleBench, metric: "agent-seconds-w60",
		unit: "agent-s", scale: 1, base: autoscaleNaive("naive-agent-seconds")},
	{name: "autoscale.w60.mean-wait", pkg: autoscalePkg, bench: autoscaleBench, metric: "mean-wait-s-w60",
		unit: "s", scale: 1, base: autoscaleNaive("naive-mean-wait-s")},
	{name: "autoscale.light.scale-changes", pkg: autoscalePkg, bench: autoscaleBench, metric: "scale-changes-light",
		unit: "changes", scale: 1, base: autoscaleNaive("naive-scale-changes-light")},
	{name: "autoscale.light.agent-seconds", pkg: autoscalePkg, bench: autoscaleBench, metric: "agent-seconds-light",
		unit: "agent-s", scale: 1, base: autoscaleNaive("naive-agent-seconds-light")},
	{name: "autoscale.light.mean-wait", pkg: autoscalePkg, bench: autoscaleBench, metric: "mean-wait-s-light",
		unit: "s", scale: 1, base: autoscaleNaive("naive-mean-wait-s-light")},
	{name: "autoscale.light.w60.scale-changes", pkg: autoscalePkg, bench: autoscaleBench, metric: "scale-changes-w60-light",
		unit: "changes", scale: 1, base: autoscaleNaive("naive-scale-changes-light")},
	{name: "autoscale.light.w60.agent-seconds", pkg: autoscalePkg, bench: autoscaleBench, metric: "agent-seconds-w60-light",
		unit: "agent-s", scale: 1, base: autoscaleNaive("naive-agent-seconds-light")},
	{name: "autoscale.light.w60.mean-wait", pkg: autoscalePkg, bench: autoscaleBench, metric: "mean-wait-s-w60-light",
		unit: "s", scale: 1, base: autoscaleNaive("naive-mean-wait-s-light")},
}

// autoscaleNaive is the naive proportional scaler's figure of BenchmarkAutoscaleBurstyTrace,
// run on the same traces.
func autoscaleNaive(metric string) baseline {
	return baseline{label: "naive scaler", bench: autoscaleBench, metric: metric}
}

func main() {
	r, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchfmt: reading go test output on stdin: %v\n", err)
		os.Exit(2)
	}
	for _, f := range table {
		fmt.Println(line(r, f))
	}
}

// line formats one figure: "name value unit (label baseline unit, ratio r)", or why it is
// missing.
func line(r run, f figure) string {
	res, ok := r.results[f.bench]
	if !ok {
		return f.name + ": " + absent(r, f.pkg, f.bench)
	}
	v, ok := res.metrics[f.metric]
	if !ok {
		return fmt.Sprintf("%s: missing (benchmark %s reports no %s)", f.name, f.bench, f.metric)
	}
	v *= f.scale
	head := fmt.Sprintf("%s %s %s", f.name, num(v), f.unit)
	b := f.base
	unit := f.unit
	if b.unit != "" {
		unit = b.unit
	}
	var bv float64
	switch {
	case b.ratio != "":
		ratio, ok := res.metrics[b.ratio]
		if !ok || ratio == 0 {
			return fmt.Sprintf("%s (%s: missing (benchmark %s reports no %s))", head, b.label, f.bench, b.ratio)
		}
		bv = v / ratio
	case b.bench != "":
		br, ok := r.results[b.bench]
		if !ok {
			return fmt.Sprintf("%s (%s: %s)", head, b.label, absent(r, f.pkg, b.bench))
		}
		x, ok := br.metrics[b.metric]
		if !ok {
			return fmt.Sprintf("%s (%s: missing (benchmark %s reports no %s))", head, b.label, b.bench, b.metric)
		}
		bv = x * f.scale
	default:
		bv = b.value
	}
	ratio := "n/a"
	if bv != 0 {
		ratio = num(v / bv)
	}
	return fmt.Sprintf("%s (%s %s %s, ratio %s)", head, b.label, num(bv), unit, ratio)
}

// absent says why a benchmark has no figures.
func absent(r run, pkg, bench string) string {
	switch {
	case r.failed[bench]:
		return fmt.Sprintf("failed (benchmark %s failed)", bench)
	case r.skipped[bench] != "":
		return fmt.Sprintf("missing (benchmark %s %s)", bench, r.skipped[bench])
	case r.notes[pkg] != "":
		return fmt.Sprintf("missing (benchmark %s not found; %s: %s)", bench, pkg, r.notes[pkg])
	}
	return fmt.Sprintf("missing (benchmark %s not found)", bench)
}

// num prints three significant digits, without exponents for ordinary magnitudes.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6 || (a < 1e-3 && a != 0):
		return strconv.FormatFloat(v, 'g', 3, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	s := strconv.FormatFloat(v, 'g', 3, 64)
	if strings.ContainsRune(s, 'e') {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return s
}
