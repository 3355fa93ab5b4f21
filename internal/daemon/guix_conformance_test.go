package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/daemon/guixpeer"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// The client against guixpeer, a fake guix-daemon written from Guix's
// sources by another hand: the Guix dialect end to end, for daemon
// versions 0x163 and 0x164.

const (
	gPathA = "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-a"
	gPathB = "/gnu/store/zyxwvsrqpnmlkjihgfdcba9876543210-b"
)

func narOf(t *testing.T, contents string) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents", contents, ")"} {
		b.Write(strb(s))
	}
	if _, err := nar.Validate(bytes.NewReader(b.Bytes())); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// guixDrv returns a derivation named name: its path, text and output.
func guixDrv(t *testing.T, name string) (drvPath string, text []byte, out string) {
	t.Helper()
	dir := storepath.Dir("/gnu/store")
	d := &derivation.Derivation{
		Outputs: []derivation.Output{{Name: "out"}},
		System:  "x86_64-linux",
		Builder: "/gnu/store/1b3m0rpfi1pv4dm6vrz1s5kcmrdl4dkv-bash/bin/sh",
		Args:    []string{"-c", "true"},
		Env:     []derivation.EnvVar{{Key: "name", Value: name}},
	}
	if err := d.FillOutputPaths(dir, name, nil); err != nil {
		t.Fatal(err)
	}
	drvPath, err := d.DrvPath(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return drvPath, d.Bytes(), d.OutputPaths()["out"]
}

func dialGuix(t *testing.T, p *guixpeer.Peer) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t), guixpeer.Listen(t, p))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestGuixConformance(t *testing.T) {
	for _, v := range []uint64{0x163, 0x164} {
		t.Run(fmt.Sprintf("%#x", v), func(t *testing.T) { guixConformance(t, v) })
	}
}

func guixConformance(t *testing.T, version uint64) {
	ctx := testCtx(t)
	p := guixpeer.New(version)
	p.Trusted = true
	narA := narOf(t, "a, which refers to "+gPathB)
	p.AddPath(gPathA, narA, []string{gPathB}, "")
	p.AddPath(gPathB, narOf(t, "b"), nil, "")
	c := dialGuix(t, p)

	t.Run("Handshake", func(t *testing.T) {
		if c.Dialect() != Guix || c.Version() != 0x163 || c.DaemonVersion() != version {
			t.Errorf("dialect %v version %#x daemon %#x", c.Dialect(), c.Version(), c.DaemonVersion())
		}
	})

	t.Run("SetOptions", func(t *testing.T) {
		err := c.SetOptions(ctx, Options{
			SubstituteURLs: []string{"https://bucket.example"}, TrustedPublicKeys: []string{"ignored:x"},
			UseSubstitutes: true, KeepGoing: true, TryFallback: true, PrintBuildTrace: true,
			MultiplexedBuildOutput: true, BuildTimeout: time.Hour, MaxSilentTime: time.Minute, MaxJobs: 2, Cores: 4,
			Overrides: [][2]string{{"print-extended-build-trace", "1"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		o := p.Options()
		if !o.KeepGoing || !o.TryFallback || o.KeepFailed || !o.PrintBuildTrace || !o.UseSubstitutes ||
			o.Verbosity != 0 || o.BuildVerbosity != 0 || o.MaxBuildJobs != 0 || o.MaxSilentTime != 0 || o.BuildCores != 0 {
			t.Errorf("fixed fields %+v", o)
		}
		want := map[string]string{
			"substitute-urls": "https://bucket.example", "build-timeout": "3600", "build-max-silent-time": "60",
			"build-max-jobs": "2", "build-cores": "4", "multiplexed-build-output": "true", "print-extended-build-trace": "1",
		}
		if !mapsEqual(o.Overrides, want) {
			t.Errorf("overrides %v, want %v", o.Overrides, want)
		}
	})

	t.Run("Queries", func(t *testing.T) {
		for path, want := range map[string]bool{gPathA: true, "/gnu/store/00000000000000000000000000000000-no": false} {
			if ok, err := c.IsValidPath(ctx, path); err != nil || ok != want {
				t.Errorf("IsValidPath(%s) = %v, %v", path, ok, err)
			}
		}
		info, err := c.QueryPathInfo(ctx, gPathA)
		if err != nil {
			t.Fatal(err)
		}
		h, size, _ := nar.Hash(bytes.NewReader(narA))
		if info.NarHash != h || info.NarSize != uint64(size) || !slices.Equal(info.References, []string{gPathB}) || info.Deriver != "" {
			t.Errorf("QueryPathInfo = %+v, want hash %s size %d", info, h, size)
		}
		missing := "/gnu/store/00000000000000000000000000000000-missing"
		_, err = c.QueryPathInfo(ctx, missing)
		var de *Error
		if !errors.Is(err, ErrNotValid) || !errors.As(err, &de) {
			t.Errorf("QueryPathInfo(missing) = %v, want ErrNotValid", err)
		}
		valid, err := c.QueryValidPaths(ctx, []string{gPathA, missing, gPathB}, false)
		if slices.Sort(valid); err != nil || !slices.Equal(valid, []string{gPathA, gPathB}) {
			t.Errorf("QueryValidPaths = %v, %v", valid, err)
		}
		p.AddSubstitute(missing, narOf(t, "substituted"), nil, "")
		subst, err := c.QuerySubstitutablePaths(ctx, []string{missing, gPathA})
		if err != nil || !slices.Equal(subst, []string{missing}) {
			t.Errorf("QuerySubstitutablePaths = %v, %v", subst, err)
		}
		if err := c.EnsurePath(ctx, missing); err != nil || !p.IsValid(missing) {
			t.Errorf("EnsurePath: %v, valid %v", err, p.IsValid(missing))
		}
		if err := c.AddTempRoot(ctx, gPathB); err != nil || !slices.Contains(p.TempRoots(), gPathB) {
			t.Errorf("AddTempRoot: %v, roots %v", err, p.TempRoots())
		}
		probe, err := c.AddTextToStore(ctx, "probe.txt", []byte("hello\n"), nil)
		if err != nil || probe != "/gnu/store/sgmxv4mxgx3psb5w9sp16qi9k56qpabn-probe.txt" {
			t.Errorf("AddTextToStore = %s, %v", probe, err)
		}
	})

	t.Run("Build", func(t *testing.T) {
		drv, text, out := guixDrv(t, "hello")
		p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
			io.WriteString(w, "first line\nsecond ")
			io.WriteString(w, "half\nbad \xff\xfe bytes\n")
			for i := range 500 {
				fmt.Fprintf(w, "line %d\n", i)
			}
			io.WriteString(w, "no newline")
			return map[string][]byte{"out": narOf(t, "built")}, nil
		})
		got, err := c.AddTextToStore(ctx, strings.TrimPrefix(drv, "/gnu/store/")[33:], text, nil)
		if err != nil || got != drv {
			t.Fatalf("AddTextToStore(drv) = %s, %v; want %s", got, err, drv)
		}
		var logs collect
		if err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, logs.sink); err != nil {
			t.Fatal(err)
		}
		build := logs.of(LogBuild)
		want := []string{"first line", "second half", "bad \xff\xfe bytes"}
		for i := range 500 {
			want = append(want, fmt.Sprintf("line %d", i))
		}
		want = append(want, "no newline")
		if !slices.Equal(build, want) {
			t.Errorf("build lines (%d) %q…, want (%d) %q…", len(build), build[:min(5, len(build))], len(want), want[:5])
		}
		traces := logs.of(LogTrace)
		if len(traces) != 2 || !strings.HasPrefix(traces[0], "@ build-started "+drv) || traces[1] != "@ build-succeeded "+drv+" -" {
			t.Errorf("traces %q", traces)
		}
		info, err := c.QueryPathInfo(ctx, out)
		if err != nil || info.Deriver != drv {
			t.Errorf("output info %+v, %v", info, err)
		}
	})

	t.Run("BuildFailure", func(t *testing.T) {
		drv, text, _ := guixDrv(t, "broken")
		p.AddPath(drv, narOf(t, string(text)), nil, "")
		p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
			io.WriteString(w, "oops\n")
			return nil, errors.New("exit status 1")
		})
		var logs collect
		err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, logs.sink)
		var de *Error
		if !errors.As(err, &de) || de.Status != 100 || de.Message != "build of `"+drv+"' failed" {
			t.Fatalf("BuildPaths = %v, want *Error status 100", err)
		}
		if !slices.Contains(logs.of(LogBuild), "oops") ||
			!slices.ContainsFunc(logs.of(LogTrace), func(s string) bool { return strings.HasPrefix(s, "@ build-failed") }) {
			t.Errorf("logs %q", logs.lines)
		}
		if ok, err := c.IsValidPath(ctx, drv); err != nil || !ok {
			t.Errorf("after a failed build: %v, %v", ok, err)
		}
	})

	t.Run("PlainOutput", func(t *testing.T) {
		// Without multiplexing, Guix sends builder output as plain text.
		c2 := dialGuix(t, p)
		if err := c2.SetOptions(ctx, Options{}); err != nil {
			t.Fatal(err)
		}
		drv, text, _ := guixDrv(t, "plain")
		p.AddPath(drv, narOf(t, string(text)), nil, "")
		p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
			io.WriteString(w, "plain output\n")
			return map[string][]byte{"out": narOf(t, "x")}, nil
		})
		var logs collect
		if err := c2.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, logs.sink); err != nil {
			t.Fatal(err)
		}
		if got := logs.of(LogBuild); !slices.Equal(got, []string{"plain output"}) {
			t.Errorf("lines %q", logs.lines)
		}
	})

	t.Run("Export", func(t *testing.T) {
		r, err := c.Nar(ctx, gPathA)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, narA) {
			t.Errorf("Nar: %d bytes, want the %d of the NAR", len(got), len(narA))
		}
		if _, err := c.Nar(ctx, "/gnu/store/00000000000000000000000000000000-gone"); !errors.Is(err, ErrNotValid) {
			t.Errorf("Nar(missing) = %v", err)
		}
		if ok, err := c.IsValidPath(ctx, gPathA); err != nil || !ok {
			t.Errorf("after export: %v, %v", ok, err)
		}
	})

	t.Run("Import", func(t *testing.T) {
		p.Authorize = func(sig string, recordHash []byte) bool { return sig == "(good signature)" }
		const path = "/gnu/store/11111111111111111111111111111111-imported"
		data := narOf(t, "imported, refers to "+gPathB)
		info := PathInfo{Path: path, References: []string{gPathB}}
		err := c.Import(ctx, info, bytes.NewReader(data), "(bad signature)")
		var de *Error
		if !errors.As(err, &de) || p.IsValid(path) {
			t.Fatalf("Import with a bad signature = %v", err)
		}
		t.Logf("bad signature: %v", de)
		if err := c.Import(ctx, info, bytes.NewReader(data), "(good signature)"); err != nil {
			t.Fatal(err)
		}
		got, err := c.QueryPathInfo(ctx, path)
		if err != nil || !slices.Equal(got.References, []string{gPathB}) {
			t.Errorf("imported %+v, %v", got, err)
		}
	})

	t.Run("CollectGarbage", func(t *testing.T) {
		dead := "/gnu/store/22222222222222222222222222222222-dead"
		p.AddPath(dead, narOf(t, "dead"), nil, "")
		res, err := c.CollectGarbage(ctx, GCOptions{Action: GCDeleteSpecific, Paths: []string{dead}})
		if err != nil || !slices.Equal(res.Paths, []string{dead}) || res.BytesFreed == 0 || p.IsValid(dead) {
			t.Errorf("CollectGarbage = %+v, %v", res, err)
		}
		_, err = c.CollectGarbage(ctx, GCOptions{Action: GCDeleteSpecific, Paths: []string{gPathB}})
		var de *Error
		if !errors.As(err, &de) {
			t.Errorf("deleting a live path = %v, want *Error", err)
		}
	})

	t.Run("ErrorBeforeWork", func(t *testing.T) {
		// A path outside the store fails Guix's argument parsing, before
		// startWork: Guix reports it and hangs up.
		c2 := dialGuix(t, p)
		_, err := c2.QueryPathInfo(ctx, "/nix/store/00000000000000000000000000000000-elsewhere")
		var de *Error
		if !errors.As(err, &de) || errors.Is(err, ErrNotValid) {
			t.Fatalf("QueryPathInfo(other store) = %v, want *Error", err)
		}
		_, err = c2.IsValidPath(ctx, gPathA)
		if err == nil || errors.As(err, &de) {
			t.Errorf("next call = %v, want an I/O error", err)
		}
		if _, err := c2.IsValidPath(ctx, gPathA); !errors.Is(err, ErrClosed) {
			t.Errorf("then = %v, want ErrClosed", err)
		}
	})

	t.Run("Cancel", func(t *testing.T) {
		drv, text, _ := guixDrv(t, "forever")
		p.AddPath(drv, narOf(t, string(text)), nil, "")
		stopped := make(chan struct{})
		p.OnBuild(drv, func(bctx context.Context, w io.Writer) (map[string][]byte, error) {
			// guixpeer notices a client's hang-up when it next writes to it
			// (guix-daemon without SIGPOLL does the same; with it, at once),
			// so the builder keeps talking.
			io.WriteString(w, "started\n")
			for bctx.Err() == nil {
				io.WriteString(w, "tick\n")
				time.Sleep(20 * time.Millisecond)
			}
			close(stopped)
			return nil, bctx.Err()
		})
		c2 := dialGuix(t, p)
		if err := c2.SetOptions(ctx, Options{MultiplexedBuildOutput: true}); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := c2.BuildPaths(cctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, func(l LogLine) {
			if l.Kind == LogBuild && string(l.Text) == "started" {
				cancel()
			}
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("BuildPaths = %v, want context.Canceled", err)
		}
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Error("the peer's builder was not stopped when its client went")
		}
	})
}
