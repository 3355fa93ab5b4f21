package daemonbuilder

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// maxNarInfo bounds a narinfo read from the farm's bucket.
const maxNarInfo = 1 << 20

// replaceStale deletes from the daemon's store the farm-built inputs whose local copy differs from
// what the farm published, so that they are substituted afresh. A local copy differs when this
// agent built the input in an attempt it lost (paused or partitioned past its Lease term, or
// killed) and another agent's attempt was published instead: with a derivation that is not
// reproducible, building on the local copy makes an output whose closure is not the farm's, and
// its publication fails as not reproducible. It runs before the inputs are pinned, which would
// keep them alive. A copy that cannot be checked (the bucket cannot be read, or has no narinfo)
// is kept: the substitution and publication steps report what is wrong with it.
func (b *Builder) replaceStale(ctx context.Context, conn *daemon.Conn, farmBuilt []string) error {
	if b.cfg.FarmCacheURL == "" || len(farmBuilt) == 0 {
		return nil
	}
	valid, err := conn.QueryValidPaths(ctx, farmBuilt, false)
	if err != nil {
		return b.classify(ctx, err, "querying inputs", nil)
	}
	var stale []string
	for _, p := range valid {
		info, err := conn.QueryPathInfo(ctx, p)
		if err != nil {
			return b.classify(ctx, err, "querying input "+p, nil)
		}
		published, ok := b.publishedNarHash(ctx, p)
		if ok && info != nil && published != info.NarHash {
			b.log.Info("Local copy of an input differs from the farm's; replacing it", "path", p,
				"local", info.NarHash, "published", published)
			stale = append(stale, p)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	res, err := conn.CollectGarbage(ctx, daemon.GCOptions{Action: daemon.GCDeleteSpecific, Paths: stale})
	if err == nil && len(res.Paths) < len(stale) {
		err = fmt.Errorf("deleted %d of %d", len(res.Paths), len(stale))
	}
	if err != nil {
		left := slices.DeleteFunc(slices.Clone(stale), func(p string) bool { return slices.Contains(res.Paths, p) })
		// The agent's own store is in the way, not the build: hand it back without spending an
		// attempt, and claim nothing until the health check has passed again.
		return buildstep.AgentUnhealthy(fmt.Errorf("local copies of inputs %s differ from the farm's and cannot be deleted (still referenced here?): %w",
			strings.Join(left, ", "), err))
	}
	return nil
}

// publishedNarHash is the NarHash of p's narinfo in the farm's bucket; ok is false when it cannot
// be told (no narinfo, or the bucket cannot be read).
func (b *Builder) publishedNarHash(ctx context.Context, p string) (string, bool) {
	hash, _, err := storepath.ParseBase(path.Base(p))
	if err != nil {
		return "", false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.cfg.FarmCacheURL, "/")+"/"+hash+".narinfo", nil)
	if err != nil {
		return "", false
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", false
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxNarInfo))
	if err != nil {
		return "", false
	}
	ni, err := narinfo.Parse(data)
	if err != nil || ni.StorePath != p {
		return "", false
	}
	return ni.NarHash, true
}
