package main

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// goBuild builds the commands pkgs (e.g. ./cmd/guix-farm-agent) of the module in dir for
// linux/arch, in one go build so that their links run in parallel, and returns each binary by
// package. They are static (no cgo, so no libc and no loader in the image) and the same bytes for
// the same source: -trimpath drops the build host's paths, -buildid= the build ID.
func goBuild(ctx context.Context, dir, tmp, arch string, pkgs []string) (map[string][]byte, error) {
	out := filepath.Join(tmp, arch)
	args := append([]string{"build", "-trimpath", "-ldflags", "-s -w -buildid=", "-o", out + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s for linux/%s: %w", strings.Join(pkgs, " "), arch, err)
	}
	bins := map[string][]byte{}
	for _, pkg := range pkgs {
		file := filepath.Join(out, filepath.Base(pkg))
		if err := requireStatic(file); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading the binary of %s: %w", pkg, err)
		}
		bins[pkg] = data
	}
	return bins, nil
}

// requireStatic fails for an ELF that asks for a program interpreter (a dynamic loader): the
// images that hold it have none.
func requireStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("reading ELF %s: %w", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it has a PT_INTERP), the image has no loader", file)
		}
	}
	return nil
}
