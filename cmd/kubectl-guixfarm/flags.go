package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"
)

// command is one subcommand: its flags, on top of the common ones, and what it does.
type command struct {
	name, summary, usage string
	// bind adds the command's own flags and returns the function that runs it once they are
	// parsed, with the positional arguments.
	bind func(fs *pflag.FlagSet, g *common, e env) func(ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{name: "submit", summary: "publish derivations' .drv closures to the bucket and create their Builds", usage: submitUsage, bind: bindSubmit},
		{name: "logs", summary: "print a Build's log from the bucket; -f follows it while the build runs", usage: logsUsage, bind: bindLogs},
	}
}

const rootUsage = `kubectl guixfarm: submit derivations to a guix-farm and read their build logs.

Usage:
  kubectl guixfarm [flags] COMMAND [flags] ARGS

Commands:
%s
Run 'kubectl guixfarm COMMAND --help' for a command's flags and examples. Flags may come
before or after the command. Listing and waiting are kubectl's own:
  kubectl get builds -w; kubectl wait --for=condition=Succeeded build/NAME

Flags of every command:
%s`

// common are the flags every command takes: where the farm is.
type common struct {
	kubeconfig, context, namespace string
	bucketEndpoint, bucket         string
	storeDir                       string
}

func bindCommon(fs *pflag.FlagSet, g *common, e env) {
	fs.StringVar(&g.kubeconfig, "kubeconfig", "", "the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	fs.StringVar(&g.context, "context", "", "the kubeconfig context to use (default: its current context)")
	fs.StringVarP(&g.namespace, "namespace", "n", "", "the farm's namespace, where its Builds are (default: the context's namespace)")
	fs.StringVar(&g.bucketEndpoint, "bucket-endpoint", e.Getenv("GUIXFARM_BUCKET_ENDPOINT"),
		"S3 endpoint of the farm's bucket, http(s)://host[:port] (default: $GUIXFARM_BUCKET_ENDPOINT); credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
	fs.StringVar(&g.bucket, "bucket", e.Getenv("GUIXFARM_BUCKET"), "the farm's bucket, the controller's --bucket (default: $GUIXFARM_BUCKET)")
	fs.StringVar(&g.storeDir, "store-dir", "/gnu/store", "the store directory of the derivations (Nix farms: /nix/store)")
}

// run parses args and runs the command they name.
func run(ctx context.Context, args []string, e env) error {
	cmds := commands()
	// First find the command. Flags may come before it, so the scan knows every flag of every
	// command (and whether it takes a value): `-n farm submit` must not take "farm" for it.
	scan := pflag.NewFlagSet("kubectl guixfarm", pflag.ContinueOnError)
	scan.SetInterspersed(false)
	scan.Usage = func() { fmt.Fprint(e.Stdout, rootHelp(cmds, e)) }
	bindCommon(scan, &common{}, e)
	for _, c := range cmds {
		c.bind(scan, &common{}, e)
	}
	if err := scan.Parse(args); err != nil {
		return flagError(err, "kubectl guixfarm --help")
	}
	rest := scan.Args()
	if len(rest) == 0 {
		fmt.Fprint(e.Stderr, rootHelp(cmds, e))
		return errors.New("no command: give submit or logs")
	}
	if rest[0] == "help" { // kubectl guixfarm help [COMMAND]
		if len(rest) == 1 {
			fmt.Fprint(e.Stdout, rootHelp(cmds, e))
			return pflag.ErrHelp
		}
		args = []string{rest[1], "--help"}
		rest = args
	}
	name := rest[0]
	i := slices.IndexFunc(cmds, func(c command) bool { return c.name == name })
	if i < 0 {
		return fmt.Errorf("unknown command %q: the commands are submit and logs (kubectl guixfarm --help)", name)
	}
	c := cmds[i]
	// The command's own parse, of everything but its name, in the order given (rest is the
	// tail of args that starts with the name).
	at := len(args) - len(rest)
	cmdArgs := append(append([]string{}, args[:at]...), args[at+1:]...)
	fs := pflag.NewFlagSet("kubectl guixfarm "+c.name, pflag.ContinueOnError)
	var g common
	bindCommon(fs, &g, e)
	runCmd := c.bind(fs, &g, e)
	fs.Usage = func() { fmt.Fprint(e.Stdout, commandHelp(c, fs)) }
	if err := fs.Parse(cmdArgs); err != nil {
		return flagError(err, "kubectl guixfarm "+c.name+" --help")
	}
	return runCmd(ctx, fs.Args())
}

func flagError(err error, help string) error {
	if errors.Is(err, pflag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w (see '%s')", err, help)
}

func rootHelp(cmds []command, e env) string {
	var list strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&list, "  %-8s %s\n", c.name, c.summary)
	}
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	bindCommon(fs, &common{}, e)
	return fmt.Sprintf(rootUsage, list.String(), fs.FlagUsagesWrapped(100))
}

func commandHelp(c command, fs *pflag.FlagSet) string {
	return c.usage + "\nFlags:\n" + fs.FlagUsagesWrapped(100)
}

// secondsFlag is a duration given as Go duration ("10h", "90m") or plain seconds ("36000"),
// kept as whole seconds for spec.timeoutSeconds and spec.maxSilentSeconds.
type secondsFlag struct{ v *int32 }

func (f secondsFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return (time.Duration(*f.v) * time.Second).String()
}

func (f secondsFlag) Type() string { return "duration" }

func (f secondsFlag) Set(s string) error {
	var secs float64
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		secs = float64(n)
	} else if d, err := time.ParseDuration(s); err == nil {
		secs = d.Seconds()
	} else {
		return fmt.Errorf("want a duration such as 10h, 90m or 3600 (seconds)")
	}
	if secs < 1 || secs > math.MaxInt32 {
		return fmt.Errorf("%s is out of range: at least 1s, at most %d seconds", s, math.MaxInt32)
	}
	*f.v = int32(math.Ceil(secs))
	return nil
}

// parseLabels turns -l values (key=value, or several joined by commas) into labels, checked as
// the apiserver would, so a typo fails before anything is uploaded.
func parseLabels(values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, v := range values {
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("-l %q: want key=value, e.g. -l tag=core-updates", kv)
			}
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				return nil, fmt.Errorf("-l %q: the key is not a valid label key: %s", kv, strings.Join(errs, "; "))
			}
			if errs := validation.IsValidLabelValue(val); len(errs) > 0 {
				return nil, fmt.Errorf("-l %q: the value is not a valid label value: %s", kv, strings.Join(errs, "; "))
			}
			out[k] = val
		}
	}
	return out, nil
}
