package gc

import (
	"math/rand/v2"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// distribution builds an inventory shaped like a distribution's: item i
// references a few popular low-level items (glibc, gcc:lib, bash: low
// indices, drawn with a strong skew) and some recent neighbours, about 8
// references on average, a tenth refer to themselves; ages spread over a
// year; 1% of the nars are orphans and 2% of narinfos share a nar. The
// newest 5% are rooted (live Builds).
func distribution(n int) (*Inventory, []string) {
	rng := rand.New(rand.NewPCG(1, 2))
	inv := &Inventory{NarInfos: make([]NarInfo, n), Nars: make([]Nar, 0, n+n/100)}
	bases := make([]string, n)
	for i := range n {
		bases[i] = hash(strconv.Itoa(i)) + "-pkg-" + strconv.Itoa(i)
	}
	year := 365 * 24 * time.Hour
	for i := range n {
		k := rng.IntN(17) // 0..16, mean 8
		refs := make([]string, 0, k+1)
		for range k {
			var j int
			if i == 0 {
				break
			}
			if rng.IntN(2) == 0 {
				u := rng.Float64()
				j = int(float64(i) * u * u * u * u) // popular: strongly skewed to 0
			} else {
				j = i - 1 - rng.IntN(min(i, 200)) // recent neighbours
			}
			refs = append(refs, bases[j])
		}
		if rng.IntN(10) == 0 {
			refs = append(refs, bases[i])
		}
		age := time.Duration(float64(year) * float64(n-i) / float64(n))
		narKey := "nar/zstd/" + hash("nar"+strconv.Itoa(i)) + ".nar.zst"
		if i > 0 && rng.IntN(50) == 0 {
			narKey = inv.NarInfos[i-1].URL
		} else {
			inv.Nars = append(inv.Nars, Nar{Key: narKey, Size: 1 << 20, LastModified: now.Add(-age)})
		}
		inv.NarInfos[i] = NarInfo{
			Key: bases[i][:HashLen] + ".narinfo", StorePath: "/gnu/store/" + bases[i],
			References: refs, URL: narKey, Size: 600, LastModified: now.Add(-age),
		}
	}
	for i := range n / 100 {
		inv.Nars = append(inv.Nars, Nar{Key: "nar/zstd/" + hash("orphan"+strconv.Itoa(i)) + ".nar.zst", Size: 1 << 20, LastModified: now.Add(-time.Duration(i) * time.Minute)})
	}
	var roots []string
	for i := n - n/20; i < n; i++ {
		roots = append(roots, "/gnu/store/"+bases[i])
	}
	return inv, roots
}

// baseline is the least any plan costs: index the narinfos and the nars,
// and look every reference and URL up once.
func baseline(inv *Inventory) int {
	byHash := make(map[string]int32, len(inv.NarInfos))
	for i := range inv.NarInfos {
		byHash[HashPart(inv.NarInfos[i].Key)] = int32(i)
	}
	nars := make(map[string]int32, len(inv.Nars))
	for i := range inv.Nars {
		nars[inv.Nars[i].Key] = int32(i)
	}
	found := 0
	for i := range inv.NarInfos {
		for _, r := range inv.NarInfos[i].References {
			if _, ok := byHash[HashPart(r)]; ok {
				found++
			}
		}
		if _, ok := nars[inv.NarInfos[i].URL]; ok {
			found++
		}
	}
	return found
}

// BenchmarkGCPlan1M: Compute over 1,000,000 narinfos, against the baseline
// (index + one lookup per reference) measured in the same run.
func BenchmarkGCPlan1M(b *testing.B) {
	const n = 1_000_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	inv, roots := distribution(n)
	runtime.GC()
	runtime.ReadMemStats(&after)
	invMiB := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)

	policy := Policy{Mode: ModeRoots, Grace: 24 * time.Hour, Keep: RootSelector{NameGlobs: []string{"pkg-1234*"}}}
	// The baseline runs before each plan, so both see the same machine
	// load; CPU time (getrusage) is reported besides wall time because the
	// test machine is shared.
	var plan *Plan
	var baseWall, planWall, baseCPU, planCPU time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		w0, c0 := time.Now(), cpuTime()
		baseline(inv)
		baseWall, baseCPU = baseWall+time.Since(w0), baseCPU+cpuTime()-c0
		b.StartTimer()
		w0, c0 = time.Now(), cpuTime()
		var err error
		if plan, err = Compute(inv, roots, policy, now); err != nil {
			b.Fatal(err)
		}
		planWall, planCPU = planWall+time.Since(w0), planCPU+cpuTime()-c0
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(planWall), "plan-ms")
	b.ReportMetric(ms(baseWall), "baseline-ms")
	b.ReportMetric(float64(planWall)/float64(baseWall), "x-baseline")
	b.ReportMetric(ms(planCPU), "plan-cpu-ms")
	b.ReportMetric(float64(planCPU)/float64(baseCPU), "x-baseline-cpu")
	b.ReportMetric(invMiB, "inventory-MiB")
	b.ReportMetric(float64(plan.Stats.KeptNarInfos), "kept")
	b.ReportMetric(float64(len(plan.DeleteNarInfos)), "del-narinfos")
	b.ReportMetric(float64(len(plan.DeleteNars)), "del-nars")
}
