// Package gccmd is the "gc" subcommand of guix-farm-controller: one
// reference-aware collection of the substitute bucket, configured by flags.
package gccmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-logr/logr"
	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/gc/bucketgc"
)

// Deps are what the caller provides besides the flags.
type Deps struct {
	// Roots, when set, are the farm's roots (what its live Builds need and
	// produced), asked with --policy roots. Without them, only the declared
	// policy (--keep-*, --roots-file, --roots-key) and the grace period
	// protect anything.
	Roots gc.Roots
	// OnDeleted is passed to the run (see bucketgc.Options).
	OnDeleted func(storePaths, derivers []string)
	// Getenv reads credentials (default os.Getenv).
	Getenv func(string) string
	Log    logr.Logger
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// Command runs "gc" with args (the words after "gc") and writes the report
// to stdout. It returns flag.ErrHelp for -h.
//
//	guix-farm-controller gc --endpoint http://minio:9000 --bucket substitutes --grace 24h --dry-run
func Command(ctx context.Context, args []string, stdout io.Writer, deps Deps) error {
	getenv := deps.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var (
		endpoint    = fs.String("endpoint", "", "S3 endpoint: host:port, or http(s)://host[:port]")
		secure      = fs.Bool("secure", false, "use HTTPS with a host:port endpoint")
		region      = fs.String("region", "us-east-1", "S3 region")
		bucketName  = fs.String("bucket", "", "the bucket that serves substitutes")
		accessKey   = fs.String("access-key", "", "S3 access key (default $AWS_ACCESS_KEY_ID)")
		secretKey   = fs.String("secret-key", "", "S3 secret key (default $AWS_SECRET_ACCESS_KEY)")
		grace       = fs.Duration("grace", bucketgc.DefaultGrace, "never delete objects younger than this (uploads in flight)")
		dryRun      = fs.Bool("dry-run", false, "print what would be deleted and why, delete nothing")
		policy      = fs.String("policy", string(gc.ModeOrphans), "orphans: delete only nars no narinfo names; roots: also the substitutes no kept root reaches (needs --keep-*, --roots-file or --roots-key)")
		maxAge      = fs.Duration("keep-max-age", 0, "keep everything published within this duration, e.g. 720h (0: off)")
		rootsFile   = fs.String("roots-file", "", "file of store paths to keep, one per line (# comments)")
		rootsKey    = fs.String("roots-key", "", "object of the bucket listing store paths to keep, one per line, e.g. gc/roots")
		deleteMiss  = fs.Bool("delete-missing-nar", false, "delete narinfos whose nar is missing (always reported)")
		allowNone   = fs.Bool("allow-no-roots", false, "run even with no roots and no --keep-* selector (collects everything older than --grace)")
		noFarm      = fs.Bool("without-farm-roots", false, "with --policy roots, collect without the farm's live Builds as roots, which this command does not know: only for a bucket no running farm uses")
		concurrency = fs.Int("concurrency", bucketgc.DefaultConcurrency, "narinfo reads in flight")
		narPrefix   = fs.String("nar-prefix", gc.DefaultNarPrefix, "where nars live in the bucket")
		globs       listFlag
		paths       listFlag
	)
	fs.Var(&globs, "keep-name", "keep store paths whose name matches this glob, e.g. 'guile-*' (repeatable)")
	fs.Var(&paths, "keep-path", "keep this store path and its closure (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("gc: unexpected arguments %q: give store paths with --keep-path or --roots-file", fs.Args())
	}
	if *endpoint == "" || *bucketName == "" {
		return errors.New("gc: --endpoint and --bucket are required, e.g. --endpoint http://minio.guix-farm:9000 --bucket substitutes")
	}
	if *grace <= 0 {
		return fmt.Errorf("gc: --grace must be positive (it protects uploads between their nar and narinfo), e.g. --grace 24h")
	}
	if err := (gc.RootSelector{NameGlobs: globs}).Validate(); err != nil {
		return err
	}
	mode, err := gc.ParseMode(*policy)
	if err != nil {
		return fmt.Errorf("gc: --policy: %w", err)
	}
	if mode == gc.ModeRoots && deps.Roots == nil && !*noFarm {
		return errors.New("gc: --policy roots here does not know the farm's live Builds, whose inputs and outputs would look like garbage: " +
			"run it in the controller (--gc-interval, --gc-dry-run to see what it would delete), " +
			"or pass --without-farm-roots for a bucket no running farm uses")
	}
	if *accessKey == "" {
		*accessKey = getenv("AWS_ACCESS_KEY_ID")
	}
	if *secretKey == "" {
		*secretKey = getenv("AWS_SECRET_ACCESS_KEY")
	}
	client, err := NewClient(*endpoint, *secure, *region, *accessKey, *secretKey)
	if err != nil {
		return err
	}
	var declared gc.Roots // nil unless a file is given: its presence declares a policy
	if *rootsFile != "" {
		list, err := readRoots(*rootsFile)
		if err != nil {
			return err
		}
		declared = gc.StaticRoots(list)
	}
	rep, err := bucketgc.Run(ctx, bucketgc.Options{
		Client: client, Bucket: *bucketName, DryRun: *dryRun, Grace: *grace, Mode: mode,
		Roots: deps.Roots, Declared: declared, RootsKey: *rootsKey,
		Keep:         gc.RootSelector{MaxAge: *maxAge, NameGlobs: globs, Paths: paths},
		AllowNoRoots: *allowNone, DeleteMissingNar: *deleteMiss, Concurrency: *concurrency,
		NarPrefix: *narPrefix, OnDeleted: deps.OnDeleted, Log: deps.Log,
	})
	if rep == nil && err != nil {
		return fmt.Errorf("gc: %w (flags: --policy, --keep-*, --roots-file, --roots-key)", err)
	}
	if rep != nil {
		if _, werr := rep.WriteTo(stdout); werr != nil && err == nil {
			err = fmt.Errorf("gc: writing the report: %w", werr)
		}
	}
	return err
}

func readRoots(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("gc: --roots-file: %w", err)
	}
	defer f.Close()
	return gc.ParseRootsList(f, name)
}

// NewClient makes the S3 client GC runs with.
func NewClient(endpoint string, secure bool, region, accessKey, secretKey string) (*minio.Client, error) {
	c, err := bucket.NewClient(bucket.Config{Endpoint: endpoint, Secure: secure, Region: region, AccessKey: accessKey, SecretKey: secretKey})
	if err != nil {
		return nil, fmt.Errorf("gc: --endpoint: %w", err)
	}
	return c, nil
}
