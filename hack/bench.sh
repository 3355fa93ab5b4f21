#!/usr/bin/env bash
# Runs the benchmarks `make bench` reports, once each, and prints one line per figure:
#   name value unit (baseline, ratio)
# (hack/benchfmt holds the table of figures and baselines; docs/benchmarks.md explains them.)
# The raw `go test` output is kept in .cache/bench/raw.txt.
#
# A benchmark that does not exist (yet) or skips is printed as missing; the script fails only
# when a benchmark run itself fails (or a package with benchmarks does not build).
# Env: KUBEBUILDER_ASSETS and GUIXFARM_TOOLS_BIN (exported by the Makefile; both default to
# .cache/tools/bin). BENCH_FILTER=regexp runs only the packages whose path matches it.
set -uo pipefail
export GOTOOLCHAIN=local
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
export GUIXFARM_TOOLS_BIN=${GUIXFARM_TOOLS_BIN:-$ROOT/.cache/tools/bin}
export KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-$GUIXFARM_TOOLS_BIN}

OUT=$ROOT/.cache/bench
RAW=$OUT/raw.txt
mkdir -p "$OUT"
: > "$RAW"
failed=()

# bench PKG REGEX BENCHTIME [TIMEOUT]: one `go test -bench` run of a package, appended to RAW.
bench() {
  local pkg=$1 re=$2 benchtime=$3 timeout=${4:-10m}
  echo "### pkg $pkg" >> "$RAW"
  if [ -n "${BENCH_FILTER:-}" ] && ! [[ $pkg =~ $BENCH_FILTER ]]; then
    echo "skipping: not run (BENCH_FILTER=$BENCH_FILTER)" >> "$RAW"
    return
  fi
  if ! compgen -G "$pkg/*_test.go" > /dev/null; then
    echo "skipping: $pkg has no tests yet" >> "$RAW"
    return
  fi
  echo "hack/bench: go test $pkg -bench '$re' -benchtime=$benchtime" >&2
  if ! go test -v -run '^$' -bench "$re" -benchtime="$benchtime" -benchmem -timeout "$timeout" "$pkg" >> "$RAW" 2>&1; then
    failed+=("$pkg")
    echo "hack/bench: FAILED: go test $pkg -bench '$re' (see $RAW)" >&2
  fi
}

# One op of a full plan is meaningful (it is ~0.3 s); a re-plan is a few ms, so 200 of them.
bench ./internal/planner '^BenchmarkPlan100k$' 1x
bench ./internal/planner '^BenchmarkReplanAfterFinish100k$/^derivation-ordered$' 200x
# Allocation hysteresis: a 3,000-step trace, with and without the keep band, ~0.1 s.
bench ./internal/planner '^BenchmarkAllocationChurn$' 1x
# Issue 9's autoscaling: a simulation of 10-minute traces with a fake clock, tens of ms per op.
bench ./internal/autoscale '^BenchmarkAutoscaleBurstyTrace$' 1x
# Signatures take tens of µs: 200 ops (their ratio metrics time the baseline as many times).
bench ./internal/signing '^(BenchmarkGuixSign|BenchmarkGuixVerify)$' 200x
bench ./internal/narinfo '^BenchmarkNarinfoSignBoth$' 200x
# One op each: 500 Builds through a real apiserver; an etcd read; 1 GiB closures.
bench ./test/integration '^(BenchmarkThroughput|BenchmarkEtcdBytesPerBuild|BenchmarkSampleDAGFarm|BenchmarkBucketLookups10k|BenchmarkAutoscaleFirstScale)$' 1x 20m
# The cold start and warm restart of a 10,000-Build queue with agents waiting (issue 11);
# GUIXFARM_RESTART_BUILDS=100000 for a distribution's queue (about 15 minutes more).
bench ./test/integration '^BenchmarkControllerRestart$' 1x 40m
bench ./internal/availability '^BenchmarkOwnerMemory1M$' 1x 10m
bench ./internal/bucket '^(BenchmarkPublishClosure1GiB|BenchmarkNixCopy1GiB|BenchmarkPlainUpload1GiB|BenchmarkPublishClosure1000Small|BenchmarkNixCopy1000Small|BenchmarkVerifyUploaded128MiB)$' 1x 60m
bench ./internal/daemon '^(BenchmarkDaemonNarExport1GiB|BenchmarkNixStoreDump1GiB)$' 1x 20m
# The agent's overhead is tens of ms per op: 5 ops. The 1,000-item publication and the sample
# DAG (both ways) are seconds each: one.
bench ./agent/daemonbuilder '^BenchmarkAgentOverhead$' 5x 20m
bench ./agent/daemonbuilder '^(BenchmarkAgentPublish1000Small|BenchmarkAgentPublish1000SmallRemote|BenchmarkSampleDAG)$' 1x 20m

go run ./hack/benchfmt < "$RAW" || exit 2
if [ ${#failed[@]} -gt 0 ]; then
  echo "hack/bench: benchmark runs failed in: ${failed[*]} (raw output: $RAW)" >&2
  exit 1
fi
