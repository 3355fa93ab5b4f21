package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/buildlog"
	"github.com/guixfarm/guix-farm/internal/buildname"
)

const logsUsage = `Print a Build's log from the farm's bucket.

Usage:
  kubectl guixfarm logs [flags] BUILD

BUILD is a Build's name (as submit prints it, with or without "build/"), or a .drv path: the
Build named after it, or, when there is none (deleted after its TTL), the derivation's log in the
bucket. Agents upload an attempt's whole log every few seconds while it runs; -f prints it as it
grows (read every 2 s), waits for a Build that has not started, goes on with each retry, and
ends when the Build finishes. What the command itself says (waiting, attempts) goes to stderr.
The bucket is read anonymously unless $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY are set.

Examples:
  kubectl guixfarm logs hello-2.12.1-0ga1ynkzg5
  kubectl guixfarm logs -f build/hello-2.12.1-0ga1ynkzg5
  kubectl guixfarm logs --attempt 1 hello-2.12.1-0ga1ynkzg5      # the first attempt's log
  kubectl guixfarm logs /gnu/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-hello-2.12.1.drv
`

func bindLogs(fs *pflag.FlagSet, g *common, e env) func(ctx context.Context, args []string) error {
	var o buildlog.Options
	fs.BoolVarP(&o.Follow, "follow", "f", false, "follow the log while the Build runs, until it finishes")
	fs.IntVar(&o.Attempt, "attempt", 0, "the attempt whose log to print, counted from 1 (default 0: the latest)")
	return func(ctx context.Context, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("logs: give one Build name (kubectl get builds lists them), got %d arguments", len(args))
		}
		if o.Attempt < 0 {
			return fmt.Errorf("logs: --attempt %d: attempts count from 1; 0 (the default) is the latest", o.Attempt)
		}
		cfg, err := g.bucketConfig(e, false)
		if err != nil {
			return fmt.Errorf("logs: %w", err)
		}
		reader, err := bucket.NewReader(cfg, bucket.ReaderOptions{})
		if err != nil {
			return fmt.Errorf("logs: --bucket-endpoint/--bucket: %w", err)
		}
		cl, ns, err := g.kube()
		if err != nil {
			return fmt.Errorf("logs: %w", err)
		}
		p := &buildlog.Printer{Logs: reader, Out: e.Stdout, Notes: e.Stderr}
		name, drv := strings.TrimPrefix(strings.TrimPrefix(args[0], "builds/"), "build/"), ""
		if strings.HasPrefix(args[0], "/") {
			drv = args[0]
			if name, err = buildname.For(drv); err != nil {
				return fmt.Errorf("logs: %w", err)
			}
		}
		get := func(ctx context.Context) (*farmv1.Build, error) {
			b := &farmv1.Build{}
			if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, b); err != nil {
				if apierrors.IsNotFound(err) {
					return nil, fmt.Errorf("build/%s not found in namespace %s (-n picks the farm's namespace; kubectl get builds lists them): %w", name, ns, err)
				}
				return nil, fmt.Errorf("reading build/%s in namespace %s: %w", name, ns, err)
			}
			return b, nil
		}
		if drv != "" {
			b, err := get(ctx)
			switch {
			case err == nil && b.Spec.Derivation != drv:
				return fmt.Errorf("logs: build/%s is for %s, not %s: give the Build's name", name, b.Spec.Derivation, drv)
			case apierrors.IsNotFound(err) && !o.Follow:
				// No Build (any more): the bucket keeps the derivation's logs.
				if err := p.Derivation(ctx, drv, o.Attempt); err != nil {
					return fmt.Errorf("logs: %w", err)
				}
				return nil
			case err != nil:
				return fmt.Errorf("logs: %w", err)
			}
		}
		if err := p.Build(ctx, name, get, o); err != nil {
			return fmt.Errorf("logs: %w", err)
		}
		return nil
	}
}
