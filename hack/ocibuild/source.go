package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// source is what the images say about the tree they were built from.
type source struct {
	// epoch is every file's mtime and the images' creation time: SOURCE_DATE_EPOCH, else the
	// commit time of HEAD, else 0. Never the clock, so two builds of a commit are identical.
	epoch time.Time
	// revision is HEAD's commit, empty outside a git tree.
	revision string
}

func readSource(ctx context.Context, dir string) (source, error) {
	var s source
	s.revision, _ = git(ctx, dir, "rev-parse", "HEAD")
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return s, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err)
		}
		s.epoch = time.Unix(sec, 0).UTC()
		return s, nil
	}
	s.epoch = time.Unix(0, 0).UTC()
	if ct, err := git(ctx, dir, "log", "-1", "--format=%ct"); err == nil {
		sec, err := strconv.ParseInt(ct, 10, 64)
		if err != nil {
			return s, fmt.Errorf("commit time %q of HEAD: %w", ct, err)
		}
		s.epoch = time.Unix(sec, 0).UTC()
	}
	return s, nil
}

// git runs a git command in dir; an error means no git or no git tree, which is not fatal.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}
