// Command kubectl-guixfarm is the farm's kubectl plugin (`kubectl guixfarm ...` once on PATH):
//
//	kubectl guixfarm submit [flags] DRV...   publish the .drv closures the bucket lacks, create the Builds
//	kubectl guixfarm logs [flags] BUILD      print (-f: follow) a build's log from the bucket
//
// `get`-style output stays kubectl's own: kubectl get builds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/nar"
)

const usage = `kubectl guixfarm: submit derivations to a guix-farm and read their logs.

  kubectl guixfarm submit [flags] DRV...
  kubectl guixfarm logs [flags] BUILD

Flags (before or after the command):
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "kubectl guixfarm:", err)
		os.Exit(1)
	}
}

type options struct {
	kubeconfig, context, namespace string
	bucket                         bucket.Config
	keyFiles                       string
	// submit
	socket             string
	priority           int
	labels             labelFlag
	allMissing         bool
	timeout, maxSilent time.Duration
	// logs
	follow  bool
	attempt int
}

type labelFlag map[string]string

func (l labelFlag) String() string { return fmt.Sprint(map[string]string(l)) }
func (l labelFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("-l %q: want key=value", s)
	}
	l[k] = v
	return nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o := options{labels: labelFlag{}}
	fs := flag.NewFlagSet("kubectl guixfarm", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "kubeconfig context")
	fs.StringVar(&o.namespace, "n", "", "namespace (default: the context's)")
	fs.StringVar(&o.namespace, "namespace", "", "namespace (default: the context's)")
	fs.StringVar(&o.bucket.Endpoint, "bucket-endpoint", os.Getenv("GUIXFARM_BUCKET_ENDPOINT"), "S3 endpoint of the farm's bucket; credentials from $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY")
	fs.StringVar(&o.bucket.Bucket, "bucket", os.Getenv("GUIXFARM_BUCKET"), "the farm's bucket")
	fs.StringVar(&o.bucket.StoreDir, "store-dir", "/gnu/store", "store directory")
	fs.StringVar(&o.keyFiles, "signing-keys", "", "submit: comma-separated signing key files for the narinfos of what it uploads")
	fs.StringVar(&o.socket, "daemon-socket", envOr("GUIX_DAEMON_SOCKET", "/var/guix/daemon-socket/socket"), "submit: the local daemon the .drv closures are read from")
	fs.IntVar(&o.priority, "priority", 0, "submit: spec.priority of the Builds")
	fs.Var(o.labels, "l", "submit: a label key=value on the Builds (repeatable)")
	fs.BoolVar(&o.allMissing, "all-missing", false, "submit: also create Builds for every input derivation whose outputs the bucket lacks")
	fs.DurationVar(&o.timeout, "timeout", 0, "submit: spec.timeoutSeconds")
	fs.DurationVar(&o.maxSilent, "max-silent", 0, "submit: spec.maxSilentSeconds")
	fs.BoolVar(&o.follow, "f", false, "logs: follow the log while the build runs")
	fs.IntVar(&o.attempt, "attempt", 0, "logs: the attempt whose log to print (0: the latest)")
	cmd, rest := "", make([]string, 0, len(args))
	for _, a := range args {
		if cmd == "" && (a == "submit" || a == "logs") {
			cmd = a
			continue
		}
		rest = append(rest, a)
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if cmd == "" {
		fs.Usage()
		return errors.New("no command: give submit or logs")
	}
	o.bucket.AccessKey, o.bucket.SecretKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	if o.bucket.Endpoint == "" || o.bucket.Bucket == "" {
		return errors.New("--bucket-endpoint and --bucket are required (the farm's bucket)")
	}
	cl, ns, err := o.client()
	if err != nil {
		return err
	}
	if cmd == "submit" {
		if fs.NArg() == 0 {
			return errors.New("submit: give at least one .drv path")
		}
		return submit(ctx, o, cl, ns, fs.Args(), out)
	}
	if fs.NArg() != 1 {
		return errors.New("logs: give one Build name")
	}
	return logs(ctx, o, cl, ns, fs.Arg(0), out)
}

func (o options) client() (client.Client, string, error) {
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.kubeconfig, Precedence: clientcmd.NewDefaultClientConfigLoadingRules().Precedence},
		&clientcmd.ConfigOverrides{CurrentContext: o.context})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("--kubeconfig/--context: %w", err)
	}
	ns := o.namespace
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil {
			return nil, "", err
		}
	}
	scheme := runtime.NewScheme()
	if err := farmv1.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	cl, err := client.New(rc, client.Options{Scheme: scheme})
	return cl, ns, err
}

// maxClosure bounds a submitted closure.
const maxClosure = 1_000_000

func submit(ctx context.Context, o options, cl client.Client, ns string, drvs []string, out io.Writer) error {
	o.bucket.KeyFiles = splitList(o.keyFiles)
	if len(o.bucket.KeyFiles) == 0 {
		return errors.New("submit: --signing-keys is required: daemons only substitute signed narinfos")
	}
	pub, err := bucket.NewPublisher(o.bucket)
	if err != nil {
		return fmt.Errorf("submit: --bucket-endpoint/--bucket/--signing-keys: %w", err)
	}
	conn, err := daemon.Dial(ctx, o.socket)
	if err != nil {
		return fmt.Errorf("submit: --daemon-socket %s: %w", o.socket, err)
	}
	defer conn.Close()
	infos, err := conn.Closure(ctx, drvs, maxClosure)
	if err != nil {
		return fmt.Errorf("submit: reading the closure of the derivations from the daemon: %w", err)
	}
	items := make([]bucket.StoreItem, len(infos))
	for i, in := range infos {
		p := in.Path
		items[i] = bucket.StoreItem{StorePath: p, References: in.References, Deriver: in.Deriver, CA: in.CA,
			NarHash: in.NarHash, NarSize: in.NarSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) { return daemon.OpenNar(ctx, o.socket, p) }}
	}
	if _, err := pub.PublishClosure(ctx, items, 0); err != nil {
		return fmt.Errorf("submit: publishing the .drv closures: %w", err)
	}
	want := drvs
	if o.allMissing {
		reader, err := bucket.NewReader(o.bucket, bucket.ReaderOptions{})
		if err != nil {
			return err
		}
		if want, err = missingInputs(ctx, conn, reader, drvs); err != nil {
			return fmt.Errorf("submit: --all-missing: %w", err)
		}
	}
	for _, d := range want {
		if err := createBuild(ctx, o, cl, ns, d, out); err != nil {
			return err
		}
	}
	return nil
}

// missingInputs is drvs and, recursively, every input derivation with an output the bucket lacks.
func missingInputs(ctx context.Context, conn *daemon.Conn, r *bucket.Reader, drvs []string) ([]string, error) {
	out := append([]string(nil), drvs...)
	seen := map[string]bool{}
	for _, d := range drvs {
		seen[d] = true
	}
	for i := 0; i < len(out); i++ {
		drv, err := readDrv(ctx, conn, out[i])
		if err != nil {
			return nil, err
		}
		for _, in := range drv.InputDrvs {
			if seen[in.Path] {
				continue
			}
			seen[in.Path] = true
			inDrv, err := readDrv(ctx, conn, in.Path)
			if err != nil {
				return nil, err
			}
			for _, o := range inDrv.Outputs {
				has, err := r.Has(ctx, o.Path)
				if err != nil {
					return nil, err
				}
				if !has {
					out = append(out, in.Path)
					break
				}
			}
		}
	}
	return out, nil
}

func readDrv(ctx context.Context, conn *daemon.Conn, p string) (*derivation.Derivation, error) {
	r, err := conn.Nar(ctx, p)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := nar.ReadSingleFile(r, derivation.DefaultMaxSize)
	if err == nil {
		_, err = io.Copy(io.Discard, r) // the NAR's end, so the connection stays usable
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return derivation.Parse(data)
}

func createBuild(ctx context.Context, o options, cl client.Client, ns, drv string, out io.Writer) error {
	name, err := buildname.For(drv)
	if err != nil {
		return err
	}
	b := &farmv1.Build{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string(o.labels)},
		Spec: farmv1.BuildSpec{Derivation: drv, Priority: int32(o.priority)}}
	if o.timeout > 0 {
		s := int32(o.timeout / time.Second)
		b.Spec.TimeoutSeconds = &s
	}
	if o.maxSilent > 0 {
		s := int32(o.maxSilent / time.Second)
		b.Spec.MaxSilentSeconds = &s
	}
	err = cl.Create(ctx, b)
	if apierrors.IsAlreadyExists(err) {
		got := &farmv1.Build{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(b), got); err != nil {
			return err
		}
		if got.Spec.Derivation != drv {
			return fmt.Errorf("build/%s exists for %s, not %s: delete it or use another namespace", b.Name, got.Spec.Derivation, drv)
		}
		fmt.Fprintf(out, "build/%s unchanged %s\n", b.Name, drv)
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating build/%s for %s: %w", b.Name, drv, err)
	}
	fmt.Fprintf(out, "build/%s created %s\n", b.Name, drv)
	return nil
}

func logs(ctx context.Context, o options, cl client.Client, ns, name string, out io.Writer) error {
	r, err := bucket.NewReader(o.bucket, bucket.ReaderOptions{})
	if err != nil {
		return err
	}
	var printed int64
	for {
		b := &farmv1.Build{}
		if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, b); err != nil {
			return fmt.Errorf("build/%s: %w", name, err)
		}
		attempt := o.attempt
		if attempt == 0 && b.Status.Attempt != nil {
			attempt = int(b.Status.AttemptCount) // the running attempt, whose log is uploaded as it grows
		}
		n, err := copyFrom(ctx, r, b.Spec.Derivation, attempt, printed, out)
		printed += n
		running := !b.Status.Phase.Finished()
		if err != nil && (!errors.Is(err, bucket.ErrNotFound) || !o.follow) {
			if errors.Is(err, bucket.ErrNotFound) && b.Status.AttemptCount == 0 {
				return fmt.Errorf("build/%s has not run yet (phase %s): no log", name, b.Status.Phase)
			}
			return fmt.Errorf("log of build/%s: %w", name, err)
		}
		if !o.follow || !running {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

// copyFrom prints the log from byte skip on: a followed log is re-uploaded whole as it grows.
func copyFrom(ctx context.Context, r *bucket.Reader, drv string, attempt int, skip int64, out io.Writer) (int64, error) {
	rc, err := r.OpenLog(ctx, drv, attempt)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if _, err := io.CopyN(io.Discard, rc, skip); err != nil {
		return 0, nil // not longer than what was printed
	}
	return io.Copy(out, rc)
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
