package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// Tests against the real nix-daemon 2.8 of the test bed (testbed.md §5).

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func dialNix(t *testing.T, d *testbed.NixDaemon) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t), d.Socket)
	if err != nil {
		t.Fatalf("Dial: %v\n%s", err, d.Logs())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// instantiate writes a derivation whose builder is busybox sh running
// script, with $bb the busybox store path; nonce makes it unique.
func instantiate(t *testing.T, d *testbed.NixDaemon, bb, name, script string) (drv, out string) {
	t.Helper()
	drv = d.Instantiate(t, name, fmt.Sprintf(`let bb = builtins.storePath %s; in
derivation { name = %s; system = builtins.currentSystem; builder = "${bb}/bin/busybox";
  args = [ "sh" "-c" %s ]; inherit bb; nonce = %s; }`,
		testbed.NixString(bb), testbed.NixString(name), testbed.NixString(script),
		testbed.NixString(strconv.FormatInt(time.Now().UnixNano(), 10))))
	out = d.MustRun(t, "nix-store", "-q", "--outputs", drv)
	return drv, out
}

// collect is a LogSink that keeps the lines.
type collect struct {
	mu    sync.Mutex
	lines []LogLine
}

func (c *collect) sink(l LogLine) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	c.mu.Unlock()
}

func (c *collect) of(kind LogKind) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.lines {
		if l.Kind == kind {
			out = append(out, string(l.Text))
		}
	}
	return out
}

func TestNixDaemon(t *testing.T) {
	d := testbed.StartNixDaemon(t, testbed.NixOptions{})
	c := dialNix(t, d)
	ctx := testCtx(t)

	t.Run("Handshake", func(t *testing.T) {
		if c.Dialect() != Nix || c.Dialect().String() != "nix" {
			t.Errorf("dialect %v, want nix", c.Dialect())
		}
		if c.Version() != 0x122 || c.DaemonVersion() != 0x122 {
			t.Errorf("version %#x daemon %#x, want 0x122 both", c.Version(), c.DaemonVersion())
		}
		if c.NixVersion() != "2.8.0" {
			t.Errorf("Nix version %q", c.NixVersion())
		}
	})

	t.Run("SetOptions", func(t *testing.T) {
		err := c.SetOptions(ctx, Options{
			SubstituteURLs:    []string{"file:///nonexistent-cache"},
			TrustedPublicKeys: []string{"farm-test-1:CCzYdYBV9OUOGBET8P4Dguj0mefYeVyeLnhU7farJ6s="},
			UseSubstitutes:    true,
			KeepGoing:         true,
			BuildTimeout:      time.Hour,
			MaxSilentTime:     10 * time.Minute,
			Cores:             1,
			MaxJobs:           2,
			Overrides:         [][2]string{{"connect-timeout", "5"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		// Still in step with the daemon.
		if _, err := c.IsValidPath(ctx, "/gnu/store/sgmxv4mxgx3psb5w9sp16qi9k56qpabn-probe.txt"); err != nil {
			t.Fatal(err)
		}
		// Back to no substituters for the rest: the test bed has none.
		if err := c.SetOptions(ctx, Options{SubstituteURLs: []string{""}}); err != nil {
			t.Fatal(err)
		}
	})

	const probe = "/gnu/store/sgmxv4mxgx3psb5w9sp16qi9k56qpabn-probe.txt"
	t.Run("AddTextToStore", func(t *testing.T) {
		valid, err := c.IsValidPath(ctx, probe)
		if err != nil || valid {
			t.Fatalf("IsValidPath before: %v, %v", valid, err)
		}
		p, err := c.AddTextToStore(ctx, "probe.txt", []byte("hello\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if p != probe {
			t.Errorf("AddTextToStore = %s, want %s (protocols.md §6)", p, probe)
		}
		valid, err = c.IsValidPath(ctx, probe)
		if err != nil || !valid {
			t.Fatalf("IsValidPath after: %v, %v", valid, err)
		}
		info, err := c.QueryPathInfo(ctx, probe)
		if err != nil {
			t.Fatal(err)
		}
		if info.NarHash != "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw" || info.NarSize != 120 ||
			info.CA != "text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq" || info.Deriver != "" {
			t.Errorf("QueryPathInfo = %+v", info)
		}
		if err := c.AddTempRoot(ctx, probe); err != nil {
			t.Fatal(err)
		}
	})

	bb := d.AddBusybox(t)

	t.Run("QueryPathInfo", func(t *testing.T) {
		drv, out := d.Build(t, bb, "refers", `echo "$bb" > $out`)
		info, err := c.QueryPathInfo(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		hash := d.MustRun(t, "nix-store", "-q", "--hash", out)
		size := d.MustRun(t, "nix-store", "-q", "--size", out)
		refs := strings.Fields(d.MustRun(t, "nix-store", "-q", "--references", out))
		deriver := d.MustRun(t, "nix-store", "-q", "--deriver", out)
		slices.Sort(refs)
		got := slices.Sorted(slices.Values(info.References))
		if info.Path != out || info.NarHash != hash || strconv.FormatUint(info.NarSize, 10) != size ||
			!slices.Equal(got, refs) || info.Deriver != deriver || deriver != drv {
			t.Errorf("QueryPathInfo = %+v\nwant hash %s size %s refs %v deriver %s", info, hash, size, refs, deriver)
		}
		if !slices.Contains(info.References, bb) {
			t.Errorf("references %v lack busybox %s", info.References, bb)
		}
		if info.RegistrationTime.Before(time.Now().Add(-time.Hour)) || info.RegistrationTime.After(time.Now().Add(time.Minute)) {
			t.Errorf("registration time %v", info.RegistrationTime)
		}
		if !info.Ultimate {
			t.Errorf("a locally built path should be ultimate")
		}

		missing := "/gnu/store/00000000000000000000000000000000-missing"
		_, err = c.QueryPathInfo(ctx, missing)
		if !errors.Is(err, ErrNotValid) {
			t.Errorf("QueryPathInfo(missing) = %v, want ErrNotValid", err)
		}
		valid, err := c.QueryValidPaths(ctx, []string{out, missing, probe}, false)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Sort(valid); !slices.Equal(valid, slices.Sorted(slices.Values([]string{out, probe}))) {
			t.Errorf("QueryValidPaths = %v", valid)
		}
		valid, err = c.QueryValidPaths(ctx, []string{missing}, true)
		if err != nil || len(valid) != 0 {
			t.Errorf("QueryValidPaths(substitute) = %v, %v", valid, err)
		}
		subst, err := c.QuerySubstitutablePaths(ctx, []string{missing, out})
		if err != nil || len(subst) != 0 {
			t.Errorf("QuerySubstitutablePaths = %v, %v; want none (no substituters)", subst, err)
		}
		if err := c.EnsurePath(ctx, out); err != nil {
			t.Errorf("EnsurePath of a valid path: %v", err)
		}
		err = c.EnsurePath(ctx, missing)
		var de *Error
		if !errors.As(err, &de) {
			t.Errorf("EnsurePath of a missing path = %v, want *Error", err)
		}
	})

	t.Run("Pool", func(t *testing.T) {
		path, err := c.AddTextToStore(ctx, "pooled", []byte("pooled text"), nil)
		if err != nil {
			t.Fatal(err)
		}
		want, err := d.Run(ctx, "nix-store", "--dump", path)
		if err != nil {
			t.Fatal(err)
		}
		p := NewPool(d.Socket, 1)
		defer p.Close()
		read := func() *Conn {
			t.Helper()
			r, err := p.OpenNar(ctx, path, CallerHashes())
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("pooled Nar: %d bytes (%v), nix-store --dump: %d", len(got), err, len(want))
			}
			conn := r.(*pooledNar).c
			r.Close()
			return conn
		}
		first := read()
		if second := read(); second != first {
			t.Error("a stream read to its end did not give its connection back to the pool")
		}
		// A pooled connection the daemon dropped while idle: the next stream retries on a new one.
		first.nc.Close()
		if third := read(); third == first {
			t.Error("a dropped connection was used again")
		}
		// A daemon's answer (invalid path) is not retried and leaves the connection pooled.
		if _, err := p.OpenNar(ctx, "/gnu/store/00000000000000000000000000000000-missing"); !errors.Is(err, ErrNotValid) {
			t.Errorf("pooled Nar(missing) = %v, want ErrNotValid", err)
		}
		// A stream closed before its end takes its connection with it.
		r, err := p.OpenNar(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		conn := r.(*pooledNar).c
		r.Read(make([]byte, 8))
		r.Close()
		if !errors.Is(conn.brokenErr(), ErrClosed) {
			t.Errorf("a stream closed early left its connection open (%v)", conn.brokenErr())
		}
		if len(p.idle) != 0 {
			t.Errorf("%d idle connections after an early close, want 0", len(p.idle))
		}
	})

	t.Run("Nar", func(t *testing.T) {
		_, out := d.Build(t, bb, "tree", `B=$bb/bin/busybox; $B mkdir -p $out/sub; echo hello > $out/a; $B ln -s a $out/link;
printf '#!/bin/sh\necho hi\n' > $out/sub/run.sh; $B chmod +x $out/sub/run.sh; $B head -c 3000000 /dev/zero | $B tr '\0' x > $out/big; : > $out/empty`)
		want, err := d.Run(ctx, "nix-store", "--dump", out)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Nar(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("Nar: %d bytes, nix-store --dump: %d bytes, not equal", len(got), len(want))
		}
		if _, err := nar.Validate(bytes.NewReader(got)); err != nil {
			t.Error(err)
		}
		// The Conn is free again; CallerHashes passes the same bytes on.
		r, err = c.Nar(ctx, out, CallerHashes())
		if err != nil {
			t.Fatal(err)
		}
		if got, err = io.ReadAll(r); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Nar with CallerHashes: %d bytes (%v), nix-store --dump: %d bytes, not equal", len(got), err, len(want))
		}
		if _, err := c.IsValidPath(ctx, out); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Nar(ctx, "/gnu/store/00000000000000000000000000000000-missing"); !errors.Is(err, ErrNotValid) {
			t.Errorf("Nar(missing) = %v, want ErrNotValid", err)
		}
		// Closing early ends the Conn.
		c2 := dialNix(t, d)
		r, err = c2.Nar(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if _, err := c2.IsValidPath(ctx, out); !errors.Is(err, ErrClosed) {
			t.Errorf("after an early Close: %v, want ErrClosed", err)
		}
	})

	t.Run("BuildPaths", func(t *testing.T) {
		script := `printf 'bad utf8: \377\376 end\n'; printf 'no newline at the end'; echo; i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; printf 'last without newline'; echo done > $out`
		drv, out := instantiate(t, d, bb, "logs", script)
		var logs collect
		err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, logs.sink)
		if err != nil {
			t.Fatalf("BuildPaths: %v", err)
		}
		build := logs.of(LogBuild)
		if len(build) < 3003 {
			t.Fatalf("%d build log lines, want >= 3003: %q", len(build), build)
		}
		if build[0] != "bad utf8: \xff\xfe end" {
			t.Errorf("first line %q: invalid UTF-8 not passed through", build[0])
		}
		if build[1] != "no newline at the end" {
			t.Errorf("second line %q", build[1])
		}
		for i := range 3000 {
			if build[2+i] != fmt.Sprintf("line %d", i) {
				t.Fatalf("line %d is %q", 2+i, build[2+i])
			}
		}
		if build[3002] != "last without newline" {
			t.Errorf("last line %q", build[3002])
		}
		if daemonLines := logs.of(LogDaemon); !slices.ContainsFunc(daemonLines, func(s string) bool { return strings.Contains(s, drv) }) {
			t.Errorf("no activity line names %s: %q", drv, daemonLines)
		}
		if valid, err := c.IsValidPath(ctx, out); err != nil || !valid {
			t.Errorf("output %s valid = %v, %v", out, valid, err)
		}
		// Again: already valid, nothing to build.
		if err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, nil); err != nil {
			t.Fatal(err)
		}
		// A bare .drv is refused before anything is sent.
		err = c.BuildPaths(ctx, []DerivedPath{{Drv: drv}}, BuildNormal, nil)
		if err == nil || !strings.Contains(err.Error(), "outputs") {
			t.Errorf("BuildPaths(bare drv) = %v", err)
		}
		if _, err := c.IsValidPath(ctx, out); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("BuildFailure", func(t *testing.T) {
		drv, _ := instantiate(t, d, bb, "fails", `echo "the builder says goodbye"; exit 3`)
		var logs collect
		err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, logs.sink)
		var de *Error
		if !errors.As(err, &de) {
			t.Fatalf("BuildPaths = %v, want *Error", err)
		}
		t.Logf("error: %q", de.Message)
		if !strings.Contains(de.Message, "the builder says goodbye") || !strings.Contains(de.Message, "exit code 3") {
			t.Errorf("error message %q lacks the builder's output or status", de.Message)
		}
		if !slices.Contains(logs.of(LogBuild), "the builder says goodbye") {
			t.Errorf("log lines %q", logs.of(LogBuild))
		}
		// The Conn is still usable.
		if _, err := c.IsValidPath(ctx, drv); err != nil {
			t.Fatalf("after a failed build: %v", err)
		}
	})

	t.Run("ErrorBeforeWork", func(t *testing.T) {
		// A path outside the daemon's store directory passes our syntax
		// check but fails the daemon's parsing, before it starts the work:
		// Nix then hangs up, and the Conn must say it is closed rather than
		// hand the next call a stale error.
		c2 := dialNix(t, d)
		_, err := c2.IsValidPath(ctx, "/nix/store/00000000000000000000000000000000-elsewhere")
		var de *Error
		if !errors.As(err, &de) {
			t.Fatalf("IsValidPath(other store) = %v, want *Error", err)
		}
		if _, err := c2.IsValidPath(ctx, probe); !errors.Is(err, ErrClosed) {
			t.Errorf("next call = %v, want ErrClosed", err)
		}
	})

	t.Run("CollectGarbage", func(t *testing.T) {
		// Added over another connection, which then goes with its temp root.
		c2 := dialNix(t, d)
		victim, err := c2.AddTextToStore(ctx, "gc-victim", []byte("collect me\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		c2.Close()
		dead, err := c.CollectGarbage(ctx, GCOptions{Action: GCReturnDead})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(dead.Paths, victim) {
			t.Fatalf("dead paths %v lack %s", dead.Paths, victim)
		}
		res, err := c.CollectGarbage(ctx, GCOptions{Action: GCDeleteSpecific, Paths: []string{victim}})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Paths, []string{victim}) || res.BytesFreed == 0 {
			t.Errorf("CollectGarbage = %+v", res)
		}
		if valid, err := c.IsValidPath(ctx, victim); err != nil || valid {
			t.Errorf("after GC: valid = %v, %v", valid, err)
		}
		if _, err := os.Lstat(d.HostPath(victim)); !os.IsNotExist(err) {
			t.Errorf("%s still on disk: %v", victim, err)
		}
		// Our temp root protects the probe.
		_, err = c.CollectGarbage(ctx, GCOptions{Action: GCDeleteSpecific, Paths: []string{probe}})
		var de *Error
		if !errors.As(err, &de) || !strings.Contains(de.Message, "alive") {
			t.Errorf("deleting a live path = %v", err)
		}
	})
}

func TestNixCancelBuild(t *testing.T) {
	d := testbed.StartNixDaemon(t, testbed.NixOptions{})
	bb := d.AddBusybox(t)
	drv, _ := instantiate(t, d, bb, "sleeper", `echo started; exec "$bb/bin/busybox" sleep 300`)
	c := dialNix(t, d)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, func(l LogLine) {
			if l.Kind == LogBuild && string(l.Text) == "started" {
				once.Do(func() { close(started) })
			}
		})
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("build ended early: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the builder did not start")
	}
	if n := sleepers(d.PID); n == 0 {
		t.Fatal("no sleep process below the daemon: the check below would prove nothing")
	}
	t0 := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("BuildPaths = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("BuildPaths did not return after cancel")
	}
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("BuildPaths took %v to return after cancel", el)
	}
	deadline := time.Now().Add(15 * time.Second)
	for sleepers(d.PID) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the builder still runs 15 s after its client went")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("builder gone %v after cancel", time.Since(t0))
	if _, err := c.IsValidPath(context.Background(), drv); !errors.Is(err, ErrClosed) {
		t.Errorf("after cancel: %v, want ErrClosed", err)
	}
}

// sleepers counts the processes below pid running "busybox sleep 300".
func sleepers(pid int) int {
	ents, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	cmd := map[int]string{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may contain spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[p] = pp
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cmd[p] = string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
	}
	n := 0
	for p, cl := range cmd {
		if !strings.Contains(cl, "sleep 300") {
			continue
		}
		for q, hops := p, 0; q > 1 && hops < 64; q, hops = parent[q], hops+1 {
			if q == pid {
				n++
				break
			}
		}
	}
	return n
}

func TestNixImport(t *testing.T) {
	a := testbed.StartNixDaemon(t, testbed.NixOptions{})
	bb := a.AddBusybox(t)
	_, out := a.Build(t, bb, "imported", `echo "$bb" > $out`)
	ca := dialNix(t, a)
	ctx := testCtx(t)

	b := testbed.StartNixDaemon(t, testbed.NixOptions{})
	cb := dialNix(t, b)
	// Dependencies first: busybox (about 2 MB, many frames), then out.
	for _, p := range []string{bb, out} {
		info, err := ca.QueryPathInfo(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ca.Nar(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if p == out {
			// A NAR that does not match its hash is refused, and the Conn
			// survives.
			bad := *info
			bad.NarHash = nar.FormatHash(make([]byte, 32))
			err := cb.Import(ctx, bad, bytes.NewReader(data), "")
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("Import with a wrong hash = %v, want *Error", err)
			}
			t.Logf("wrong hash: %s", de.Message)
		}
		if err := cb.Import(ctx, *info, bytes.NewReader(data), ""); err != nil {
			t.Fatalf("Import %s: %v\n%s", p, err, b.Logs())
		}
		got, err := cb.QueryPathInfo(ctx, p)
		if err != nil {
			t.Fatalf("QueryPathInfo after Import: %v", err)
		}
		if got.NarHash != info.NarHash || got.NarSize != info.NarSize || !slices.Equal(got.References, info.References) || got.Deriver != info.Deriver {
			t.Errorf("imported %+v, source %+v", got, info)
		}
	}
	if dump := b.MustRun(t, "cat", out); dump != bb {
		t.Errorf("imported file says %q, want %q", dump, bb)
	}

	// A source that fails mid-way closes the Conn and says why.
	info, _ := ca.QueryPathInfo(ctx, out)
	info.Path = "/gnu/store/00000000000000000000000000000000-other"
	boom := errors.New("boom")
	err := cb.Import(ctx, *info, io.MultiReader(strings.NewReader("nix-archive-1"), errReader{boom}), "")
	if !errors.Is(err, boom) {
		t.Errorf("Import with a failing reader = %v, want boom", err)
	}
	if _, err := cb.IsValidPath(ctx, out); !errors.Is(err, ErrClosed) {
		t.Errorf("after a failed upload: %v, want ErrClosed", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
