package bucket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/compress"
)

// Build logs. Nix (binary-cache-store.cc, getBuildLog) and Guix (guix
// build --log-file) fetch log/<drv base name> from a substitute URL, and
// Nix's HTTP store and browsers undo Content-Encoding: gzip; so the latest
// attempt's log is there, gzipped, as guix publish serves its .gz logs.
// Every attempt's log is also kept under attempt-log/<drv base
// name>/<attempt>, not under log/<drv base name>/: S3 servers backed by a
// file system (MinIO) cannot hold both an object "a" and an object "a/b".

// logAttemptMeta is the user metadata (x-amz-meta-guixfarm-attempt) naming
// the attempt a log object holds; CopyObject carries it to log/<drv>, where
// it keeps an older attempt from replacing a newer one's log.
const logAttemptMeta = "Guixfarm-Attempt"

// LogKey is the object name of a derivation's build log, the one clients
// fetch: log/<drv base name>.
func LogKey(drvPath string) string { return "log/" + path.Base(drvPath) }

// AttemptLogKey is the object name of the build log of one attempt (1, 2,
// …): attempt-log/<drv base name>/<attempt>.
func AttemptLogKey(drvPath string, attempt int) string {
	return attemptLogPrefix(drvPath) + strconv.Itoa(attempt)
}

func attemptLogPrefix(drvPath string) string { return "attempt-log/" + path.Base(drvPath) + "/" }

// PublishLog stores a build log under LogKey, gzip-compressed with
// Content-Encoding: gzip: HTTP clients (Nix's, browsers, curl
// --compressed) decompress it. It streams r, read once, so it is not
// retried. The agent uses PublishAttemptLog, which keeps every attempt's.
func (p *Publisher) PublishLog(ctx context.Context, drvPath string, r io.Reader) error {
	d, err := p.dir.ParseDerivation(drvPath)
	if err != nil {
		return fmt.Errorf("publish log: %w", err)
	}
	return p.putLog(ctx, LogKey(d.String()), r, nil)
}

// PublishAttemptLog stores the log of attempt (counted from 1) of the
// build of drvPath under AttemptLogKey, then copies it (server-side) to
// LogKey, unless the log there is from a later attempt. Each attempt has
// its own object, so a retry never overwrites an earlier attempt's log.
//
// While the build runs, call it again with the whole log so far: each
// call replaces that attempt's object and LogKey, so `nix log` and
// OpenLog follow the build. The caller bounds how often. r is read once
// and not retried (the next call re-sends the log anyway).
func (p *Publisher) PublishAttemptLog(ctx context.Context, drvPath string, attempt int, r io.Reader) error {
	d, err := p.dir.ParseDerivation(drvPath)
	if err != nil {
		return fmt.Errorf("publish log: %w", err)
	}
	if attempt < 1 {
		return fmt.Errorf("publish log of %s: attempt %d: attempts count from 1", drvPath, attempt)
	}
	if err := p.putLog(ctx, AttemptLogKey(d.String(), attempt), r, map[string]string{logAttemptMeta: strconv.Itoa(attempt)}); err != nil {
		return err
	}
	return p.CommitAttemptLog(ctx, drvPath, attempt)
}

// CommitAttemptLog copies (server-side) the log of attempt under AttemptLogKey to LogKey, unless
// the log there is from a later attempt: the second half of PublishAttemptLog, for a log someone
// else uploaded (PresignAttemptLogPut).
func (p *Publisher) CommitAttemptLog(ctx context.Context, drvPath string, attempt int) error {
	d, err := p.dir.ParseDerivation(drvPath)
	if err != nil {
		return fmt.Errorf("publish log: %w", err)
	}
	if attempt < 1 {
		return fmt.Errorf("publish log of %s: attempt %d: attempts count from 1", drvPath, attempt)
	}
	src, dst := AttemptLogKey(d.String(), attempt), LogKey(d.String())
	// Stat, then copy: a later attempt's log written between the two is
	// replaced by this one until that attempt's next upload. Only an agent
	// that lost its claim still uploads an earlier attempt, and the
	// per-attempt objects are exact in any case.
	_, err = retry(ctx, p.cfg.Retry, p.log, "copy log", func(ctx context.Context) error {
		st, err := p.c.StatObject(ctx, p.cfg.Bucket, dst, minio.StatObjectOptions{})
		if err != nil && !isNotFound(err) {
			return err
		}
		if err == nil {
			if have, perr := strconv.Atoi(st.Metadata.Get("X-Amz-Meta-" + logAttemptMeta)); perr == nil && have > attempt {
				p.log.V(1).Info("not replacing the log of a later attempt", "key", dst, "attempt", attempt, "latest", have)
				return nil
			}
		}
		// Without ReplaceMetadata the copy keeps Content-Type,
		// Content-Encoding and the attempt number.
		_, err = p.c.CopyObject(ctx, minio.CopyDestOptions{Bucket: p.cfg.Bucket, Object: dst}, minio.CopySrcOptions{Bucket: p.cfg.Bucket, Object: src})
		return err
	})
	if err != nil {
		return fmt.Errorf("publish log of %s: copying %s to %s: %w", drvPath, src, dst, explain(err, p.cfg.Endpoint, p.cfg.Bucket, dst))
	}
	return nil
}

// putLog streams r, gzip-compressed, to key with Content-Encoding: gzip.
func (p *Publisher) putLog(ctx context.Context, key string, r io.Reader, meta map[string]string) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := func() error {
			zw, err := compress.NewWriter(pw, compress.Gzip, 0)
			if err != nil {
				return err
			}
			if _, err := io.Copy(zw, r); err != nil {
				zw.Close()
				return err
			}
			return zw.Close()
		}()
		pw.CloseWithError(err)
		done <- err
	}()
	_, uerr := p.putStream(ctx, key, pr, minio.PutObjectOptions{ContentType: ContentTypeLog, ContentEncoding: "gzip", UserMetadata: meta})
	pr.CloseWithError(errUploadEnded) // unblocks the producer
	// Wait for it: the caller may reuse r once we return.
	if perr := <-done; perr != nil && !errors.Is(perr, errUploadEnded) {
		return fmt.Errorf("publish log %s: reading the log: %w", key, perr)
	}
	return explain(uerr, p.cfg.Endpoint, p.cfg.Bucket, key)
}

// OpenLog returns the build log of drvPath, decompressed: attempt 0 is the
// latest (LogKey, what clients fetch), attempt n ≥ 1 that attempt's
// (AttemptLogKey). errors.Is(err, ErrNotFound) when there is none. Read
// it again to follow a running build: each PublishAttemptLog replaces it.
func (r *Reader) OpenLog(ctx context.Context, drvPath string, attempt int) (io.ReadCloser, error) {
	d, err := r.dir.ParseDerivation(drvPath)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	key := LogKey(d.String())
	switch {
	case attempt > 0:
		key = AttemptLogKey(d.String(), attempt)
	case attempt < 0:
		return nil, fmt.Errorf("open log of %s: attempt %d: give 0 for the latest, or an attempt counted from 1", drvPath, attempt)
	}
	var obj *minio.Object
	var st minio.ObjectInfo
	_, err = retry(ctx, r.cfg.Retry, r.cfg.Log, "get "+key, func(ctx context.Context) error {
		o, err := r.c.GetObject(ctx, r.cfg.Bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		if st, err = o.Stat(); err != nil { // makes the request
			o.Close()
			return err
		}
		obj = o
		return nil
	})
	if isNotFound(err) {
		return nil, fmt.Errorf("build log of %s (s3 object %s/%s): %w", drvPath, r.cfg.Bucket, key, ErrNotFound)
	}
	if err != nil {
		return nil, explain(err, r.cfg.Endpoint, r.cfg.Bucket, key)
	}
	// A transport that asked for gzip itself has already undone it and
	// dropped the header; PublishLog of older versions had it too.
	if !strings.EqualFold(st.ContentEncoding, "gzip") {
		return obj, nil
	}
	zr, err := compress.NewReader(obj, compress.Gzip)
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("build log of %s (s3 object %s/%s): %w", drvPath, r.cfg.Bucket, key, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{zr, multiCloser{zr, obj}}, nil
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var errs []error
	for _, c := range m {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// LogAttempts lists the attempts whose logs drvPath has under
// AttemptLogKey, in increasing order.
func (r *Reader) LogAttempts(ctx context.Context, drvPath string) ([]int, error) {
	d, err := r.dir.ParseDerivation(drvPath)
	if err != nil {
		return nil, fmt.Errorf("log attempts: %w", err)
	}
	prefix := attemptLogPrefix(d.String())
	var out []int
	for o := range r.c.ListObjects(ctx, r.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if o.Err != nil {
			return nil, explain(o.Err, r.cfg.Endpoint, r.cfg.Bucket, prefix)
		}
		if n, err := strconv.Atoi(strings.TrimPrefix(o.Key, prefix)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}
