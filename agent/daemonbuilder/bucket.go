package daemonbuilder

import (
	"context"
	"errors"
	"io"

	"github.com/guixfarm/guix-farm/internal/bucket"
)

// BucketPublisher publishes straight to the farm's bucket with the agent's own credentials and
// signing keys: for setups without the controller's publisher service (RemotePublisher), and the
// baseline of its benchmark. An agent pod made by the chart never has it.
type BucketPublisher struct {
	P *bucket.Publisher
	// Parallel is how many items upload at once (default bucket.DefaultClosureParallelism).
	Parallel int
}

var _ Publisher = BucketPublisher{}

// Publish implements Publisher with PublishClosure: what the bucket has costs a lookup.
func (b BucketPublisher) Publish(ctx context.Context, _ Attempt, items []Item, commit func(context.Context) error) ([]Published, error) {
	store := make([]bucket.StoreItem, len(items))
	for i, it := range items {
		store[i] = bucket.StoreItem{
			StorePath: it.Info.Path, References: it.Info.References, Deriver: it.Info.Deriver, CA: it.Info.CA,
			NarHash: it.Info.NarHash, NarSize: it.Info.NarSize, Open: it.Open,
		}
		if it.Output {
			store[i].Commit = commit
		} else {
			store[i].Input = true
		}
	}
	res, err := b.P.PublishClosure(ctx, store, b.Parallel)
	if err != nil {
		if errors.Is(err, bucket.ErrNotReproducible) {
			return nil, errors.Join(ErrNotReproducible, err)
		}
		if bucket.Transient(err) {
			return nil, errors.Join(ErrUnavailable, err)
		}
		return nil, err
	}
	out := make([]Published, len(res))
	for i, r := range res {
		out[i] = Published{Path: items[i].Info.Path, AlreadyPresent: r.AlreadyPresent}
		if r.NarInfo != nil {
			out[i].NarHash = r.NarInfo.NarHash
		}
	}
	return out, nil
}

// ProbeWrite implements WriteProber.
func (b BucketPublisher) ProbeWrite(ctx context.Context, agent string) error {
	return b.P.ProbeWrite(ctx, agent)
}

// BucketLogs stores attempt logs in the bucket (agent.LogStore): each attempt under its own key,
// the latest also where `guix build --log-file` and `nix log` look.
type BucketLogs struct{ P *bucket.Publisher }

// PutAttemptLog implements agent.LogStore. Every upload also refreshes the derivation's log, so
// final changes nothing here.
func (l BucketLogs) PutAttemptLog(ctx context.Context, drvPath string, attempt int32, r io.Reader, final bool) error {
	return l.P.PublishAttemptLog(ctx, drvPath, int(attempt), r)
}
