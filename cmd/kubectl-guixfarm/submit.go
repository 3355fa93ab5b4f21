package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/cli"
	"github.com/guixfarm/guix-farm/internal/storepath"
	"github.com/guixfarm/guix-farm/internal/submit"
)

const submitUsage = `Publish derivations to the farm and create one Build per derivation.

Usage:
  kubectl guixfarm submit [flags] DRV...

Each DRV is a .drv store path in the local store (guix build -d, nix-instantiate). submit reads
the .drv files and everything they refer to (input .drv files, sources) from the local daemon,
uploads what the bucket lacks as signed narinfos and nars, then creates one Build per
derivation, named <name>-<first 10 characters of the hash> (e.g. hello-2.12.1-0ga1ynkzg5), so
submitting again finds the same Build: it prints one line per Build,

  build/<name> created <drv>      a new Build
  build/<name> unchanged <drv>    a Build of that derivation was there (its spec is left as is)

With --all-missing it also creates a Build for every input derivation, recursively, whose
outputs the bucket lacks, inputs first.

Examples:
  export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  kubectl guixfarm -n guix-farm submit --bucket-endpoint http://minio:9000 --bucket guix-farm-cache \
      --signing-keys /etc/guix-farm/nix-signing-key.sec $(guix build -d hello)
  kubectl guixfarm submit --all-missing --priority 100 -l tag=core-updates \
      --timeout 10h --max-silent 1h $(guix build -d hello coreutils)
`

func bindSubmit(fs *pflag.FlagSet, g *common, e env) func(ctx context.Context, args []string) error {
	var (
		socket             string
		keyFiles           []string
		allowUnsigned      bool
		o                  submit.Options
		labels             []string
		timeout, maxSilent int32
	)
	fs.StringVar(&socket, "daemon-socket", envOr(e, "GUIX_DAEMON_SOCKET", "/var/guix/daemon-socket/socket"),
		"the local guix-daemon or nix-daemon socket the .drv closures are read from ($GUIX_DAEMON_SOCKET when set)")
	fs.StringSliceVar(&keyFiles, "signing-keys", cli.SplitList(e.Getenv("GUIXFARM_SIGNING_KEYS")),
		"signing key files for the narinfos of what is uploaded: Guix's signing-key.sec and/or a Nix secret key, comma-separated or repeated (default: $GUIXFARM_SIGNING_KEYS)")
	fs.BoolVar(&allowUnsigned, "allow-unsigned", false,
		"upload unsigned narinfos; only for farms whose agents' daemons run with require-sigs = false (others refuse to substitute them)")
	fs.Int32Var(&o.Priority, "priority", 0, "spec.priority of the Builds, -1000000 to 1000000; higher builds first, and inputs inherit it")
	fs.StringArrayVarP(&labels, "label", "l", nil, "a label key=value on the Builds (repeatable; kubectl get builds -l key=value)")
	fs.Var(secondsFlag{&timeout}, "timeout", "spec.timeoutSeconds: each attempt's build-time limit, e.g. 10h (default: the agent's)")
	fs.Var(secondsFlag{&maxSilent}, "max-silent", "spec.maxSilentSeconds: how long a build may print nothing, e.g. 1h (default: the agent's)")
	fs.BoolVar(&o.AllMissing, "all-missing", false, "also create Builds for every input derivation, recursively, whose outputs the bucket lacks")
	return func(ctx context.Context, drvs []string) error {
		if len(drvs) == 0 {
			return errors.New("submit: no derivation given: name one or more .drv store paths, e.g. kubectl guixfarm submit $(guix build -d hello)")
		}
		if o.Priority < -1000000 || o.Priority > 1000000 {
			return fmt.Errorf("submit: --priority %d is out of range: give -1000000 to 1000000", o.Priority)
		}
		var err error
		if o.Labels, err = parseLabels(labels); err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		if timeout > 0 {
			o.TimeoutSeconds = &timeout
		}
		if maxSilent > 0 {
			o.MaxSilentSeconds = &maxSilent
		}
		dir := storepath.Dir(g.storeDir)
		for _, d := range drvs {
			if _, err := dir.ParseDerivation(d); err != nil {
				return fmt.Errorf("submit: %w (--store-dir is %s)", err, dir)
			}
		}
		cfg, err := g.bucketConfig(e, true)
		if err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		if len(keyFiles) == 0 && !allowUnsigned {
			return errors.New("submit: --signing-keys is not set: give the key files narinfos are signed with (the farm's, from guix-farm-controller keygen, or a key its agents trust); agents' daemons refuse unsigned .drv narinfos, so unsigned uploads need --allow-unsigned and a farm that requires no signatures")
		}
		cfg.KeyFiles, cfg.AllowUnsigned = keyFiles, allowUnsigned && len(keyFiles) == 0
		pub, err := bucket.NewPublisher(cfg)
		if err != nil {
			return fmt.Errorf("submit: --bucket-endpoint/--bucket/--signing-keys: %w", err)
		}
		reader, err := bucket.NewReader(cfg, bucket.ReaderOptions{})
		if err != nil {
			return fmt.Errorf("submit: --bucket-endpoint/--bucket: %w", err)
		}
		cl, ns, err := g.kube()
		if err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		o.Namespace = ns
		store := &submit.DaemonStore{Socket: socket}
		defer store.Close()
		s := &submit.Submitter{
			Store: store, Bucket: bucketPair{reader, pub}, Client: cl, StoreDir: dir,
			Out: e.Stdout, Progress: e.Stderr,
		}
		if _, err := s.Submit(ctx, drvs, o); err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		return nil
	}
}

// bucketPair is the bucket as submit uses it: lookups through the reader (cached HEADs),
// uploads through the publisher.
type bucketPair struct {
	*bucket.Reader
	*bucket.Publisher
}

func (b bucketPair) Has(ctx context.Context, storePath string) (bool, error) {
	return b.Reader.Has(ctx, storePath)
}

func (b bucketPair) PublishClosure(ctx context.Context, items []bucket.StoreItem, parallel int) ([]bucket.Result, error) {
	return b.Publisher.PublishClosure(ctx, items, parallel)
}

var _ submit.Bucket = bucketPair{}

func envOr(e env, k, def string) string {
	if v := e.Getenv(k); v != "" {
		return v
	}
	return def
}
