package daemonbuilder

import (
	"context"
	"fmt"
	"syscall"

	"github.com/guixfarm/guix-farm/internal/daemon"
)

// StoreHygiene keeps the agent's store usable: below the free-space floor the agent claims
// nothing and asks the daemon to collect garbage up to the target. Running builds are safe: their
// .drv, inputs and outputs hold temporary roots.
type StoreHygiene struct {
	// Agent names the agent (the bucket probe object).
	Agent string
	// Path is the store as the agent sees it (the volume shared with the daemon); "" skips.
	Path                              string
	MinFreePercent, TargetFreePercent float64
}

// WriteProber checks that the bucket takes writes.
type WriteProber interface {
	ProbeWrite(ctx context.Context, agent string) error
}

// Check says whether the agent can build now: the daemon answers, the bucket takes writes, the
// store has room (after a garbage collection if need be). Its error is why not.
func (b *Builder) Check(ctx context.Context, bucket WriteProber, s StoreHygiene) error {
	conn, err := b.dial(ctx)
	if err != nil {
		return fmt.Errorf("daemon at %s unreachable: %w", b.cfg.Socket, err)
	}
	defer conn.Close()
	if bucket != nil {
		if err := bucket.ProbeWrite(ctx, s.Agent); err != nil {
			return fmt.Errorf("the bucket refuses writes: %w", err)
		}
	}
	if s.Path == "" || s.MinFreePercent <= 0 {
		return nil
	}
	free, total, err := diskFree(s.Path)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.Path, err)
	}
	if pct(free, total) >= s.MinFreePercent {
		return nil
	}
	target := uint64(max(s.TargetFreePercent, s.MinFreePercent) / 100 * float64(total))
	res, gcErr := conn.CollectGarbage(ctx, daemon.GCOptions{Action: daemon.GCDeleteDead, MaxFreed: target - min(target, free)})
	b.log.Info("Store below its free-space floor: collected garbage", "path", s.Path, "freed", res.BytesFreed, "error", gcErr)
	if free, total, err = diskFree(s.Path); err == nil && pct(free, total) >= s.MinFreePercent {
		return nil
	}
	return fmt.Errorf("store %s has %.1f%% free, below the floor of %.1f%% even after garbage collection", s.Path, pct(free, total), s.MinFreePercent)
}

func diskFree(path string) (free, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

func pct(free, total uint64) float64 {
	if total == 0 {
		return 100
	}
	return 100 * float64(free) / float64(total)
}
