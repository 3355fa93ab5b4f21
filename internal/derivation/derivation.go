// Package derivation parses and prints Nix/Guix .drv files (the ATerm
// "Derive(...)" format) and computes their store and output paths for any
// store directory.
package derivation

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Derivation is a parsed .drv file. Lists keep file order; Parse only accepts
// files whose lists are sorted and free of duplicates (as Nix and Guix write
// them), so Bytes reproduces the file exactly.
type Derivation struct {
	Outputs   []Output   // sorted by Name
	InputDrvs []InputDrv // sorted by Path
	InputSrcs []string   // sorted
	System    string
	Builder   string
	Args      []string
	Env       []EnvVar // sorted by Key
}

// Output is one derivation output. HashAlgo and Hash are empty for an
// input-addressed output; a fixed output has HashAlgo "sha256" (flat) or
// "r:sha256" (NAR) and Hash in lowercase hex.
type Output struct {
	Name     string
	Path     string
	HashAlgo string
	Hash     string
}

// InputDrv is an input derivation and the outputs of it that are needed.
type InputDrv struct {
	Path    string
	Outputs []string // sorted
}

// EnvVar is one builder environment variable.
type EnvVar struct {
	Key   string
	Value string
}

// InputDerivations returns the paths of the input derivations.
func (d *Derivation) InputDerivations() []string {
	out := make([]string, len(d.InputDrvs))
	for i, in := range d.InputDrvs {
		out[i] = in.Path
	}
	return out
}

// OutputPaths maps output name to output path.
func (d *Derivation) OutputPaths() map[string]string {
	m := make(map[string]string, len(d.Outputs))
	for _, o := range d.Outputs {
		m[o.Name] = o.Path
	}
	return m
}

// Getenv returns the value of environment variable key.
func (d *Derivation) Getenv(key string) (string, bool) {
	i := sort.Search(len(d.Env), func(i int) bool { return d.Env[i].Key >= key })
	if i < len(d.Env) && d.Env[i].Key == key {
		return d.Env[i].Value, true
	}
	for _, e := range d.Env { // not sorted (built by hand): fall back to a scan
		if e.Key == key {
			return e.Value, true
		}
	}
	return "", false
}

// IsFixedOutput reports whether d is a fixed-output derivation: a single
// output "out" with a declared hash (as Nix's DerivationType::CAFixed).
func (d *Derivation) IsFixedOutput() bool {
	return len(d.Outputs) == 1 && d.Outputs[0].Name == "out" && d.Outputs[0].HashAlgo != "" && d.Outputs[0].Hash != ""
}

// Canonicalize sorts every list the way Nix and Guix write them, so that a
// Derivation built by hand prints as a file Parse accepts.
func (d *Derivation) Canonicalize() {
	sort.Slice(d.Outputs, func(i, j int) bool { return d.Outputs[i].Name < d.Outputs[j].Name })
	sort.Slice(d.InputDrvs, func(i, j int) bool { return d.InputDrvs[i].Path < d.InputDrvs[j].Path })
	for _, in := range d.InputDrvs {
		sort.Strings(in.Outputs)
	}
	sort.Strings(d.InputSrcs)
	sort.SliceStable(d.Env, func(i, j int) bool { return d.Env[i].Key < d.Env[j].Key })
}

// Name returns the derivation name encoded in a .drv path: "hello-2.12" for
// "/gnu/store/<hash>-hello-2.12.drv". It works for any store directory.
func Name(drvPath string) (string, error) {
	_, name, err := storepath.ParseBase(path.Base(drvPath))
	if err != nil {
		return "", fmt.Errorf("derivation path %q: %w", drvPath, err)
	}
	if !strings.HasSuffix(name, storepath.DrvExt) || len(name) == len(storepath.DrvExt) {
		return "", fmt.Errorf("derivation path %q: name does not end in %s", drvPath, storepath.DrvExt)
	}
	return strings.TrimSuffix(name, storepath.DrvExt), nil
}

// OutputFact is an output name and its path.
type OutputFact struct {
	Name string
	Path string
}

// Facts is what the controller needs to know about a derivation; small
// enough to cache many of.
type Facts struct {
	Name        string       // from the .drv path, e.g. "hello-2.12"
	System      string       // e.g. "x86_64-linux"
	Outputs     []OutputFact // sorted by Name
	InputDrvs   []string     // input derivation paths, sorted
	FixedOutput bool         // a fixed-output derivation (e.g. a download)
}

// FactsOf extracts Facts from d read from drvPath. If drvPath carries no
// valid name, Name falls back to the "name" environment variable.
func FactsOf(d *Derivation, drvPath string) Facts {
	name, err := Name(drvPath)
	if err != nil {
		name, _ = d.Getenv("name")
	}
	f := Facts{
		Name:        name,
		System:      d.System,
		Outputs:     make([]OutputFact, len(d.Outputs)),
		InputDrvs:   d.InputDerivations(),
		FixedOutput: d.IsFixedOutput(),
	}
	for i, o := range d.Outputs {
		f.Outputs[i] = OutputFact{Name: o.Name, Path: o.Path}
	}
	sort.Slice(f.Outputs, func(i, j int) bool { return f.Outputs[i].Name < f.Outputs[j].Name })
	sort.Strings(f.InputDrvs)
	return f
}

// OutputPath returns the path of output name.
func (f Facts) OutputPath(name string) (string, bool) {
	for _, o := range f.Outputs {
		if o.Name == name {
			return o.Path, true
		}
	}
	return "", false
}
