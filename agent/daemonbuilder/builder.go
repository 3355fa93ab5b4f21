// Package daemonbuilder is the agent's build step on a real daemon (guix-daemon, or nix-daemon
// with the same store directory): per attempt it points the daemon at the farm's substitutes,
// fetches the .drv, pins it and its inputs with temporary roots, hands back builds whose inputs
// nobody can provide, builds through the worker protocol while streaming the log, and publishes the
// outputs' closure through a Publisher, the narinfos of the outputs last and only while the agent
// still owns the attempt.
//
// It is the one place that joins the daemon client (internal/daemon) to the build-step contract
// (agent/buildstep) and the bucket (the Publisher in bucket.go).
package daemonbuilder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/nar"
)

// Config is one agent's daemon builder.
type Config struct {
	// Socket is the daemon's Unix socket.
	Socket string
	// SubstituteURLs are where the daemon substitutes from, the farm's bucket first, then the
	// pool's other servers (e.g. a distribution's substitutes).
	SubstituteURLs []string
	// TrustedPublicKeys are the Nix public keys of those servers (Guix reads /etc/guix/acl).
	TrustedPublicKeys []string
	// Cores is the builders' parallelism (0: all the daemon's cores).
	Cores int
	// MaxDrvSize bounds a .drv read from the daemon.
	MaxDrvSize int64
	// PublishParallel is how many store items are uploaded at once.
	PublishParallel int
	// TimeoutGrace is how long past the daemon's own timeout the builder waits before it stops
	// the build itself (a daemon that ignores the setting must not hold a slot forever).
	TimeoutGrace time.Duration
	// PublishHold bounds how long a built attempt waits for an unreachable bucket to publish
	// its outputs (default 10 min); past it the attempt is handed back, not failed.
	PublishHold time.Duration
	// FarmCacheURL is the farm's bucket as a substitute server (default: SubstituteURLs[0]):
	// local copies of farm-built inputs are checked against its narinfos (replaceStale).
	FarmCacheURL string
}

// Builder implements buildstep.Step on a daemon.
type Builder struct {
	cfg Config
	pub Publisher
	log logr.Logger
	// dial opens a daemon connection (tests replace it).
	dial func(ctx context.Context) (*daemon.Conn, error)
	// nars streams the nars of what is published, on pooled connections: a new connection
	// costs the daemon a fork, a hundred times a small item's nar.
	nars *daemon.Pool
	// http reads narinfos from the farm's bucket.
	http *http.Client
}

var _ buildstep.Step = (*Builder)(nil)

// New makes a daemon builder publishing through pub.
func New(cfg Config, pub Publisher, log logr.Logger) (*Builder, error) {
	if cfg.Socket == "" {
		return nil, errors.New("daemon builder: the daemon socket is required (--daemon-socket)")
	}
	if pub == nil {
		return nil, errors.New("daemon builder: a publisher is required (--bucket-endpoint, --bucket)")
	}
	if cfg.MaxDrvSize <= 0 {
		cfg.MaxDrvSize = derivation.DefaultMaxSize
	}
	if cfg.FarmCacheURL == "" && len(cfg.SubstituteURLs) > 0 {
		cfg.FarmCacheURL = cfg.SubstituteURLs[0]
	}
	if cfg.PublishHold <= 0 {
		cfg.PublishHold = 10 * time.Minute
	}
	if cfg.PublishParallel <= 0 {
		cfg.PublishParallel = 2
	}
	if cfg.TimeoutGrace <= 0 {
		cfg.TimeoutGrace = 30 * time.Second
	}
	b := &Builder{cfg: cfg, pub: pub, log: log, nars: daemon.NewPool(cfg.Socket, cfg.PublishParallel),
		http: &http.Client{Timeout: 10 * time.Second}}
	b.dial = func(ctx context.Context) (*daemon.Conn, error) { return daemon.Dial(ctx, cfg.Socket) }
	return b, nil
}

// Close closes the idle connections the builder keeps for publishing. Each holds a daemon worker
// process, which a daemon being stopped waits for.
func (b *Builder) Close() error { return b.nars.Close() }

// Run implements buildstep.Step.
func (b *Builder) Run(ctx context.Context, req buildstep.Request) (buildstep.Result, error) {
	conn, err := b.connect(ctx, req.Limits)
	if err != nil {
		return buildstep.Result{}, err
	}
	defer conn.Close()

	// The .drv and its closure (input .drvs, sources) come by substitution: the farm's bucket
	// holds what was submitted. The temp root keeps it from a concurrent GC for the attempt.
	if err := b.ensure(ctx, conn, req.Derivation); err != nil {
		return buildstep.Result{}, b.classify(ctx, err, fmt.Sprintf("fetching %s", req.Derivation), nil)
	}
	if err := conn.AddTempRoot(ctx, req.Derivation); err != nil {
		return buildstep.Result{}, b.classify(ctx, err, "pinning the derivation", nil)
	}
	drv, err := b.readDrv(ctx, conn, req.Derivation)
	if err != nil {
		return buildstep.Result{}, err
	}
	if req.System != "" && drv.System != req.System {
		return buildstep.Result{}, buildstep.SetupFailed(fmt.Errorf("%s builds for %s, the Build says %s", req.Derivation, drv.System, req.System))
	}
	if err := b.checkInputs(ctx, conn, drv); err != nil {
		return buildstep.Result{}, err
	}

	outputs := outputNames(req, drv)
	if err := b.build(ctx, conn, req, outputs); err != nil {
		return buildstep.Result{}, err
	}
	return b.publish(ctx, conn, req, drv, outputs)
}

// ensure substitutes path, trying again a few times when the daemon refuses: substitution
// through Nix 2.8 meets passing trouble (its narinfo cache's SQLite "database is busy" when two
// builds substitute at once, a substitute server's hiccup) that must not spend a user's attempt.
func (b *Builder) ensure(ctx context.Context, conn *daemon.Conn, path string) error {
	var err error
	for try := range 3 {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(try) * time.Second):
			}
		}
		var de *daemon.Error
		if err = conn.EnsurePath(ctx, path); err == nil || !errors.As(err, &de) {
			return err
		}
		b.log.V(1).Info("Substitution refused; trying again", "path", path, "error", err.Error())
	}
	return err
}

// connect dials the daemon and sets the attempt's options. A daemon that cannot be reached is the
// agent's problem, not the build's.
func (b *Builder) connect(ctx context.Context, lim buildstep.Limits) (*daemon.Conn, error) {
	conn, err := b.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, buildstep.AgentUnhealthy(fmt.Errorf("connecting to the daemon at %s: %w", b.cfg.Socket, err))
	}
	opts := daemon.Options{
		SubstituteURLs: b.cfg.SubstituteURLs, TrustedPublicKeys: b.cfg.TrustedPublicKeys, UseSubstitutes: true,
		BuildTimeout: lim.Timeout, MaxSilentTime: lim.MaxSilent, Cores: b.cfg.Cores,
		PrintBuildTrace: true, MultiplexedBuildOutput: true,
	}
	if err := conn.SetOptions(ctx, opts); err != nil {
		conn.Close()
		return nil, b.classify(ctx, err, "setting the daemon's options", nil)
	}
	return conn, nil
}

// readDrv reads and parses a valid .drv through the daemon (the agent need not see the store).
func (b *Builder) readDrv(ctx context.Context, conn *daemon.Conn, path string) (*derivation.Derivation, error) {
	r, err := conn.Nar(ctx, path)
	if err != nil {
		return nil, b.classify(ctx, err, "reading "+path, nil)
	}
	data, err := nar.ReadSingleFile(r, b.cfg.MaxDrvSize)
	if err == nil {
		// The NAR's closing tokens are still on the wire: read them, or the connection is spoilt.
		_, err = io.Copy(io.Discard, r)
	}
	r.Close()
	if err != nil {
		return nil, b.classify(ctx, err, "reading "+path, nil)
	}
	d, err := derivation.Parse(data)
	if err != nil {
		return nil, buildstep.SetupFailed(fmt.Errorf("%s: %w", path, err))
	}
	return d, nil
}

// checkInputs pins every input and hands the Build back when some input is neither valid here
// nor substitutable: the daemon would otherwise build the input itself, outside the farm's plan,
// or fail the build for what is the farm's business (the controller builds the missing inputs).
func (b *Builder) checkInputs(ctx context.Context, conn *daemon.Conn, drv *derivation.Derivation) error {
	inputs := slices.Clone(drv.InputSrcs)
	producer := map[string]string{} // input path -> the .drv producing it
	for _, in := range drv.InputDrvs {
		d, err := b.readDrv(ctx, conn, in.Path)
		if err != nil {
			return err
		}
		paths := d.OutputPaths()
		for _, o := range in.Outputs {
			p, ok := paths[o]
			if !ok || p == "" {
				return buildstep.SetupFailed(fmt.Errorf("input %s has no output %q with a known path", in.Path, o))
			}
			inputs = append(inputs, p)
			producer[p] = in.Path
		}
	}
	if err := b.replaceStale(ctx, conn, slices.Collect(maps.Keys(producer))); err != nil {
		return err
	}
	for _, p := range inputs {
		if err := conn.AddTempRoot(ctx, p); err != nil {
			return b.classify(ctx, err, "pinning input "+p, nil)
		}
	}
	valid, err := conn.QueryValidPaths(ctx, inputs, false)
	if err != nil {
		return b.classify(ctx, err, "querying inputs", nil)
	}
	missing := without(inputs, valid)
	if len(missing) == 0 {
		return nil
	}
	subst, err := conn.QuerySubstitutablePaths(ctx, missing)
	if err != nil {
		return b.classify(ctx, err, "querying substitutes of inputs", nil)
	}
	failed, err := b.substitute(ctx, conn, subst)
	if err != nil {
		return err
	}
	absent := append(without(missing, subst), failed...)
	if len(absent) == 0 {
		return nil
	}
	var drvs []string
	for _, p := range absent {
		if d, ok := producer[p]; ok && !slices.Contains(drvs, d) {
			drvs = append(drvs, d)
		}
	}
	return buildstep.MissingInputs(absent, drvs)
}

// substitute fetches the inputs a substituter offers, now: a narinfo says a path is
// substitutable, not that its nar is there (a nar deleted by hand, a half-done GC), and an input
// that cannot be fetched is missing, for the farm to build again, not a failure of this build
// (the daemon would fail it, or with fallback build the input itself). All at once first (the
// daemon fetches them in parallel); when that fails, path by path, to tell which cannot be.
func (b *Builder) substitute(ctx context.Context, conn *daemon.Conn, paths []string) (failed []string, err error) {
	if len(paths) == 0 {
		return nil, nil
	}
	all := make([]daemon.DerivedPath, len(paths))
	for i, p := range paths {
		all[i] = daemon.DerivedPath{Drv: p} // an opaque store path: substituted, never built
	}
	var de *daemon.Error
	err = conn.BuildPaths(ctx, all, daemon.BuildNormal, func(daemon.LogLine) {})
	if err == nil {
		return nil, nil
	}
	if !errors.As(err, &de) || ctx.Err() != nil {
		return nil, b.classify(ctx, err, "substituting inputs", nil)
	}
	for _, p := range paths {
		if err := conn.EnsurePath(ctx, p); err != nil {
			if !errors.As(err, &de) || ctx.Err() != nil {
				return nil, b.classify(ctx, err, "substituting input "+p, nil)
			}
			b.log.Info("Input cannot be substituted; reporting it missing", "path", p, "error", de.Error())
			failed = append(failed, p)
		}
	}
	return failed, nil
}

// build runs BuildPaths, streaming the log into the attempt's log. It enforces the limits itself
// too: the log limit (the sink refuses more), and the timeout with a grace past the daemon's own.
func (b *Builder) build(ctx context.Context, conn *daemon.Conn, req buildstep.Request, outputs []string) error {
	bctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	if req.Limits.Timeout > 0 {
		t := time.AfterFunc(req.Limits.Timeout+b.cfg.TimeoutGrace, func() {
			stop(buildstep.TimedOut(fmt.Errorf("no result %s after the build timeout", b.cfg.TimeoutGrace), nil))
		})
		defer t.Stop()
	}
	sink := func(l daemon.LogLine) {
		line := make([]byte, 0, len(l.Text)+1)
		line = append(append(line, l.Text...), '\n')
		if _, err := req.Log.Write(line); err != nil && buildstep.KindOf(err) == buildstep.KindLogLimit {
			stop(err) // closing the connection makes the daemon kill the builder
		}
	}
	err := conn.BuildPaths(bctx, []daemon.DerivedPath{{Drv: req.Derivation, Outputs: outputs}}, daemon.BuildNormal, sink)
	if err == nil {
		return nil
	}
	if cause := context.Cause(bctx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return b.classify(ctx, err, "building "+req.Derivation, nil)
}

// classify turns a daemon or I/O failure into the contract's typed error: the daemon's own
// refusals (an *daemon.Error) are about the build; a broken connection is about the agent.
func (b *Builder) classify(ctx context.Context, err error, what string, tail []string) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var de *daemon.Error
	if errors.As(err, &de) {
		msg := fmt.Errorf("%s: %w", what, err)
		switch {
		// Nix's and Guix's exit statuses: 100 + 1 when a build timed out; Nix >= 1.26 sends no
		// status, so the message ("timed out after N seconds [of silence]") says it.
		case de.Status == 101 || strings.Contains(de.Message, "timed out after"):
			return buildstep.TimedOut(msg, tail)
		case substitutesUnreachable(de.Message):
			// The farm's bucket (or another substitute server) is down: the agent's trouble,
			// handed back without spending the Build's attempts; the health check follows it.
			return buildstep.AgentUnhealthy(msg)
		case strings.HasPrefix(what, "building"):
			return buildstep.BuildFailed(msg, tail)
		default:
			return buildstep.SetupFailed(msg)
		}
	}
	var se *buildstep.Error
	if errors.As(err, &se) {
		return err
	}
	if isConnErr(err) {
		return buildstep.AgentUnhealthy(fmt.Errorf("%s: daemon connection: %w", what, err))
	}
	return buildstep.SetupFailed(fmt.Errorf("%s: %w", what, err))
}

// unreachableMarks are how the daemons say a substitute server could not be reached, as opposed
// to not having a path: curl's errors in Nix ("unable to download …: Couldn't connect to server
// (7)"), and the connection errors Guix's substituter reports.
var unreachableMarks = []string{
	"Couldn't connect to server", "Couldn't resolve host", "Timeout was reached", "Connection refused",
	"connection refused", "Connection reset", "HTTP error 502", "HTTP error 503", "HTTP error 504",
	"Failure when receiving data from the peer", "could not connect", "failed to connect",
}

func substitutesUnreachable(msg string) bool {
	for _, m := range unreachableMarks {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}

func isConnErr(err error) bool {
	var ne net.Error
	return errors.Is(err, daemon.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ENOENT) || errors.As(err, &ne)
}

// outputNames are the outputs to build: those the Build names, else all of the derivation's.
func outputNames(req buildstep.Request, drv *derivation.Derivation) []string {
	var names []string
	for _, o := range req.Outputs {
		names = append(names, o.Name)
	}
	if len(names) == 0 {
		for _, o := range drv.Outputs {
			names = append(names, o.Name)
		}
	}
	return names
}

// without is all minus some, in all's order.
func without(all, some []string) []string {
	set := make(map[string]bool, len(some))
	for _, s := range some {
		set[s] = true
	}
	var out []string
	for _, a := range all {
		if !set[a] {
			out = append(out, a)
		}
	}
	return out
}
