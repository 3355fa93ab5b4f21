// Package farm helps tests stand up a farm: synthetic .drv files in a directory the controller
// reads, the controller in-process, agents as processes or in-process, and Build builders.
package farm

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Drvs writes valid synthetic .drv files (real paths, computed as Nix does) into Dir.
type Drvs struct {
	Dir    string
	Store  storepath.Dir
	byPath map[string]*derivation.Derivation
	hashes *derivation.HashCache // the inputs' modulo hashes: a big DAG is hashed once
}

// NewDrvs makes an empty drv directory under t.TempDir().
func NewDrvs(t testing.TB) *Drvs {
	return &Drvs{Dir: t.TempDir(), Store: storepath.DefaultDir, byPath: map[string]*derivation.Derivation{},
		hashes: derivation.NewHashCache()}
}

// Add writes a derivation named name for system, depending on the "out" output of inputs (drv
// paths made by earlier Adds), and returns its .drv path. salt makes otherwise equal drvs differ.
func (d *Drvs) Add(t testing.TB, name, system string, salt int, inputs ...string) string {
	t.Helper()
	return d.AddOutputs(t, name, system, salt, []string{"out"}, inputs...)
}

// AddOutputs is Add for a derivation with the given outputs.
func (d *Drvs) AddOutputs(t testing.TB, name, system string, salt int, outputs []string, inputs ...string) string {
	t.Helper()
	outs := make([]derivation.Output, len(outputs))
	for i, o := range outputs {
		outs[i] = derivation.Output{Name: o}
	}
	drv := &derivation.Derivation{
		Outputs: outs,
		System:  system,
		Builder: "/bin/sh",
		Args:    []string{"-c", fmt.Sprintf("echo %d > $out", salt)},
		Env: []derivation.EnvVar{
			{Key: "builder", Value: "/bin/sh"}, {Key: "name", Value: name}, {Key: "system", Value: system},
		},
	}
	for _, in := range inputs {
		drv.InputDrvs = append(drv.InputDrvs, derivation.InputDrv{Path: in, Outputs: []string{"out"}})
	}
	drv.Canonicalize()
	resolve := func(p string) (*derivation.Derivation, error) {
		if x, ok := d.byPath[p]; ok {
			return x, nil
		}
		return nil, fmt.Errorf("unknown input %s", p)
	}
	if err := drv.FillOutputPathsCached(d.Store, name, resolve, d.hashes); err != nil {
		t.Fatalf("computing output paths of %s: %v", name, err)
	}
	p, err := drv.DrvPath(d.Store, name)
	if err != nil {
		t.Fatalf("computing the .drv path of %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(d.Dir, filepath.Base(p)), drv.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	d.byPath[p] = drv
	return p
}
