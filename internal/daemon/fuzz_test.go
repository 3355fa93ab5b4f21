package daemon

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"testing"
)

// scriptedRW feeds a Conn a fixed daemon stream and swallows what it sends.
type scriptedRW struct{ r io.Reader }

func (s scriptedRW) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s scriptedRW) Write(p []byte) (int, error) { return len(p), nil }
func (s scriptedRW) Close() error                { return nil }

// scriptedConn is a Conn after a handshake with a daemon of version v,
// reading data as the daemon's replies.
func scriptedConn(data []byte, v uint64, multiplexed bool) *Conn {
	rw := scriptedRW{bytes.NewReader(data)}
	c := newConn(rw, rw)
	c.daemonVersion = v
	if minor(v) >= guixMinorBase {
		c.dialect, c.version = Guix, min(v, guixClientVersion)
	} else {
		c.dialect, c.version = Nix, min(v, nixClientVersion)
	}
	c.multiplexed = multiplexed
	return c
}

// runOps runs every reply parser of the package over data, each on a fresh
// Conn, and returns how many log lines came out.
func runOps(data []byte) int {
	const path = "/gnu/store/00000000000000000000000000000000-x"
	const drv = "/gnu/store/00000000000000000000000000000000-x.drv"
	ctx := context.Background()
	lines := 0
	sink := func(l LogLine) { lines++ }
	for _, cfg := range []struct {
		v   uint64
		mux bool
	}{{0x122, false}, {0x115, false}, {0x163, false}, {0x164, true}} {
		conn := func() *Conn { return scriptedConn(data, cfg.v, cfg.mux) }
		conn().BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, sink)
		conn().QueryPathInfo(ctx, path)
		conn().QueryValidPaths(ctx, []string{path}, true)
		conn().CollectGarbage(ctx, GCOptions{Action: GCReturnDead})
		if r, err := conn().Nar(ctx, path); err == nil {
			io.Copy(io.Discard, r)
			r.Close()
		}
		info := PathInfo{Path: path, NarHash: "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", NarSize: 120}
		conn().Import(ctx, info, bytes.NewReader(make([]byte, 120)), "(sig)")
	}
	// The NAR framer alone.
	io.Copy(io.Discard, newNarStream(bytes.NewReader(data)))
	return lines
}

func seedCorpus(f *testing.F) {
	nar := cat(strb("nix-archive-1"), strb("("), strb("type"), strb("regular"), strb("contents"), strb("hello\n"), strb(")"))
	h := "1c37d01a6bd2d3e4d1ff2fa6d85c7e95b22b20c7e0b0e0fdf1e38b3fba71fc13" // any 64 hex digits parse
	for _, s := range [][]byte{
		{},
		cat(u64b(stderrLast), u64b(1)),
		cat(u64b(stderrNext), strb("abc"), u64b(stderrNext), strb("def\n"), u64b(stderrLast), u64b(1)),
		cat(u64b(stderrStartActivity), u64b(1), u64b(0), u64b(105), strb("building"), u64b(1), u64b(1), strb("x"), u64b(0),
			u64b(stderrResult), u64b(1), u64b(101), u64b(1), u64b(1), strb("line"), u64b(stderrStopActivity), u64b(1), u64b(stderrLast), u64b(1)),
		cat(u64b(stderrError), strb("Error"), u64b(0), strb("Error"), strb("msg"), u64b(0), u64b(1), u64b(0), strb("trace")),
		cat(u64b(stderrError), strb("path `x' is not valid"), u64b(1)),
		cat(u64b(stderrNext), strb("@ build-log 1 5\nab\ncd@ build-started x\n"), u64b(stderrLast), u64b(1)),
		cat(u64b(stderrLast), u64b(1), strb(""), strb(h), strsb("/gnu/store/a"), u64b(1), u64b(120), u64b(1), strsb("sig"), strb("")),
		cat(u64b(stderrLast), strb(""), strb(h), strsb(), u64b(1), u64b(120), u64b(stderrWrite), strb(string(nar)),
			u64b(stderrWrite), strb(string(cat(u64b(exportMagic), strb("/gnu/store/00000000000000000000000000000000-x"), strsb(), strb(""), u64b(0)))),
			u64b(stderrLast), u64b(1)),
		cat(u64b(stderrLast), u64b(1), strb(""), strb(h), strsb(), u64b(1), u64b(120), u64b(0), strsb(), strb(""), u64b(stderrLast), nar),
		cat(u64b(stderrRead), u64b(8), u64b(stderrRead), u64b(100000), u64b(stderrLast), strsb("/gnu/store/00000000000000000000000000000000-x")),
		cat(u64b(stderrNext), u64b(1<<40)),
		nar,
	} {
		f.Add(s)
	}
}

// FuzzFrames feeds arbitrary daemon streams to every parser: they must
// neither panic nor allocate much more than the input's size. `go test`
// runs the seeds; fuzz with
//
//	go test ./internal/daemon -run '^$' -fuzz FuzzFrames -fuzztime 30s
func FuzzFrames(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		runOps(data)
		runtime.ReadMemStats(&after)
		// Fixed costs: two 64 KiB buffers per Conn, 25 Conns, frame
		// buffers; then a few times the input.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20+64*uint64(len(data)) {
			t.Errorf("%d bytes allocated for %d bytes of input", alloc, len(data))
		}
	})
}

func TestSeedsLog(t *testing.T) {
	// The seeds do reach the logger (a guard against a corpus that only
	// exercises the first error path).
	data := cat(u64b(stderrNext), strb("@ build-log 1 5\nab\ncd@ build-started x\n"), u64b(stderrLast), u64b(1))
	if n := runOps(data); n == 0 {
		t.Errorf("no log lines")
	}
}
