// Command kubectl-guixfarm is the farm's kubectl plugin (`kubectl guixfarm ...` once on PATH):
//
//	kubectl guixfarm submit [flags] DRV...   publish the .drv closures the bucket lacks, create the Builds
//	kubectl guixfarm logs [flags] BUILD      print (-f: follow) a build's log from the bucket
//
// The work is done by internal/submit and internal/buildlog; this file parses the command line
// and connects them to the apiserver, the bucket and the local daemon. Listing and waiting stay
// kubectl's own: kubectl get builds, kubectl wait. docs/kubectl-guixfarm.md is the manual.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "kubectl guixfarm:", err)
		os.Exit(1)
	}
}

// env is what a run sees of its process, so tests run commands without touching the real one.
type env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}
