package derivation

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// realDrv is one testdata entry produced by hack/gen-drv-testdata.sh.
type realDrv struct {
	file    string
	drvPath string
	outputs map[string]string
	data    []byte
}

func loadTestdata(t testing.TB) map[string]realDrv { return loadDir(t, "testdata") }

func loadDir(t testing.TB, dir string) map[string]realDrv {
	t.Helper()
	manifest, err := os.ReadFile(filepath.Join(dir, "paths.txt"))
	if err != nil {
		t.Fatalf("read manifest (regenerate with hack/gen-drv-testdata.sh): %v", err)
	}
	all := map[string]realDrv{}
	for _, line := range strings.Split(strings.TrimSpace(string(manifest)), "\n") {
		f := strings.Fields(line)
		r := realDrv{file: f[0] + ".drv", drvPath: f[1], outputs: map[string]string{}}
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, "=")
			r.outputs[k] = v
		}
		if r.data, err = os.ReadFile(filepath.Join(dir, r.file)); err != nil {
			t.Fatal(err)
		}
		all[r.drvPath] = r
	}
	if len(all) < 6 {
		t.Fatalf("testdata has %d derivations, want at least 6", len(all))
	}
	return all
}

func resolverOf(t testing.TB, all map[string]realDrv) Resolver {
	return func(p string) (*Derivation, error) {
		r, ok := all[p]
		if !ok {
			return nil, fmt.Errorf("%s not in testdata", p)
		}
		return Parse(r.data)
	}
}

func TestRealDerivations(t *testing.T) { checkReal(t, loadTestdata(t)) }

func checkReal(t *testing.T, all map[string]realDrv) {
	resolve := resolverOf(t, all)
	for drvPath, r := range all {
		t.Run(r.file, func(t *testing.T) {
			d, err := Parse(r.data)
			if err != nil {
				t.Fatal(err)
			}
			if got := d.Bytes(); !bytes.Equal(got, r.data) {
				t.Fatalf("round trip differs:\n got %s\nwant %s", got, r.data)
			}
			if diff := cmp.Diff(r.outputs, d.OutputPaths()); diff != "" {
				t.Errorf("OutputPaths (-nix +parsed):\n%s", diff)
			}
			name, err := Name(drvPath)
			if err != nil {
				t.Fatal(err)
			}
			if env, _ := d.Getenv("name"); env != name {
				t.Errorf("Name(%s) = %q, env name = %q", drvPath, name, env)
			}
			got, err := d.DrvPath(storepath.DefaultDir, name)
			if err != nil || got != drvPath {
				t.Errorf("DrvPath = %s, %v; nix made %s", got, err, drvPath)
			}
			outs, err := d.ComputeOutputPaths(storepath.DefaultDir, name, resolve)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(r.outputs, outs); diff != "" {
				t.Errorf("ComputeOutputPaths (-nix +computed):\n%s", diff)
			}
			// Filling a masked copy reproduces the file exactly.
			m, _ := Parse(r.data)
			for i := range m.Outputs {
				m.Outputs[i].Path = ""
			}
			if err := m.FillOutputPaths(storepath.DefaultDir, name, resolve); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(m.Bytes(), r.data) {
				t.Errorf("FillOutputPaths gives\n%s\nwant\n%s", m.Bytes(), r.data)
			}
		})
	}
}

// TestGenerator reruns hack/gen-drv-testdata.sh (real nix-instantiate, a
// private store) into a temp dir: the output must pass the same checks, and
// the files that do not depend on the installed busybox must equal testdata.
func TestGenerator(t *testing.T) {
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		if os.Getenv("GUIXFARM_REQUIRE_TESTBED") == "1" {
			t.Fatal("nix-instantiate not found: run hack/tools.sh nix")
		}
		t.Skip("nix-instantiate not found (hack/tools.sh nix installs it)")
	}
	if testing.Short() {
		t.Skip("runs nix-instantiate")
	}
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "../../hack/gen-drv-testdata.sh")
	cmd.Env = append(os.Environ(), "OUT_DIR="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen-drv-testdata.sh: %v\n%s", err, b)
	}
	fresh := loadDir(t, out)
	checkReal(t, fresh)
	for _, name := range []string{"demo.drv", "fod.drv", "dep.drv", "fodrec.drv"} {
		want, _ := os.ReadFile(filepath.Join("testdata", name))
		got, _ := os.ReadFile(filepath.Join(out, name))
		if !bytes.Equal(got, want) {
			t.Errorf("regenerated %s differs from testdata:\n got %s\nwant %s", name, got, want)
		}
	}
}

// The vectors of protocols.md §6, independent of the generated testdata.
func TestProtocolVectors(t *testing.T) {
	const demo = `Derive([("out","/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","demo"),("out","/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo"),("system","x86_64-linux")])`
	d, err := Parse([]byte(demo))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := d.DrvPath(storepath.DefaultDir, "demo"); p != "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv" {
		t.Errorf("demo DrvPath = %s", p)
	}
	all := loadTestdata(t)
	want := map[string]map[string]string{
		"/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv": {"out": "/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo"},
		"/gnu/store/kacwkc0qh4ak5lybk0m9b48hamfil30z-fod.drv":  {"out": "/gnu/store/gqwqh59plvz5abnmighnp13z1ckv8p07-fod"},
		"/gnu/store/yqwr9cvqpqvsw7cn7nlmvp5f6d3gsmm3-dep.drv": {
			"out": "/gnu/store/3cs27fg72kw9sb8006yh057h840skbxq-dep",
			"lib": "/gnu/store/8zp9frfv3pkhxmavnyvxqfpbzfqzz26h-dep-lib",
		},
	}
	for drvPath, outs := range want {
		r, ok := all[drvPath]
		if !ok {
			t.Errorf("testdata lacks %s", drvPath)
			continue
		}
		d, err := Parse(r.data)
		if err != nil {
			t.Fatal(err)
		}
		name, _ := Name(drvPath)
		got, err := d.ComputeOutputPaths(storepath.DefaultDir, name, resolverOf(t, all))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(outs, got); diff != "" {
			t.Errorf("%s (-protocols.md +computed):\n%s", drvPath, diff)
		}
	}
}

func TestFactsOf(t *testing.T) {
	all := loadTestdata(t)
	const dep = "/gnu/store/yqwr9cvqpqvsw7cn7nlmvp5f6d3gsmm3-dep.drv"
	d, err := Parse(all[dep].data)
	if err != nil {
		t.Fatal(err)
	}
	want := Facts{
		Name:   "dep",
		System: "x86_64-linux",
		Outputs: []OutputFact{
			{Name: "lib", Path: "/gnu/store/8zp9frfv3pkhxmavnyvxqfpbzfqzz26h-dep-lib"},
			{Name: "out", Path: "/gnu/store/3cs27fg72kw9sb8006yh057h840skbxq-dep"},
		},
		InputDrvs: []string{
			"/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv",
			"/gnu/store/kacwkc0qh4ak5lybk0m9b48hamfil30z-fod.drv",
		},
	}
	got := FactsOf(d, dep)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FactsOf (-want +got):\n%s", diff)
	}
	if p, ok := got.OutputPath("lib"); !ok || p != want.Outputs[0].Path {
		t.Errorf("OutputPath(lib) = %q, %v", p, ok)
	}
	fod := FactsOf(mustParse(t, all["/gnu/store/kacwkc0qh4ak5lybk0m9b48hamfil30z-fod.drv"].data), "not-a-path")
	if !fod.FixedOutput || fod.Name != "fod" {
		t.Errorf("fod facts = %+v, want FixedOutput and Name from env", fod)
	}
}

func mustParse(t testing.TB, b []byte) *Derivation {
	t.Helper()
	d, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestName(t *testing.T) {
	cases := map[string]struct {
		in, want string
		wantErr  bool
	}{
		"drv":        {in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-hello-2.12.drv", want: "hello-2.12"},
		"nix store":  {in: "/nix/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-a.drv", want: "a"},
		"basename":   {in: "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-a.drv", want: "a"},
		"not drv":    {in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-a", wantErr: true},
		"only .drv":  {in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-x.drv.drv", want: "x.drv"},
		"bad hash":   {in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhe-a.drv", wantErr: true},
		"empty path": {in: "", wantErr: true},
	}
	for name, tc := range cases {
		got, err := Name(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%s: Name(%q) = %q, %v", name, tc.in, got, err)
		}
	}
}

// A synthetic farm builds derivations by hand: Fill + DrvPath must give a
// file Parse accepts and whose recomputed paths agree.
func TestSynthetic(t *testing.T) {
	dir := storepath.Dir("/gnu/store")
	leaf := &Derivation{
		Outputs: []Output{{Name: "out"}}, System: "x86_64-linux", Builder: "/bin/sh",
		Args: []string{"-c", "echo leaf > $out"}, Env: []EnvVar{{Key: "name", Value: "leaf"}, {Key: "builder", Value: "/bin/sh"}},
	}
	if err := leaf.FillOutputPaths(dir, "leaf", nil); err != nil {
		t.Fatal(err)
	}
	leafPath, err := leaf.DrvPath(dir, "leaf")
	if err != nil {
		t.Fatal(err)
	}
	top := &Derivation{
		Outputs:   []Output{{Name: "out"}, {Name: "dev"}},
		InputDrvs: []InputDrv{{Path: leafPath, Outputs: []string{"out"}}},
		System:    "x86_64-linux", Builder: "/bin/sh",
		Env: []EnvVar{{Key: "name", Value: "top"}},
	}
	resolve := func(p string) (*Derivation, error) {
		if p == leafPath {
			return leaf, nil
		}
		return nil, errors.New("unknown")
	}
	if err := top.FillOutputPaths(dir, "top", resolve); err != nil {
		t.Fatal(err)
	}
	back := mustParse(t, top.Bytes())
	outs, err := back.ComputeOutputPaths(dir, "top", resolve)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(back.OutputPaths(), outs); diff != "" {
		t.Error(diff)
	}
	if _, err := top.ComputeOutputPaths(dir, "top", nil); err == nil || !strings.Contains(err.Error(), "no resolver") {
		t.Errorf("missing resolver: err = %v", err)
	}
}

func TestHashModuloCycle(t *testing.T) {
	const p = "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-loop.drv"
	d := &Derivation{Outputs: []Output{{Name: "out"}}, InputDrvs: []InputDrv{{Path: p, Outputs: []string{"out"}}}, System: "x", Builder: "b"}
	_, err := HashModulo(d, func(string) (*Derivation, error) { return d, nil })
	if err == nil || !strings.Contains(err.Error(), "depends on itself") {
		t.Fatalf("err = %v, want a cycle error", err)
	}
}

const validMin = `Derive([("out","/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo","","")],[],[],"x86_64-linux","/bin/sh",[],[])`

func TestParseMalformed(t *testing.T) {
	const h = "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh"
	cases := map[string]struct {
		in     string
		offset int
		want   string // part of the error message
	}{
		"empty":              {in: "", offset: 0, want: `expected "Derive([", found end of input`},
		"not aterm":          {in: `{"out":1}`, offset: 0, want: `expected "Derive(["`},
		"versioned":          {in: `DrvWithVersion("xp-dyn-drv",[])`, offset: 0, want: "versioned derivations"},
		"trailing newline":   {in: validMin + "\n", offset: len(validMin), want: "end of input after the closing ')'"},
		"truncated":          {in: validMin[:40], offset: 15, want: "unterminated string"},
		"no outputs":         {in: `Derive([],[],[],"x86_64-linux","/bin/sh",[],[])`, offset: 8, want: "at least one output"},
		"bad escape":         {in: `Derive([("out","","","")],[],[],"x86\q","/bin/sh",[],[])`, offset: 36, want: `one of the escapes`},
		"raw newline":        {in: "Derive([(\"out\",\"\",\"\",\"\")],[],[],\"x86\n\",\"/bin/sh\",[],[])", offset: 36, want: "escaped control character"},
		"unsorted outputs":   {in: `Derive([("out","","",""),("lib","","","")],[],[],"s","b",[],[])`, offset: 26, want: `output names in sorted order (after "out")`},
		"duplicate env":      {in: `Derive([("out","","","")],[],[],"s","b",[],[("a","1"),("a","2")])`, offset: 55, want: `environment variables without duplicates`},
		"bad output path":    {in: `Derive([("out","/gnu/store/x","","")],[],[],"s","b",[],[])`, offset: 15, want: "output path (a store path)"},
		"input not drv":      {in: `Derive([("out","","","")],[("/gnu/store/` + h + `-a",["out"])],[],"s","b",[],[])`, offset: 28, want: "ending in .drv"},
		"traversal src":      {in: `Derive([("out","","","")],[],["/gnu/store/../../etc/passwd"],"s","b",[],[])`, offset: 30, want: "input source path (a store path)"},
		"mixed store dirs":   {in: `Derive([("out","/gnu/store/` + h + `-a","","")],[],["/nix/store/` + h + `-b"],"s","b",[],[])`, offset: 75, want: "in store directory /gnu/store"},
		"bad hash algo":      {in: `Derive([("out","","md6","00")],[],[],"s","b",[],[])`, offset: 18, want: "a hash algorithm"},
		"short hash":         {in: `Derive([("out","","sha256","00")],[],[],"s","b",[],[])`, offset: 27, want: "64 lowercase hex digits"},
		"hash without algo":  {in: `Derive([("out","","","00")],[],[],"s","b",[],[])`, offset: 21, want: "empty when the hash algorithm is empty"},
		"empty system":       {in: `Derive([("out","","","")],[],[],"","b",[],[])`, offset: 32, want: "a system"},
		"missing comma":      {in: `Derive([("out","","","")],[],[] "s","b",[],[])`, offset: 31, want: `expected ","`},
		"list separator":     {in: `Derive([("out","","","")],[],[],"s","b",["a";"b"],[])`, offset: 44, want: "',' or ']'"},
		"bad output name":    {in: `Derive([("o t","","","")],[],[],"s","b",[],[])`, offset: 9, want: "an output name"},
		"unquoted":           {in: `Derive([(out,"","","")],[],[],"s","b",[],[])`, offset: 9, want: "output name (a quoted string)"},
		"unsorted input out": {in: `Derive([("out","","","")],[("/gnu/store/` + h + `-a.drv",["out","lib"])],[],"s","b",[],[])`, offset: 87, want: "input output names in sorted order"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %v, want a *ParseError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if pe.Offset != tc.offset {
				t.Errorf("offset = %d, want %d (%v)", pe.Offset, tc.offset, err)
			}
		})
	}
}

func TestParseLimit(t *testing.T) {
	if _, err := ParseLimit([]byte(validMin), len(validMin)); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	_, err := ParseLimit([]byte(validMin), len(validMin)-1)
	if err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("over the limit: err = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(validMin))
	if entries, err := filepath.Glob("testdata/*.drv"); err == nil {
		for _, e := range entries {
			if b, err := os.ReadFile(e); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte(`Derive([("out","","sha256","")],[],[],"s","b",["\"\\\n\r\t"],[("k","v")])`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse(b)
		if err != nil {
			return
		}
		if got := d.Bytes(); !bytes.Equal(got, b) {
			t.Fatalf("parse∘print not identity:\n in %q\nout %q", b, got)
		}
		// Hashing must not panic either.
		_, _ = HashModulo(d, func(string) (*Derivation, error) { return d, nil })
	})
}

// bigDrv is a Guix-like derivation: ~50 inputs, ~100 env vars, long strings.
func bigDrv(tb testing.TB) []byte {
	dir := storepath.DefaultDir
	d := &Derivation{
		Outputs: []Output{{Name: "out"}, {Name: "debug"}, {Name: "doc"}},
		System:  "x86_64-linux",
		Builder: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-guile-3.0.9/bin/guile",
		Args:    []string{"--no-auto-compile", "-L", "/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-module-import", "/gnu/store/sgmxv4mxgx3psb5w9sp16qi9k56qpabn-hello-2.12.3-builder"},
	}
	for i := range 50 {
		p, err := dir.MakeTextPath(fmt.Sprintf("input-%d.drv", i), []byte{byte(i)}, nil)
		if err != nil {
			tb.Fatal(err)
		}
		d.InputDrvs = append(d.InputDrvs, InputDrv{Path: p.String(), Outputs: []string{"out"}})
		s, _ := dir.MakeTextPath(fmt.Sprintf("source-%d.tar.xz", i), []byte{byte(i)}, nil)
		if i%5 == 0 {
			d.InputSrcs = append(d.InputSrcs, s.String())
		}
	}
	for i := range 100 {
		d.Env = append(d.Env, EnvVar{Key: fmt.Sprintf("var%03d", i), Value: strings.Repeat("/gnu/store/sgmxv4mxgx3psb5w9sp16qi9k56qpabn-lib/lib:", 1+i%8) + "\"quoted\"\n"})
	}
	d.Env = append(d.Env, EnvVar{Key: "guix properties", Value: `((type . graft) (graft (count . 3)))`})
	if err := d.FillOutputPaths(dir, "hello-2.12.3", func(string) (*Derivation, error) {
		return &Derivation{Outputs: []Output{{Name: "out"}}, System: "x86_64-linux", Builder: "b"}, nil
	}); err != nil {
		tb.Fatal(err)
	}
	return d.Bytes()
}

func BenchmarkParse(b *testing.B) {
	data := bigDrv(b)
	if _, err := Parse(data); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
