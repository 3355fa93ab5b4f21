package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/nar"
)

// A scripted fake daemon over net.Pipe, for the framing edge cases a real
// daemon won't produce on demand. Its encoding is written out here rather
// than borrowed from wire.go, so that a bug there can't hide itself.

type peer struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

// fail stops the peer goroutine (the test fails through errs).
type peerFail struct{ err error }

func u64b(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func strb(s string) []byte {
	b := u64b(uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

func strsb(ss ...string) []byte {
	b := u64b(uint64(len(ss)))
	for _, s := range ss {
		b = append(b, strb(s)...)
	}
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func (p *peer) send(parts ...[]byte) {
	if _, err := p.nc.Write(cat(parts...)); err != nil {
		panic(peerFail{fmt.Errorf("peer write: %w", err)})
	}
}

func (p *peer) u64() uint64 {
	var b [8]byte
	if _, err := io.ReadFull(p.r, b[:]); err != nil {
		panic(peerFail{fmt.Errorf("peer read: %w", err)})
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (p *peer) str() string {
	n := p.u64()
	if n > 1<<20 {
		panic(peerFail{fmt.Errorf("peer: string of %d bytes", n)})
	}
	b := make([]byte, n+uint64((8-n%8)%8))
	if _, err := io.ReadFull(p.r, b); err != nil {
		panic(peerFail{fmt.Errorf("peer read: %w", err)})
	}
	return string(b[:n])
}

func (p *peer) strs() []string {
	n := p.u64()
	var out []string
	for range n {
		out = append(out, p.str())
	}
	return out
}

// expect reads a u64 and fails the peer if it differs.
func (p *peer) expect(what string, want uint64) {
	if got := p.u64(); got != want {
		panic(peerFail{fmt.Errorf("peer: %s = %#x, want %#x", what, got, want)})
	}
}

// handshake plays the daemon's side of §1.2 for version dv.
func (p *peer) handshake(dv uint64) (clientVersion uint64) {
	p.expect("magic", workerMagic1)
	p.send(u64b(workerMagic2), u64b(dv))
	cv := p.u64()
	if cv&0xff >= 14 {
		p.expect("affinity", 0)
	}
	if cv&0xff >= 11 {
		reserve := p.u64()
		if guix := dv&0xff >= 0x60; reserve != map[bool]uint64{true: 1, false: 0}[guix] {
			panic(peerFail{fmt.Errorf("peer: reserve-space %d", reserve)})
		}
	}
	if dv&0xff < 0x60 && min(cv, dv)&0xff >= 33 {
		p.send(strb("2.99.0"))
	}
	p.send(u64b(stderrLast))
	return cv
}

// fake starts a peer running script and returns the client end. The
// script's failures are reported when the test ends.
func fake(t *testing.T, script func(p *peer)) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan error, 1)
	go func() {
		defer server.Close()
		defer func() {
			if r := recover(); r != nil {
				if f, ok := r.(peerFail); ok {
					done <- f.err
					return
				}
				done <- fmt.Errorf("peer panic: %v", r)
				return
			}
			done <- nil
		}()
		script(&peer{t: t, nc: server, r: bufio.NewReader(server)})
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fake daemon: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("fake daemon did not finish")
		}
	})
	return client
}

// fakeConn is a Conn to a fake daemon of version dv; after the handshake
// the peer runs script.
func fakeConn(t *testing.T, dv uint64, script func(p *peer)) *Conn {
	t.Helper()
	nc := fake(t, func(p *peer) {
		p.handshake(dv)
		script(p)
	})
	c, err := NewConn(testCtx(t), nc)
	if err != nil {
		t.Fatalf("NewConn: %v", err)
	}
	return c
}

// untilEOF waits for the client to hang up.
func (p *peer) untilEOF() {
	if _, err := p.r.ReadByte(); err == nil {
		panic(peerFail{errors.New("peer: client sent more than expected")})
	}
}

func TestHandshakeVersions(t *testing.T) {
	for _, tc := range []struct {
		daemon, client, negotiated uint64
		dialect                    Dialect
	}{
		{0x163, 0x163, 0x163, Guix},
		{0x164, 0x163, 0x163, Guix},
		{0x160, 0x163, 0x160, Guix}, // old Guix: negotiated down
		{0x122, 0x122, 0x122, Nix},
		{0x123, 0x122, 0x122, Nix}, // newer Nix: we stay at 1.34
		{0x115, 0x115, 0x115, Nix},
		{0x114, 0x114, 0x114, Nix},
	} {
		t.Run(fmt.Sprintf("%#x", tc.daemon), func(t *testing.T) {
			sentc := make(chan uint64, 1)
			nc := fake(t, func(p *peer) {
				sentc <- p.handshake(tc.daemon)
				p.untilEOF()
			})
			c, err := NewConn(testCtx(t), nc)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			sent := <-sentc
			if sent != tc.client || c.Version() != tc.negotiated || c.DaemonVersion() != tc.daemon || c.Dialect() != tc.dialect {
				t.Errorf("sent %#x, negotiated %#x, dialect %v", sent, c.Version(), c.Dialect())
			}
			if want := map[bool]string{true: "2.99.0", false: ""}[tc.dialect == Nix && tc.negotiated >= 0x121]; c.NixVersion() != want {
				t.Errorf("Nix version %q, want %q", c.NixVersion(), want)
			}
		})
	}
}

func TestHandshakeRefused(t *testing.T) {
	t.Run("OldNix", func(t *testing.T) {
		nc := fake(t, func(p *peer) {
			p.expect("magic", workerMagic1)
			p.send(u64b(workerMagic2), u64b(0x113))
			p.untilEOF()
		})
		_, err := NewConn(testCtx(t), nc)
		if err == nil || !strings.Contains(err.Error(), "too old") {
			t.Errorf("NewConn = %v, want too old", err)
		}
	})
	t.Run("BadMagic", func(t *testing.T) {
		nc := fake(t, func(p *peer) {
			p.expect("magic", workerMagic1)
			p.send(u64b(0x12345678), u64b(0x122))
			p.untilEOF()
		})
		if _, err := NewConn(testCtx(t), nc); !errors.Is(err, ErrProtocol) {
			t.Errorf("NewConn = %v, want ErrProtocol", err)
		}
	})
	t.Run("StartupError", func(t *testing.T) {
		// Guix reports a store it can't open as an ERROR in the handshake.
		nc := fake(t, func(p *peer) {
			p.expect("magic", workerMagic1)
			p.send(u64b(workerMagic2), u64b(0x164))
			p.expect("client version", 0x163)
			p.expect("affinity", 0)
			p.expect("reserve", 1)
			p.send(u64b(stderrError), strb("current store schema is version 9"), u64b(1))
			p.untilEOF()
		})
		_, err := NewConn(testCtx(t), nc)
		var de *Error
		if !errors.As(err, &de) || de.Status != 1 || !strings.Contains(de.Message, "schema") {
			t.Errorf("NewConn = %v", err)
		}
	})
}

func TestNixStructuredError(t *testing.T) {
	const path = "/gnu/store/00000000000000000000000000000000-x"
	c := fakeConn(t, 0x122, func(p *peer) {
		p.expect("op", opQueryPathInfo)
		if got := p.str(); got != path {
			panic(peerFail{fmt.Errorf("path %q", got)})
		}
		p.send(u64b(stderrNext), strb("warning: something\n"),
			u64b(stderrStartActivity), u64b(7), u64b(3), u64b(109), strb("querying info about 'x'"),
			u64b(2), u64b(0), u64b(5), u64b(1), strb("field"), u64b(0),
			u64b(stderrResult), u64b(7), u64b(105), u64b(1), u64b(0), u64b(1),
			u64b(stderrStopActivity), u64b(7),
			u64b(stderrError), strb("Error"), u64b(0), strb("Error"), strb("\x1b[31merror:\x1b[0m it broke"),
			u64b(0), u64b(2), u64b(0), strb("while doing A"), u64b(0), strb("while doing B"))
		// Still in step: the next request is served.
		p.expect("op", opIsValidPath)
		p.str()
		p.send(u64b(stderrLast), u64b(1))
		p.untilEOF()
	})
	defer c.Close()
	ctx := testCtx(t)
	_, err := c.QueryPathInfo(ctx, path)
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("QueryPathInfo = %v, want *Error", err)
	}
	if want := "\x1b[31merror:\x1b[0m it broke\nwhile doing A\nwhile doing B"; de.Message != want || de.Status != 0 {
		t.Errorf("error %q status %d, want %q", de.Message, de.Status, want)
	}
	if errors.Is(err, ErrNotValid) {
		t.Errorf("a Nix error is not ErrNotValid")
	}
	if ok, err := c.IsValidPath(ctx, path); err != nil || !ok {
		t.Errorf("after the error: %v, %v", ok, err)
	}
}

func TestGuixErrorFrames(t *testing.T) {
	const path = "/gnu/store/00000000000000000000000000000000-x"
	const drv = "/gnu/store/00000000000000000000000000000000-x.drv"
	c := fakeConn(t, 0x164, func(p *peer) {
		p.expect("op", opQueryPathInfo)
		p.str()
		p.send(u64b(stderrError), strb("path `"+path+"' is not valid"), u64b(1))
		p.expect("op", opBuildPaths)
		if got := p.strs(); !slices.Equal(got, []string{drv + "!out,lib"}) {
			panic(peerFail{fmt.Errorf("build paths %q", got)})
		}
		p.expect("mode", uint64(BuildCheck))
		p.send(u64b(stderrNext), strb("building...\n"), u64b(stderrError), strb("build of `"+drv+"' failed"), u64b(100))
		p.expect("op", opIsValidPath)
		p.str()
		p.send(u64b(stderrLast), u64b(0))
		p.untilEOF()
	})
	defer c.Close()
	ctx := testCtx(t)
	_, err := c.QueryPathInfo(ctx, path)
	var de *Error
	if !errors.Is(err, ErrNotValid) || !errors.As(err, &de) || de.Status != 1 {
		t.Errorf("QueryPathInfo = %v, want ErrNotValid and *Error", err)
	}
	var lines collect
	err = c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out", "lib"}}}, BuildCheck, lines.sink)
	if !errors.As(err, &de) || de.Status != 100 || !strings.Contains(de.Message, "failed") {
		t.Errorf("BuildPaths = %v, want *Error with status 100", err)
	}
	if got := lines.of(LogBuild); !slices.Equal(got, []string{"building..."}) {
		t.Errorf("log %q", got)
	}
	if ok, err := c.IsValidPath(ctx, path); err != nil || ok {
		t.Errorf("after the errors: %v, %v", ok, err)
	}
	// Guix has no "!*".
	if err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"*"}}}, BuildNormal, nil); err == nil {
		t.Errorf("BuildPaths(!*) on Guix succeeded")
	}
}

func TestPartialLines(t *testing.T) {
	const drv = "/gnu/store/00000000000000000000000000000000-x.drv"
	c := fakeConn(t, 0x122, func(p *peer) {
		p.expect("op", opBuildPaths)
		p.strs()
		p.u64()
		p.send(u64b(stderrNext), strb("abc"), u64b(stderrNext), strb("def\nghi"),
			u64b(stderrResult), u64b(1), u64b(resBuildLogLine), u64b(1), u64b(1), strb("from the \xffbuilder"),
			u64b(stderrResult), u64b(1), u64b(resPostBuildLogLine), u64b(1), u64b(1), strb("post hook"),
			u64b(stderrNext), strb("jkl"), u64b(stderrLast), u64b(1))
		p.untilEOF()
	})
	defer c.Close()
	var lines collect
	if err := c.BuildPaths(testCtx(t), []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, lines.sink); err != nil {
		t.Fatal(err)
	}
	if got := lines.of(LogDaemon); !slices.Equal(got, []string{"abcdef", "post hook", "ghijkl"}) {
		t.Errorf("daemon lines %q", got)
	}
	if got := lines.of(LogBuild); !slices.Equal(got, []string{"from the \xffbuilder"}) {
		t.Errorf("build lines %q", got)
	}
}

// guixSetOptions reads a SetOptions request of a 0x163 client and returns
// its overrides.
func (p *peer) guixSetOptions() map[string]string {
	p.expect("op", opSetOptions)
	fixed := make([]uint64, 9) // keepFailed keepGoing tryFallback verbosity useBuildHook buildVerbosity logType printBuildTrace useSubstitutes
	for i := range fixed {
		fixed[i] = p.u64()
	}
	if !slices.Equal(fixed, []uint64{0, 1, 0, 0, 1, 0, 0, 1, 1}) {
		panic(peerFail{fmt.Errorf("SetOptions fields %v", fixed)})
	}
	n := p.u64()
	m := map[string]string{}
	for range n {
		k := p.str()
		m[k] = p.str()
	}
	p.send(u64b(stderrLast))
	return m
}

func TestGuixSetOptionsAndMultiplexedLog(t *testing.T) {
	const drv = "/gnu/store/00000000000000000000000000000000-x.drv"
	got := make(chan map[string]string, 1)
	c := fakeConn(t, 0x163, func(p *peer) {
		got <- p.guixSetOptions()
		p.expect("op", opBuildPaths)
		p.strs()
		p.u64()
		p.send(
			u64b(stderrNext), strb("@ build-started "+drv+" - x86_64-linux /var/log/guix/drvs/00/x.drv.gz 42\n"),
			// A header alone, its payload in the next message, a line split
			// across chunks of one build, another build's chunk in between.
			u64b(stderrNext), strb("@ build-log 42 8\n"),
			u64b(stderrNext), strb("hello wo"),
			u64b(stderrNext), strb("@ build-log 43 6\nother\n@ build-log 42 4\nrld\n"),
			u64b(stderrNext), strb("a daemon message\n"),
			// A payload containing what looks like a header, and bytes
			// that are not UTF-8.
			u64b(stderrNext), strb("@ build-log 42 19\n@ build-log 1 1\n\xfe\xff\n"),
			u64b(stderrNext), strb("@ build-log 44 4\ntail"),
			u64b(stderrNext), strb("@ build-succeeded "+drv+" -\n"),
			u64b(stderrLast), u64b(1))
		p.untilEOF()
	})
	defer c.Close()
	ctx := testCtx(t)
	err := c.SetOptions(ctx, Options{
		KeepGoing: true, UseSubstitutes: true, PrintBuildTrace: true, MultiplexedBuildOutput: true,
		SubstituteURLs: []string{"https://a.example", "https://b.example"}, TrustedPublicKeys: []string{"ignored"},
		BuildTimeout: 90 * time.Second, MaxSilentTime: 1500 * time.Millisecond, MaxJobs: 3, Cores: 2,
		Overrides: [][2]string{{"print-extended-build-trace", "1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"substitute-urls": "https://a.example https://b.example", "build-timeout": "90",
		"build-max-silent-time": "2", "build-max-jobs": "3", "build-cores": "2",
		"multiplexed-build-output": "true", "print-extended-build-trace": "1",
	}
	if m := <-got; !mapsEqual(m, want) {
		t.Errorf("overrides %v, want %v", m, want)
	}
	var lines collect
	if err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, lines.sink); err != nil {
		t.Fatal(err)
	}
	if got, want := lines.of(LogBuild), []string{"other", "hello world", "@ build-log 1 1", "\xfe\xff", "tail"}; !slices.Equal(got, want) {
		t.Errorf("build lines %q, want %q", got, want)
	}
	if got := lines.of(LogTrace); len(got) != 2 || !strings.HasPrefix(got[0], "@ build-started") || !strings.HasPrefix(got[1], "@ build-succeeded") {
		t.Errorf("trace lines %q", got)
	}
	if got := lines.of(LogDaemon); !slices.Equal(got, []string{"a daemon message"}) {
		t.Errorf("daemon lines %q", got)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestSetOptionsLayouts(t *testing.T) {
	t.Run("Nix", func(t *testing.T) {
		got := make(chan []any, 1)
		c := fakeConn(t, 0x122, func(p *peer) {
			p.expect("op", opSetOptions)
			var v []any
			for range 12 {
				v = append(v, p.u64())
			}
			n := p.u64()
			for range n {
				v = append(v, p.str()+"="+p.str())
			}
			p.send(u64b(stderrLast))
			got <- v
			p.untilEOF()
		})
		defer c.Close()
		err := c.SetOptions(testCtx(t), Options{KeepFailed: true, TryFallback: true, MaxSilentTime: time.Minute, Cores: 4,
			SubstituteURLs: []string{"s3://x"}, TrustedPublicKeys: []string{"k:1", "k:2"}, BuildTimeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		want := []any{uint64(1), uint64(0), uint64(1), uint64(nixVerbosity), uint64(1), uint64(60), uint64(1), uint64(0), uint64(0), uint64(0), uint64(4), uint64(0),
			"substituters=s3://x", "trusted-public-keys=k:1 k:2", "timeout=3600", "narinfo-cache-negative-ttl=0"}
		if v := <-got; !slices.Equal(v, want) {
			t.Errorf("SetOptions sent %v\nwant %v", v, want)
		}
	})
	t.Run("OldGuix", func(t *testing.T) {
		// Below 0x61 Guix still reads max-jobs, max-silent-time and cores.
		got := make(chan []uint64, 1)
		c := fakeConn(t, 0x160, func(p *peer) {
			p.expect("op", opSetOptions)
			var v []uint64
			for range 12 {
				v = append(v, p.u64())
			}
			n := p.u64()
			for range n {
				p.str()
				p.str()
			}
			p.send(u64b(stderrLast))
			got <- v
			p.untilEOF()
		})
		defer c.Close()
		if err := c.SetOptions(testCtx(t), Options{MaxJobs: 5, MaxSilentTime: time.Minute, Cores: 3}); err != nil {
			t.Fatal(err)
		}
		want := []uint64{0, 0, 0, 0, 5, 60, 1, 0, 0, 0, 3, 0}
		if v := <-got; !slices.Equal(v, want) {
			t.Errorf("SetOptions sent %v, want %v", v, want)
		}
	})
}

// testNAR is the NAR of a small tree with a file of size not a multiple of
// 8, an executable, a symlink and entries named like NAR keywords.
func testNAR(t *testing.T) []byte {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for name, content := range map[string]string{"a": "hello\n", "contents": ")", "(": "", "sub/run.sh": "#!/bin/sh\necho hi\n"} {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "sub/run.sh"), 0o755)
	os.Symlink(")", filepath.Join(root, "link"))
	var b bytes.Buffer
	if err := nar.Dump(&b, root); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// guixPathInfo answers QueryPathInfo in Guix's layout.
func (p *peer) guixPathInfo(path string, narBytes []byte) {
	p.expect("op", opQueryPathInfo)
	if got := p.str(); got != path {
		panic(peerFail{fmt.Errorf("path info of %q", got)})
	}
	h := nar.NewHashingWriter()
	h.Write(narBytes)
	p.send(u64b(stderrLast), strb(""), strb(fmt.Sprintf("%x", h.SumBytes())), strsb(), u64b(1700000000), u64b(uint64(len(narBytes))))
}

// chunks cuts b into STDERR_WRITE messages of odd sizes with log text in
// between.
func chunks(b []byte) []byte {
	var out []byte
	for i, size := 0, 1; len(b) > 0; i, size = i+1, size*3+1 {
		k := min(size, len(b))
		out = append(out, cat(u64b(stderrWrite), strb(string(b[:k])))...)
		b = b[k:]
		if i%2 == 0 {
			out = append(out, cat(u64b(stderrNext), strb("exporting\n"))...)
		}
	}
	return out
}

func TestGuixExportTrailer(t *testing.T) {
	const path = "/gnu/store/00000000000000000000000000000000-x"
	narBytes := testNAR(t)
	record := func(p string, hasSig uint64) []byte {
		r := cat(narBytes, u64b(exportMagic), strb(p), strsb("/gnu/store/11111111111111111111111111111111-y"), strb(""), u64b(hasSig))
		if hasSig == 1 {
			r = append(r, strb("(signature ...)")...)
		}
		return r
	}
	c := fakeConn(t, 0x164, func(p *peer) {
		for i, rec := range [][]byte{record(path, 0), record(path, 1), record(path+"-other", 0)} {
			p.guixPathInfo(path, narBytes)
			p.expect("op", opExportPath)
			p.str()
			p.expect("sign", 0)
			msg := cat(chunks(rec), u64b(stderrWrite), strb(""), u64b(stderrLast), u64b(1))
			if i < 2 {
				p.send(msg)
			} else {
				p.nc.Write(msg) // the client stops reading at the wrong path
			}
		}
		p.untilEOF()
	})
	defer c.Close()
	ctx := testCtx(t)
	for i := range 2 {
		r, err := c.Nar(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("export %d: %v", i, err)
		}
		if !bytes.Equal(got, narBytes) {
			t.Fatalf("export %d: %d bytes, want the %d of the NAR", i, len(got), len(narBytes))
		}
	}
	r, err := c.Nar(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, ErrProtocol) {
		t.Errorf("export of another path: %v, want ErrProtocol", err)
	}
}

func TestGuixImportRead(t *testing.T) {
	const path = "/gnu/store/00000000000000000000000000000000-x"
	const ref = "/gnu/store/11111111111111111111111111111111-y"
	const drv = "/gnu/store/22222222222222222222222222222222-x.drv"
	narBytes := testNAR(t)
	want := cat(u64b(1), narBytes, u64b(exportMagic), strb(path), strsb(ref), strb(drv), u64b(1), strb("(sig)"), u64b(0))
	got := make(chan []byte, 1)
	c := fakeConn(t, 0x164, func(p *peer) {
		p.expect("op", opImportPaths)
		var stream []byte
		for len(stream) < len(want) {
			// Odd request sizes, and log text between them.
			p.send(u64b(stderrNext), strb("importing\n"), u64b(stderrRead), u64b(uint64(7+len(stream)%5)))
			chunk := p.str()
			if len(chunk) == 0 || len(chunk) > 7+len(stream)%5 {
				panic(peerFail{fmt.Errorf("READ answer of %d bytes", len(chunk))})
			}
			stream = append(stream, chunk...)
		}
		// One more: the end.
		p.send(u64b(stderrRead), u64b(100))
		if s := p.str(); s != "" {
			panic(peerFail{fmt.Errorf("data after the end: %q", s)})
		}
		got <- stream
		p.send(u64b(stderrLast), strsb(path))
		p.untilEOF()
	})
	defer c.Close()
	info := PathInfo{Path: path, Deriver: drv, References: []string{ref}}
	if err := c.Import(testCtx(t), info, bytes.NewReader(narBytes), "(sig)"); err != nil {
		t.Fatal(err)
	}
	if s := <-got; !bytes.Equal(s, want) {
		t.Errorf("the daemon read %d bytes, want %d:\n%q\n%q", len(s), len(want), s, want)
	}
}

func TestHugeLengthsRejected(t *testing.T) {
	const path = "/gnu/store/00000000000000000000000000000000-x"
	for _, tc := range []struct {
		name  string
		reply []byte
	}{
		{"NextString", cat(u64b(stderrNext), u64b(1<<40))},
		{"ErrorMessage", cat(u64b(stderrError), u64b(1<<62))},
		{"ListCount", cat(u64b(stderrLast), u64b(1<<40))},
		{"PathInList", cat(u64b(stderrLast), u64b(1), u64b(1<<20))},
		{"Fields", cat(u64b(stderrResult), u64b(1), u64b(101), u64b(1<<33))},
		{"FieldKind", cat(u64b(stderrResult), u64b(1), u64b(101), u64b(1), u64b(7))},
		{"UnknownMessage", cat(u64b(0x1234))},
		{"NonZeroPadding", cat(u64b(stderrNext), u64b(3), []byte("abc\x00\x00\x00\x00\x01"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeConn(t, 0x122, func(p *peer) {
				p.expect("op", opQueryValidPaths)
				p.strs()
				p.u64()
				p.nc.Write(tc.reply) // the client may hang up before reading it all
				p.untilEOF()
			})
			defer c.Close()
			_, err := c.QueryValidPaths(testCtx(t), []string{path}, false)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("QueryValidPaths = %v, want ErrProtocol", err)
			}
			if _, err := c.IsValidPath(testCtx(t), path); !errors.Is(err, ErrClosed) {
				t.Errorf("after a protocol error: %v, want ErrClosed", err)
			}
		})
	}
}

func TestCancelFake(t *testing.T) {
	const drv = "/gnu/store/00000000000000000000000000000000-x.drv"
	c := fakeConn(t, 0x122, func(p *peer) {
		p.expect("op", opBuildPaths)
		p.strs()
		p.u64()
		p.send(u64b(stderrNext), strb("building forever\n"))
		p.untilEOF() // the client's hang-up is what a daemon sees
	})
	ctx, cancel := context.WithCancel(context.Background())
	t0 := time.Now()
	err := c.BuildPaths(ctx, []DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, BuildNormal, func(l LogLine) { cancel() })
	if !errors.Is(err, context.Canceled) || time.Since(t0) > time.Second {
		t.Errorf("BuildPaths = %v after %v, want context.Canceled at once", err, time.Since(t0))
	}
	if _, err := c.IsValidPath(context.Background(), drv); !errors.Is(err, ErrClosed) {
		t.Errorf("after cancel: %v", err)
	}
	// A context that is done before the call sends nothing.
	c2 := fakeConn(t, 0x122, func(p *peer) { p.untilEOF() })
	defer c2.Close()
	if _, err := c2.IsValidPath(ctx, drv); !errors.Is(err, context.Canceled) {
		t.Errorf("with a canceled context: %v", err)
	}
	if _, err := c2.IsValidPath(context.Background(), "not a path"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad path: %v", err)
	}
	c2.Close()
}
