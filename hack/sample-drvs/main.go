// Command sample-drvs writes a few valid synthetic .drv files (paths computed as Nix and Guix do) and
// the Build manifests that ask the farm to build them. hack/run-farm.sh uses it to give `make run`
// something to do without a real store.
//
//	go run ./hack/sample-drvs -dir DRVDIR -builds builds.yaml -namespace guix-farm
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sample-drvs:", err)
		os.Exit(1)
	}
}

// sample is one derivation of the demo graph: inputs name earlier samples of the same system.
type sample struct {
	name     string
	priority int
	inputs   []string
}

// graph is a small toolchain-shaped DAG, built once per system.
var graph = []sample{
	{name: "bootstrap-binaries-0"},
	{name: "gcc-toolchain-14.3.0", inputs: []string{"bootstrap-binaries-0"}},
	{name: "coreutils-9.1", inputs: []string{"gcc-toolchain-14.3.0"}},
	{name: "hello-2.12.1", priority: 100, inputs: []string{"gcc-toolchain-14.3.0"}},
}

func run() error {
	dir := flag.String("dir", "", "directory to write the .drv files into (the controller's --drv-dir)")
	builds := flag.String("builds", "", "file to write the Build manifests to (default: stdout)")
	namespace := flag.String("namespace", "guix-farm", "namespace of the Builds")
	store := flag.String("store", string(storepath.DefaultDir), "store directory of the derivation paths")
	systems := flag.String("systems", "x86_64-linux,aarch64-linux", "comma-separated systems to make the graph for")
	salt := flag.Int("salt", 0, "a non-zero salt makes new derivations (and Build names ending in -SALT) for another round")
	flag.Parse()
	if *dir == "" {
		return fmt.Errorf("-dir is required: the directory the controller reads .drv files from")
	}
	sd := storepath.Dir(*store)
	if err := sd.Validate(); err != nil {
		return fmt.Errorf("-store: %w", err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return fmt.Errorf("creating -dir: %w", err)
	}
	var out strings.Builder
	for _, system := range strings.Split(*systems, ",") {
		byName := map[string]string{}                 // sample name -> drv path
		byPath := map[string]*derivation.Derivation{} // drv path -> derivation, to resolve inputs
		for _, s := range graph {
			drv := &derivation.Derivation{
				Outputs: []derivation.Output{{Name: "out"}},
				System:  system,
				Builder: "/bin/sh",
				Args:    []string{"-c", fmt.Sprintf("echo %s %d > $out", s.name, *salt)},
				Env: []derivation.EnvVar{
					{Key: "builder", Value: "/bin/sh"}, {Key: "name", Value: s.name}, {Key: "out"}, {Key: "system", Value: system},
				},
			}
			for _, in := range s.inputs {
				drv.InputDrvs = append(drv.InputDrvs, derivation.InputDrv{Path: byName[in], Outputs: []string{"out"}})
			}
			drv.Canonicalize()
			resolve := func(p string) (*derivation.Derivation, error) {
				if d, ok := byPath[p]; ok {
					return d, nil
				}
				return nil, fmt.Errorf("unknown input derivation %s", p)
			}
			if err := drv.FillOutputPaths(sd, s.name, resolve); err != nil {
				return fmt.Errorf("output paths of %s for %s: %w", s.name, system, err)
			}
			p, err := drv.DrvPath(sd, s.name)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(*dir, filepath.Base(p)), drv.Bytes(), 0o644); err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
			byName[s.name], byPath[p] = p, drv
			fmt.Fprintf(&out, `---
apiVersion: build.guixfarm.io/v1alpha1
kind: Build
metadata:
  name: %s
  namespace: %s
  labels:
    guixfarm.io/tag-sample: "true"
    guixfarm.io/tag-system: %s
spec:
  derivation: %s
  priority: %d
  retry:
    maxAttempts: 3
    backoffSeconds: 5
`, buildName(s.name, system, *salt), *namespace, system, p, s.priority)
		}
	}
	if *builds == "" {
		_, err := os.Stdout.WriteString(out.String())
		return err
	}
	return os.WriteFile(*builds, []byte(out.String()), 0o644)
}

// buildName is a DNS subdomain name: the derivation name, the system's architecture and the salt.
func buildName(name, system string, salt int) string {
	arch, _, _ := strings.Cut(system, "-")
	n := name + "-" + arch
	if salt != 0 {
		n += fmt.Sprintf("-%d", salt)
	}
	return strings.ToLower(strings.ReplaceAll(n, "_", "-"))
}
