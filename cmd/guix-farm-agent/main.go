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
	"strings"
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
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/guixfarm/guix-farm/agent"
	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/agent/testbuilder"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
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
		kubeconfig, builderName string
		systems, features       string
		metricsAddr, record     string
		testDuration            time.Duration
		qps                     float64
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
	flag.StringVar(&builderName, "builder", "test", "build step: test (sleeps; for tests and demos)")
	flag.DurationVar(&testDuration, "test-duration", time.Second, "test builder: how long a build takes")
	flag.StringVar(&record, "test-record", "", "test builder: file to append attempt records to")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "", "address of the Prometheus endpoint (e.g. :8080); empty disables it")
	flag.Float64Var(&qps, "kube-api-qps", 50, "apiserver requests per second (client-go's default of 5 would cap the agent)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&opts))
	cfg.Systems = splitList(systems)
	cfg.Features = splitList(features)

	var builder buildstep.Step
	switch builderName {
	case "test":
		builder = &testbuilder.Builder{Duration: testDuration, RecordPath: record, Clock: clock.RealClock{}}
	default:
		return fmt.Errorf("--builder %q: the only build step so far is \"test\"", builderName)
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
	a, err := agent.New(cfg, agent.Deps{Client: cl, Cache: c, Step: builder, Clock: clock.RealClock{}, Log: log, Metrics: m})
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

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
