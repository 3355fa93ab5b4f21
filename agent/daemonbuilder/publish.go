package daemonbuilder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/derivation"
)

// Publisher is the only way a build's results leave the agent: RemotePublisher (the controller's
// publisher service signs and writes; the agent holds no key nor bucket write credential), or
// BucketPublisher (straight to the bucket with the agent's own credentials and keys, for setups
// without the service).
type Publisher interface {
	// Publish makes items, the closure of attempt a's outputs, available as substitutes,
	// references first (items come in that order): each item's nar, verified, then its signed
	// narinfo. Items already published with the same NarHash cost a lookup. commit runs right
	// before the narinfo of each item marked Output is written (RemotePublisher: once, before the
	// service, which checks ownership itself, is asked to write them); its error stops the
	// publication with nothing more written.
	Publish(ctx context.Context, a Attempt, items []Item, commit func(context.Context) error) ([]Published, error)
}

// Attempt names the attempt whose outputs are published.
type Attempt struct {
	Namespace, Name, UID string
	// Number is the Build's attempt count when it was claimed.
	Number int32
}

// attemptOf is the attempt req runs.
func attemptOf(req buildstep.Request) Attempt {
	ns, name, _ := strings.Cut(req.Build, "/")
	return Attempt{Namespace: ns, Name: name, UID: req.BuildUID, Number: req.Attempt}
}

// Item is one store path to publish.
type Item struct {
	Info daemon.PathInfo
	// Output marks the outputs of the attempt (the rest is their closure).
	Output bool
	// Open streams the item's nar; it may be called more than once.
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// Published is what Publish did with one item.
type Published struct {
	Path    string
	NarHash string
	// AlreadyPresent: the bucket had it, nothing was uploaded.
	AlreadyPresent bool
}

// ErrNotReproducible is matched by a publisher's error when an output is already published with
// another NarHash.
var ErrNotReproducible = errors.New("output already published with another NarHash")

// ErrUnavailable is matched by a publisher's error when the bucket (or whatever publishes for the
// agent) cannot be reached now: publishing again later may work, so the attempt is held.
var ErrUnavailable = errors.New("publication unavailable")

// maxClosure bounds the closure walked for one attempt.
const maxClosure = 100_000

// publish publishes the outputs' closure and returns the outputs with their NarHashes.
func (b *Builder) publish(ctx context.Context, conn *daemon.Conn, req buildstep.Request, drv *derivation.Derivation, outputs []string) (buildstep.Result, error) {
	paths := drv.OutputPaths()
	var outPaths []string
	for _, name := range outputs {
		p, ok := paths[name]
		if !ok || p == "" {
			return buildstep.Result{}, buildstep.SetupFailed(fmt.Errorf("%s has no output %q with a known path", req.Derivation, name))
		}
		outPaths = append(outPaths, p)
	}
	items, err := b.closure(ctx, conn, outPaths)
	if err != nil {
		return buildstep.Result{}, err
	}
	commit := func(ctx context.Context) error {
		if err := req.StillOwned(ctx); err != nil {
			return fmt.Errorf("%w: %w", errOwnership, err)
		}
		return nil
	}
	pubd, err := b.publishHeld(ctx, req, items, commit)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return buildstep.Result{}, ctx.Err()
		case errors.Is(err, ErrNotReproducible):
			return buildstep.Result{}, buildstep.NotReproducible(err)
		case errors.Is(err, errOwnership):
			return buildstep.Result{}, err // the agent's report finds it lost the attempt
		}
		// The bucket refusing writes is the agent's trouble (credentials, outage), not the build's.
		return buildstep.Result{}, buildstep.AgentUnhealthy(fmt.Errorf("publishing %s: %w", req.Derivation, err))
	}
	hashes := map[string]string{}
	for _, p := range pubd {
		hashes[p.Path] = p.NarHash
	}
	res := buildstep.Result{}
	for i, name := range outputs {
		res.Outputs = append(res.Outputs, buildstep.Output{Name: name, Path: outPaths[i], NarHash: hashes[outPaths[i]]})
	}
	return res, nil
}

// publishHeld publishes items, and while the publisher cannot be reached publishes again with
// backoff, up to the hold: a built attempt is worth more than the wait (what was uploaded before
// the outage costs a lookup the next time). Past the hold the error stands.
func (b *Builder) publishHeld(ctx context.Context, req buildstep.Request, items []Item, commit func(context.Context) error) ([]Published, error) {
	deadline := time.Now().Add(b.cfg.PublishHold)
	backoff := time.Second
	for {
		pubd, err := b.pub.Publish(ctx, attemptOf(req), items, commit)
		if err == nil || !errors.Is(err, ErrUnavailable) || ctx.Err() != nil || time.Now().Add(backoff).After(deadline) {
			return pubd, err
		}
		b.log.Info("Publication unavailable; holding the attempt and trying again", "build", req.Build,
			"retryIn", backoff, "holdUntil", deadline.Format(time.RFC3339), "error", err.Error())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// errOwnership wraps a failed ownership check.
var errOwnership = errors.New("attempt no longer owned")

// closure is the outputs and everything they refer to, references first, from the daemon.
func (b *Builder) closure(ctx context.Context, conn *daemon.Conn, outputs []string) ([]Item, error) {
	infos, err := conn.Closure(ctx, outputs, maxClosure)
	if err != nil {
		return nil, b.classify(ctx, err, "querying the closure of the outputs", nil)
	}
	isOutput := map[string]bool{}
	for _, p := range outputs {
		isOutput[p] = true
	}
	items := make([]Item, 0, len(infos))
	for _, info := range infos {
		items = append(items, Item{Info: info, Output: isOutput[info.Path], Open: b.narOpener(info.Path)})
	}
	return items, nil
}

// narOpener streams a path's nar on a (pooled) connection of its own, so items upload in
// parallel and a half-read stream never spoils the attempt's connection. The publisher hashes
// what it uploads and checks it against the item's NarHash, so the stream need not hash it too.
func (b *Builder) narOpener(path string) func(ctx context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		return b.nars.OpenNar(ctx, path, daemon.CallerHashes())
	}
}
