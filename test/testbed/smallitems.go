package testbed

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// AddSmallItems adds n small store items shaped like a distribution's many small outputs
// (1–4 KiB of text each) through add (AddTextToStore on some daemon), and returns their paths.
// Item i > 0 refers to item (i-1)/2 (a binary tree) and, from item 10 on, to item 0 too (a libc
// every item needs); each reference is written into the text, so a reference scan finds it.
// Deterministic: the same n gives the same store paths. The publication benchmarks of the bucket
// and of the agent use it, so their figures are comparable.
func AddSmallItems(tb testing.TB, n int, add func(name string, text []byte, refs []string) (string, error)) []string {
	tb.Helper()
	r := rand.New(rand.NewPCG(1000, 1))
	words := strings.Fields("lib so bin share doc include pkgconfig usr local etc man info locale " +
		"x86_64 linux gnu elf symbol version needed rpath interp section text data bss")
	paths := make([]string, 0, n)
	for i := range n {
		var refs []string
		if i > 0 {
			refs = append(refs, paths[(i-1)/2])
		}
		if i >= 10 {
			refs = append(refs, paths[0])
		}
		var t strings.Builder
		for _, ref := range refs {
			fmt.Fprintf(&t, "RPATH=%s/lib\n", ref)
		}
		size := 1024 + r.IntN(3<<10)
		for t.Len() < size {
			t.WriteString(words[r.IntN(len(words))])
			if r.IntN(8) == 0 {
				fmt.Fprintf(&t, " %08x\n", r.Uint32())
			} else {
				t.WriteByte(' ')
			}
		}
		p, err := add(fmt.Sprintf("bench-small-%04d", i), []byte(t.String()[:size]), refs)
		if err != nil {
			tb.Fatalf("adding small item %d: %v", i, err)
		}
		paths = append(paths, p)
	}
	return paths
}
