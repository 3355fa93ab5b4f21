// Command guix-farm-agent runs builds for the farm: in an AgentPool pod next to a guix-daemon, or
// on any machine with a kubeconfig.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/guixfarm/guix-farm/agent"
	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/agent/daemonbuilder"
	"github.com/guixfarm/guix-farm/agent/testbuilder"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/cli"
	"github.com/guixfarm/guix-farm/internal/publishing"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "guix-farm-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	host, _ := os.Hostname()
	var (
		cfg                     agent.Config
		dcfg                    daemonbuilder.Config
		bcfg                    bucket.Config
		kubeconfig, builderName string
		systems, features       string
		metricsAddr, record     string
		substituteURLs, keys    string
		keyFiles, bucketURL     string
		publisherURL, tokenFile string
		testDuration            time.Duration
		qps                     float64
		store                   daemonbuilder.StoreHygiene
	)
	flag.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; in-cluster config when empty")
	flag.StringVar(&cfg.Name, "name", envOr("AGENT_NAME", host), "agent name, also the name of its Lease (default: $AGENT_NAME or the host name)")
	flag.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", "guix-farm"), "namespace of the farm's Builds and Leases")
	flag.StringVar(&cfg.Pool, "pool", os.Getenv("AGENT_POOL"), "AgentPool this agent belongs to")
	flag.StringVar(&systems, "systems", "x86_64-linux", "comma-separated systems this agent builds for")
	flag.StringVar(&features, "features", "", "comma-separated system features offered (kvm, big-parallel, ...)")
	flag.IntVar(&cfg.Slots, "slots", 1, "builds run at once")
	flag.DurationVar(&cfg.LeaseDuration, "lease-duration", 40*time.Second, "Lease duration: an agent silent this long is lost")
	flag.DurationVar(&cfg.RenewInterval, "renew-interval", 0, "Lease renewal interval (default: a quarter of --lease-duration)")
	flag.DurationVar(&cfg.BuildTimeout, "build-timeout", 0, "default build timeout of Builds without spec.timeoutSeconds (0: the daemon's)")
	flag.DurationVar(&cfg.MaxSilent, "max-silent-time", 0, "default max silent time of Builds without spec.maxSilentSeconds (0: none)")
	flag.Int64Var(&cfg.MaxLogBytes, "max-log-bytes", 64<<20, "a build whose log grows past this ends LogLimitExceeded")
	flag.DurationVar(&cfg.LogFlushInterval, "log-flush-interval", 3*time.Second, "how often a running build's log is uploaded")
	flag.StringVar(&builderName, "builder", "daemon", "build step: daemon (builds through guix-daemon or nix-daemon), or test (sleeps; for tests and benchmarks)")
	flag.StringVar(&dcfg.Socket, "daemon-socket", envOr("GUIX_DAEMON_SOCKET", "/var/guix/daemon-socket/socket"), "the daemon's Unix socket")
	flag.StringVar(&substituteURLs, "substitute-urls", "", "comma-separated substitute URLs the daemon uses after the farm's bucket (e.g. a distribution's)")
	flag.StringVar(&keys, "trusted-public-keys", "", "comma-separated Nix public keys (name:base64) of the substitute servers, the farm's own included (Guix daemons read /etc/guix/acl)")
	flag.IntVar(&dcfg.Cores, "cores", 0, "cores each build may use (0: all)")
	flag.DurationVar(&dcfg.PublishHold, "publish-hold", 10*time.Minute, "how long a built attempt waits for an unreachable bucket before it is handed back (not failed)")
	flag.StringVar(&store.Path, "store-path", "", "the store as this agent sees it (the shared volume), for its free-space floor; empty skips the check")
	flag.Float64Var(&store.MinFreePercent, "min-free-percent", 10, "claim nothing while the store has less free space than this")
	flag.Float64Var(&store.TargetFreePercent, "gc-target-free-percent", 20, "when below the floor, ask the daemon to collect garbage up to this")
	flag.StringVar(&publisherURL, "publisher-url", "", "the controller's publisher service (e.g. http://guix-farm-publisher.guix-farm:8082): outputs and logs are published through it, and the agent needs neither bucket write credentials nor signing keys (docs/security.md)")
	flag.StringVar(&tokenFile, "publisher-token-file", publishing.DefaultTokenFile, "the agent pod's ServiceAccount token, bound to its pod, sent to the publisher service (read at every request)")
	flag.StringVar(&bcfg.Endpoint, "bucket-endpoint", "", "S3 endpoint of the farm's bucket (host:port or http(s)://host[:port]); without --publisher-url, write credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
	flag.StringVar(&bcfg.Bucket, "bucket", "", "the farm's bucket: substitutes come from it, and without --publisher-url outputs and logs are published to it directly")
	flag.StringVar(&bcfg.StoreDir, "store-dir", "/gnu/store", "store directory of the daemon")
	flag.StringVar(&keyFiles, "signing-keys", "", "without --publisher-url: comma-separated signing key files (Guix signing-key.sec, Nix nix-signing-key.sec)")
	flag.StringVar(&bucketURL, "bucket-url", "", "the bucket's public substitute URL for the daemon (default: http(s)://<endpoint>/<bucket>)")
	flag.DurationVar(&testDuration, "test-duration", time.Second, "test builder: how long a build takes")
	flag.StringVar(&record, "test-record", "", "test builder: file to append attempt records to")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "", "address of the Prometheus endpoint (e.g. :8080); empty disables it")
	flag.Float64Var(&qps, "kube-api-qps", 50, "apiserver requests per second (client-go's default of 5 would cap the agent)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&opts))
	ctrllog.SetLogger(log) // else controller-runtime prints a stack trace at the first log line
	cfg.Systems = cli.SplitList(systems)
	cfg.Features = cli.SplitList(features)

	var (
		builder buildstep.Step
		logs    agent.LogStore
		health  agent.HealthCheck
	)
	switch builderName {
	case "test":
		builder = &testbuilder.Builder{Duration: testDuration, RecordPath: record, Clock: clock.RealClock{}}
	case "daemon":
		var (
			pub    daemonbuilder.Publisher
			prober daemonbuilder.WriteProber
			err    error
		)
		if publisherURL != "" {
			// No key and no write credential in this process: the controller's publisher
			// service signs and writes, the agent uploads to presigned URLs.
			if keyFiles != "" {
				return fmt.Errorf("--signing-keys with --publisher-url: an agent publishing through the service holds no signing key; give the keys to the controller")
			}
			if os.Getenv("AWS_SECRET_ACCESS_KEY") != "" {
				log.Info("$AWS_SECRET_ACCESS_KEY is set but not used: with --publisher-url the agent needs no bucket credentials; remove it from the agent's environment")
			}
			// The client rides out short outages itself; longer ones the builder holds
			// (--publish-hold), as it does for the bucket.
			c := &publishing.Client{URL: publisherURL, TokenFile: tokenFile, RetryFor: 30 * time.Second}
			rp := &daemonbuilder.RemotePublisher{C: c}
			pub, prober, logs = rp, rp, &daemonbuilder.RemoteLogs{C: c}
		} else {
			if bcfg.Endpoint == "" || bcfg.Bucket == "" {
				return fmt.Errorf("--builder daemon publishes through --publisher-url, or straight to the farm's bucket: give --bucket-endpoint and --bucket")
			}
			bcfg.AccessKey, bcfg.SecretKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
			bcfg.KeyFiles, bcfg.Log = cli.SplitList(keyFiles), log.WithName("bucket")
			bp, err := bucket.NewPublisher(bcfg)
			if err != nil {
				return fmt.Errorf("--bucket-endpoint/--bucket/--signing-keys: %w", err)
			}
			pub, prober, logs = daemonbuilder.BucketPublisher{P: bp}, daemonbuilder.BucketPublisher{P: bp}, daemonbuilder.BucketLogs{P: bp}
		}
		if bucketURL == "" {
			if bucketURL, err = bcfg.PublicURL(); err != nil {
				return fmt.Errorf("the daemon substitutes from the farm's bucket: give --bucket-url, or --bucket-endpoint and --bucket: %w", err)
			}
		}
		// The farm's bucket first: what the farm built (and what was submitted) is there.
		dcfg.SubstituteURLs = append([]string{bucketURL}, cli.SplitList(substituteURLs)...)
		dcfg.TrustedPublicKeys = cli.SplitList(keys)
		db, err := daemonbuilder.New(dcfg, pub, log.WithName("daemon"))
		if err != nil {
			return err
		}
		defer db.Close()
		store.Agent = cfg.Name
		builder = db
		health = func(ctx context.Context) error { return db.Check(ctx, prober, store) }
	default:
		return fmt.Errorf("--builder %q: choose daemon or test", builderName)
	}

	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig %q: %w", kubeconfig, err)
	}
	rc.QPS, rc.Burst = float32(qps), int(2*qps)
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := farmv1.AddToScheme(scheme); err != nil {
		return err
	}
	copts := agent.CacheOptions(cfg.Name, cfg.Namespace)
	copts.Scheme = scheme
	c, err := cache.New(rc, copts)
	if err != nil {
		return fmt.Errorf("creating the build cache: %w", err)
	}
	cl, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("creating the client: %w", err)
	}
	reg := prometheus.NewRegistry()
	m := agent.NewMetrics(reg)
	a, err := agent.New(cfg, agent.Deps{Client: cl, Cache: c, Step: builder, Logs: logs, Health: health, Clock: clock.RealClock{}, Log: log, Metrics: m})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if metricsAddr != "" {
		srv := &http.Server{Addr: metricsAddr, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		defer srv.Close()
	}
	cacheCtx, stopCache := context.WithCancel(context.Background())
	defer stopCache()
	go func() { _ = c.Start(cacheCtx) }()
	return a.Run(ctx)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
