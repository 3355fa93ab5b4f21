// Command guix-farm-controller reconciles Builds and AgentPools and plans allocations.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/controllers/builds"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/gc/bucketgc"
	"github.com/guixfarm/guix-farm/internal/gc/gccmd"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/internal/signing/keygen"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "gc" {
		// One collection of the bucket, then exit: guix-farm-controller gc --endpoint … --bucket … --dry-run
		err := gccmd.Command(context.Background(), os.Args[2:], os.Stdout, gccmd.Deps{Log: zap.New()})
		if err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "guix-farm-controller gc:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "keygen" {
		// The farm's signing keys, then exit: guix-farm-controller keygen --name cache.example.org-1 --out DIR
		if err := keygen.Command(os.Args[2:], os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "guix-farm-controller keygen:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "guix-farm-controller:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		namespace, strategy, drvDir, storeDir string
		metricsAddr, probeAddr, pprofAddr     string
		memLimit                              string
		leaderElect                           bool
		o                                     controllers.Options
		factsCacheSize                        int
		bcfg                                  bucket.Config
		gcf                                   gcFlags
		pf                                    publisherFlags
		apf                                   agentpool.Flags
	)
	flag.StringVar(&namespace, "namespace", os.Getenv("WATCH_NAMESPACE"), "namespace of Builds, AgentPools and agent Leases; empty watches all")
	flag.StringVar(&strategy, "strategy", string(planner.Basic), "allocation strategy: basic or derivation-ordered")
	flag.StringVar(&drvDir, "drv-dir", "", "directory holding the .drv files (named by store base name)")
	flag.StringVar(&storeDir, "store-dir", string(storepath.DefaultDir), "store directory of derivation paths")
	flag.IntVar(&factsCacheSize, "drv-cache-size", 200000, "parsed derivations kept in memory")
	flag.IntVar(&o.AvailabilityEntries, "availability-cache-size", 100000,
		"derivations whose output availability is remembered (about 600 bytes each); the rest are asked of the bucket again when needed")
	flag.DurationVar(&o.BuildTTL, "build-ttl", 24*time.Hour, "delete finished Builds this long after they finished (0 keeps them); spec.ttlSecondsAfterFinished overrides")
	flag.DurationVar(&o.PlanDebounce, "plan-debounce", 20*time.Millisecond, "batch the events of a burst into one planning pass")
	flag.IntVar(&o.ExpectedBuilds, "expected-builds", 10000, "usual number of pending Builds: sizes the planner's tables once")
	flag.IntVar(&o.BuildWorkers, "build-workers", 16, "Builds reconciled in parallel")
	flag.BoolVar(&o.WriteQueueStatus, "write-queue-status", false, "also write the system, name and wait reason of every queued Build that only waits: one status write per queued Build (docs/scale.md); by default such a Build shows phase Pending and gets its first write when it is allocated")
	flag.DurationVar(&o.AgentGrace, "agent-grace", 2*time.Second, "added to a Lease's expiry before its agent is declared lost")
	flag.StringVar(&o.AgentNamespace, "agent-namespace", "", "the only namespace whose agent Leases are accepted (default: --namespace; set it when watching all namespaces)")
	flag.StringVar(&bcfg.Endpoint, "bucket-endpoint", "", "S3 endpoint of the substitute bucket (host:port or http(s)://host[:port]); credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
	flag.StringVar(&bcfg.Bucket, "bucket", "", "the bucket that serves substitutes; the controller reads .drv files and output availability from it")
	gcf.bind(flag.CommandLine)
	pf.bind(flag.CommandLine)
	apf.Bind(flag.CommandLine)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus endpoint; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of the health probes; 0 disables them")
	flag.StringVar(&memLimit, "memory-limit", "", "the Go runtime's soft memory limit, e.g. 480Mi (0: none); default 90% of the container's memory limit")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "", "address of the Go profiler (/debug/pprof), e.g. 127.0.0.1:6060, to see where a large queue's memory goes; empty disables it")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, for more than one replica")
	zo := zap.Options{}
	zo.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&zo))
	ctrl.SetLogger(log)

	limit, from, err := setMemoryLimit(memLimit)
	if err != nil {
		return err
	}
	log.Info("Memory limit", "bytes", limit, "from", from)
	o.Strategy = planner.Strategy(strategy)
	o.Log = log
	if o.AgentNamespace == "" {
		o.AgentNamespace = namespace
	}
	var reader *bucket.Reader
	if bcfg.Bucket != "" {
		bcfg.AccessKey, bcfg.SecretKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
		bcfg.StoreDir, bcfg.AllowUnsigned, bcfg.Log = storeDir, true, log.WithName("bucket")
		trusted, err := pf.trustedKeys()
		if err != nil {
			return err
		}
		if len(trusted) == 0 {
			log.Info("Narinfos read from the bucket are not verified: give --trusted-public-keys (or --signing-keys) to count only outputs and .drv files the farm's keys signed")
		}
		if reader, err = bucket.NewReader(bcfg, bucket.ReaderOptions{TrustedNixKeys: trusted}); err != nil {
			return fmt.Errorf("--bucket-endpoint/--bucket: %w", err)
		}
		o.Bucket = reader
	}
	if err := pf.check(bcfg); err != nil {
		return err
	}
	if o.AgentPods, err = apf.Defaults(); err != nil {
		return err
	}
	switch {
	case drvDir != "":
		o.Facts = drvsource.NewFactsCache(drvsource.NewDir(drvDir, storepath.Dir(storeDir)), factsCacheSize)
	case reader != nil:
		o.Facts = drvsource.NewFactsCache(reader, factsCacheSize)
	default:
		return fmt.Errorf("no derivation source: give --bucket-endpoint and --bucket (the farm's bucket) or --drv-dir")
	}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := farmv1.AddToScheme(scheme); err != nil {
		return err
	}
	poolPods, err := labels.NewRequirement(agentlease.LabelPool, selection.Exists, nil)
	if err != nil {
		return err
	}
	copts := cache.Options{DefaultTransform: cache.TransformStripManagedFields(),
		// Only the pools' own pods are cached, not every pod of the cluster.
		ByObject: map[client.Object]cache.ByObject{&corev1.Pod{}: {Label: labels.NewSelector().Add(*poolPods)}}}
	if namespace != "" {
		copts.DefaultNamespaces = map[string]cache.Config{namespace: {}}
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Cache:                  copts,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		PprofBindAddress:       pprofAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       controllers.LeaderElectionID,
		Client:                 client.Options{Cache: &client.CacheOptions{Unstructured: false}},
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	o.Metrics = metrics.New(crmetrics.Registry)
	if pf.addr != "" {
		if o.Publisher, err = pf.options(mgr.GetClient(), bcfg, log.WithName("publisher")); err != nil {
			return err
		}
		o.PublisherAddr = pf.addr
	}
	ctx := ctrl.SetupSignalHandler()
	farm, err := controllers.Setup(ctx, mgr, o)
	if err != nil {
		return err
	}
	if gcf.interval > 0 {
		if reader == nil {
			return fmt.Errorf("--gc-interval needs the bucket: give --bucket-endpoint and --bucket")
		}
		if err := gcf.add(mgr, bcfg, o.Facts, farm, log.WithName("gc")); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", farm.Ready(mgr, leaderElect)); err != nil {
		return err
	}
	log.Info("Starting", "strategy", o.Strategy, "namespace", namespace)
	return mgr.Start(ctx)
}

// gcFlags configure the bucket GC the controller runs (docs/gc.md).
type gcFlags struct {
	interval, grace, maxAge time.Duration
	policy, rootsKey        string
	selector                string
	names                   []string
	dryRun                  bool
}

func (g *gcFlags) bind(fs *flag.FlagSet) {
	fs.DurationVar(&g.interval, "gc-interval", 0, "run the bucket's reference-aware GC this often (0 disables it)")
	fs.DurationVar(&g.grace, "gc-grace", bucketgc.DefaultGrace, "GC never deletes objects younger than this")
	fs.StringVar(&g.policy, "gc-policy", string(gc.ModeOrphans), "orphans: delete only nars no narinfo names; "+
		"roots: also the substitutes neither a live Build nor a declared root (--gc-roots-key, --gc-keep-*) reaches")
	fs.StringVar(&g.rootsKey, "gc-roots-key", "", "object of the bucket listing store paths to keep with their closures, one per line, e.g. gc/roots (policy roots)")
	fs.StringVar(&g.selector, "gc-keep-selector", "", "label selector of Builds whose roots are declared kept, e.g. release=2026.1 (policy roots)")
	fs.DurationVar(&g.maxAge, "gc-keep-max-age", 0, "keep everything published within this duration, e.g. 720h (policy roots; 0: off)")
	fs.Func("gc-keep-name", "keep store paths whose name matches this glob, e.g. 'guile-*' (policy roots; repeatable)", func(s string) error {
		g.names = append(g.names, s)
		return nil
	})
	fs.BoolVar(&g.dryRun, "gc-dry-run", false, "log what GC would delete and why, delete nothing")
}

// add adds the GC Scheduler to mgr: the farm's Builds are roots, the declared policy (if any)
// adds more, and deletions are told to the availability owner. A bad configuration is refused
// here, at start, not at every run.
func (g *gcFlags) add(mgr ctrl.Manager, bcfg bucket.Config, facts builds.FactsSource, farm *controllers.Farm, log logr.Logger) error {
	mode, err := gc.ParseMode(g.policy)
	if err != nil {
		return fmt.Errorf("--gc-policy: %w", err)
	}
	s3, err := bucket.NewClient(bcfg)
	if err != nil {
		return err
	}
	opts := bucketgc.Options{Client: s3, Bucket: bcfg.Bucket, Grace: g.grace, Mode: mode, DryRun: g.dryRun, Log: log,
		Roots:     controllers.BuildRoots{Client: mgr.GetClient(), Facts: facts},
		RootsKey:  g.rootsKey,
		Keep:      gc.RootSelector{MaxAge: g.maxAge, NameGlobs: g.names},
		OnDeleted: controllers.OutputsDeleted(farm.Availability)}
	if g.selector != "" {
		sel, err := labels.Parse(g.selector)
		if err != nil {
			return fmt.Errorf("--gc-keep-selector %q: %w (want a label selector, e.g. release=2026.1)", g.selector, err)
		}
		opts.Declared = controllers.BuildRoots{Client: mgr.GetClient(), Facts: facts, Selector: client.MatchingLabelsSelector{Selector: sel}}
	}
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("GC flags (--gc-policy, --gc-roots-key, --gc-keep-*): %w", err)
	}
	gcm := bucketgc.NewMetrics(crmetrics.Registry)
	return mgr.Add(&bucketgc.Scheduler{Interval: g.interval, Clock: clock.RealClock{}, Log: log, Options: opts,
		OnReport: func(rep *bucketgc.Report, err error) {
			gcm.Observe(rep, err)
			if g.dryRun && rep != nil {
				rep.LogLines(log)
			}
		}})
}
