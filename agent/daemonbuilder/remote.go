package daemonbuilder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/publishing"
)

// RemotePublisher publishes through the controller's publisher service (internal/publishing): the
// agent holds neither the bucket's write credentials nor the signing keys. It asks for uploads of
// the attempt it holds, PUTs each nar the bucket lacks to its presigned URL (compressed as told,
// no credentials), and asks the service to commit: the service verifies the nars and writes the
// signed narinfos, outputs last, each while the attempt is still the agent's.
type RemotePublisher struct {
	C *publishing.Client
	// Parallel is how many large items upload at once (small ones: 4 times as many), default 2.
	Parallel int
	// SpoolDir is where a compressed nar larger than memSpool waits for its PUT (S3 needs its
	// length first); default the system's temporary directory.
	SpoolDir string

	encoders sync.Pool // *zstd.Encoder, reused: a new one costs megabytes of tables
}

var _ Publisher = (*RemotePublisher)(nil)

// memSpool is the compressed size up to which a nar is held in memory before its PUT.
const memSpool = 8 << 20

// Publish implements Publisher.
func (p *RemotePublisher) Publish(ctx context.Context, a Attempt, items []Item, commit func(context.Context) error) ([]Published, error) {
	ref := publishing.AttemptRef{Namespace: a.Namespace, Name: a.Name, UID: a.UID, Attempt: a.Number}
	req := publishing.UploadsRequest{Attempt: ref, Items: make([]publishing.Item, len(items))}
	for i, it := range items {
		req.Items[i] = publishing.Item{Path: it.Info.Path, NarHash: it.Info.NarHash, NarSize: it.Info.NarSize,
			References: it.Info.References, Deriver: it.Info.Deriver, CA: it.Info.CA, Output: it.Output}
	}
	resp, err := p.C.Uploads(ctx, req)
	if err != nil {
		return nil, remoteError(err)
	}
	creq := publishing.CommitRequest{Attempt: ref, Compression: resp.Compression, Items: make([]publishing.CommitItem, len(items))}
	for i := range items {
		creq.Items[i].Item = req.Items[i]
	}
	if err := p.uploadAll(ctx, ref, items, req.Items, resp, creq.Items); err != nil {
		return nil, remoteError(err)
	}
	if commit != nil {
		for _, it := range items {
			if it.Output { // the agent's own fence first: a lost attempt does not even ask
				if err := commit(ctx); err != nil {
					return nil, err
				}
				break
			}
		}
	}
	cres, err := p.C.Commit(ctx, creq)
	if err != nil {
		return nil, remoteError(err)
	}
	out := make([]Published, len(items))
	for i, c := range cres.Items {
		out[i] = Published{Path: c.Path, NarHash: c.NarHash, AlreadyPresent: c.AlreadyPresent}
	}
	return out, nil
}

// remoteError gives the service's refusals the meaning the build step gives a publisher's errors:
// a service (or bucket) that cannot be reached, after the client's own retries, is ErrUnavailable,
// and the builder holds the attempt (Config.PublishHold) before handing it back.
func remoteError(err error) error {
	var e *publishing.Error
	var pe *publishing.PutError
	switch {
	case errors.Is(err, publishing.ErrNotOwner):
		return fmt.Errorf("%w: %w", errOwnership, err)
	case errors.Is(err, publishing.ErrNotReproducible):
		return errors.Join(ErrNotReproducible, err)
	case errors.Is(err, publishing.ErrUnavailable), errors.As(err, &pe) && pe.Status >= 500,
		!errors.As(err, &e) && !errors.As(err, &pe) && !errors.Is(err, context.Canceled) && isNetErr(err):
		return errors.Join(ErrUnavailable, err)
	}
	return err
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
}

// uploadAll uploads the nars resp asks for, each key once, small items 4 times as many at once,
// and records what was uploaded in commit.
func (p *RemotePublisher) uploadAll(ctx context.Context, ref publishing.AttemptRef, items []Item, reqItems []publishing.Item, resp *publishing.UploadsResponse, commit []publishing.CommitItem) error {
	parallel := p.Parallel
	if parallel <= 0 {
		parallel = 2
	}
	heavy, light := make(chan struct{}, parallel), make(chan struct{}, parallel*4)
	type result struct {
		size int64
		hash string
		err  error
	}
	byKey := map[string]*result{}
	var keys []string
	first := map[string]int{} // key -> the item that uploads it
	for i, u := range resp.Items {
		if u.Upload == nil {
			continue
		}
		if _, ok := byKey[u.NarKey]; !ok {
			byKey[u.NarKey] = &result{}
			keys = append(keys, u.NarKey)
			first[u.NarKey] = i
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, k := range keys {
		i := first[k]
		sem := heavy
		if n := items[i].Info.NarSize; n > 0 && n < 1<<20 {
			sem = light
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			byKey[k].err = ctx.Err()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			r := byKey[k]
			r.size, r.hash, r.err = p.upload(ctx, ref, items[i], reqItems[i], resp.Compression, *resp.Items[i].Upload)
			if r.err != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	var errs []error
	for i, u := range resp.Items {
		if u.Upload == nil {
			continue
		}
		r := byKey[u.NarKey]
		if r.err != nil {
			if first[u.NarKey] == i && !errors.Is(r.err, context.Canceled) {
				errs = append(errs, fmt.Errorf("uploading %s: %w", items[i].Info.Path, r.err))
			}
			continue
		}
		commit[i].FileSize, commit[i].FileHash = r.size, r.hash
	}
	if len(errs) == 0 && ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.Join(errs...)
}

// upload compresses item's nar into a spool (checking it is the NAR the daemon reported), then
// PUTs it; a URL that expired meanwhile is asked for again. It returns the compressed size and
// FileHash; 0 and "" when the object was there already (uploaded by another attempt: the commit
// verifies it).
func (p *RemotePublisher) upload(ctx context.Context, ref publishing.AttemptRef, it Item, ri publishing.Item, kind string, u bucket.PresignedPut) (int64, string, error) {
	want, err := bucket.NormalizeNarHash(it.Info.NarHash)
	if err != nil {
		return 0, "", err
	}
	// A daemon slow to accept is waited for by daemon.Dial.
	sp := &spool{dir: p.SpoolDir}
	fileHash, err := p.compressNar(ctx, it, kind, want, sp)
	if err != nil {
		sp.close()
		return 0, "", err
	}
	defer sp.close()
	for try := 0; ; try++ {
		r, err := sp.reader()
		if err != nil {
			return 0, "", err
		}
		err = p.C.Put(ctx, u, r, sp.size)
		switch {
		case err == nil:
			return sp.size, fileHash, nil
		case errors.Is(err, publishing.ErrUploadExists):
			return 0, "", nil
		case try >= 3 || ctx.Err() != nil:
			return 0, "", err
		case errors.Is(err, publishing.ErrUploadExpired):
			resp, err := p.C.Uploads(ctx, publishing.UploadsRequest{Attempt: ref, Items: []publishing.Item{ri}})
			if err != nil {
				return 0, "", err
			}
			if resp.Items[0].Upload == nil { // published or uploaded meanwhile
				return 0, "", nil
			}
			u = *resp.Items[0].Upload
		default:
			var pe *publishing.PutError
			if errors.As(err, &pe) && pe.Status < 500 {
				return 0, "", err
			}
			select {
			case <-ctx.Done():
				return 0, "", ctx.Err()
			case <-time.After(time.Duration(250<<try) * time.Millisecond):
			}
		}
	}
}

// compressNar streams it's nar through the compressor into sp, hashing both sides, and checks the
// NAR against the daemon's NarHash and NarSize.
func (p *RemotePublisher) compressNar(ctx context.Context, it Item, kind, narHash string, sp *spool) (string, error) {
	src, err := it.Open(ctx)
	if err != nil {
		return "", fmt.Errorf("opening the nar: %w", err)
	}
	defer src.Close()
	fileHasher, narHasher := nar.NewHashingWriter(), nar.NewHashingWriter()
	zw, release, err := p.compressor(io.MultiWriter(sp, fileHasher), kind)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(zw, io.TeeReader(src, narHasher)); err != nil {
		zw.Close()
		return "", fmt.Errorf("reading the nar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	release()
	if sp.err != nil {
		return "", sp.err
	}
	if got := narHasher.Sum(); got != narHash || uint64(narHasher.Size()) != it.Info.NarSize {
		return "", fmt.Errorf("the nar read has NarHash %s (%d bytes), the daemon says %s (%d bytes)", got, narHasher.Size(), narHash, it.Info.NarSize)
	}
	return fileHasher.Sum(), nil
}

func (p *RemotePublisher) compressor(w io.Writer, kind string) (io.WriteCloser, func(), error) {
	if kind == compress.Zstd {
		if e, _ := p.encoders.Get().(*zstd.Encoder); e != nil {
			e.Reset(w)
			return e, func() { p.encoders.Put(e) }, nil
		}
	}
	zw, err := compress.NewWriter(w, kind, 0)
	if err != nil {
		return nil, nil, err
	}
	if e, ok := zw.(*zstd.Encoder); ok {
		return zw, func() { p.encoders.Put(e) }, nil
	}
	return zw, func() {}, nil
}

// ProbeWrite implements WriteProber: the service answers, and takes the token for this agent's.
func (p *RemotePublisher) ProbeWrite(ctx context.Context, agent string) error {
	who, err := p.C.Probe(ctx)
	if err != nil {
		return err
	}
	if who.Agent != agent {
		return fmt.Errorf("the publisher takes this agent's token for agent %s (pod %s/%s), but this agent is %s: an agent's name must be its pod's",
			who.Agent, who.Namespace, who.Agent, agent)
	}
	return nil
}

// spool holds a compressed nar until its length is known: in memory up to memSpool, then in a
// temporary file.
type spool struct {
	dir  string
	mem  bytes.Buffer
	f    *os.File
	size int64
	err  error
}

func (s *spool) Write(b []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil && s.mem.Len()+len(b) > memSpool {
		if s.f, s.err = os.CreateTemp(s.dir, "guixfarm-nar-*"); s.err != nil {
			s.err = fmt.Errorf("spooling a nar: %w", s.err)
			return 0, s.err
		}
		os.Remove(s.f.Name()) // gone with the descriptor
		if _, s.err = s.f.Write(s.mem.Bytes()); s.err != nil {
			return 0, s.err
		}
		s.mem = bytes.Buffer{}
	}
	var n int
	if s.f != nil {
		n, s.err = s.f.Write(b)
	} else {
		n, s.err = s.mem.Write(b)
	}
	s.size += int64(n)
	return n, s.err
}

func (s *spool) reader() (io.Reader, error) {
	if s.f == nil {
		return bytes.NewReader(s.mem.Bytes()), nil
	}
	return io.NewSectionReader(s.f, 0, s.size), nil
}

func (s *spool) close() {
	if s.f != nil {
		s.f.Close()
	}
}

// RemoteLogs stores attempt logs through the publisher service (agent.LogStore): a presigned PUT
// of the attempt's log (the URL kept while it is valid), then the service makes it the
// derivation's log.
type RemoteLogs struct {
	C        *publishing.Client
	SpoolDir string

	mu   sync.Mutex
	urls map[publishing.LogRequest]bucket.PresignedPut
}

// PutAttemptLog implements agent.LogStore. Every upload also refreshes the derivation's log, as
// BucketLogs does.
func (l *RemoteLogs) PutAttemptLog(ctx context.Context, drvPath string, attempt int32, r io.Reader, final bool) error {
	key := publishing.LogRequest{Derivation: drvPath, Attempt: attempt}
	sp := &spool{dir: l.SpoolDir}
	defer sp.close()
	zw, err := compress.NewWriter(sp, compress.Gzip, 0)
	if err != nil {
		return err
	}
	if _, err := io.Copy(zw, r); err != nil {
		return fmt.Errorf("reading the log: %w", err)
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if sp.err != nil {
		return sp.err
	}
	for try := 0; ; try++ {
		u, err := l.url(ctx, key, try > 0)
		if err != nil {
			return err
		}
		body, err := sp.reader()
		if err != nil {
			return err
		}
		err = l.C.Put(ctx, u, body, sp.size)
		if err == nil {
			break
		}
		if !errors.Is(err, publishing.ErrUploadExpired) || try > 0 {
			return err
		}
	}
	if final {
		l.mu.Lock()
		delete(l.urls, key)
		l.mu.Unlock()
	}
	return l.C.CommitLog(ctx, key)
}

// url is the presigned URL of key's log, asked for when there is none valid for another minute.
func (l *RemoteLogs) url(ctx context.Context, key publishing.LogRequest, fresh bool) (bucket.PresignedPut, error) {
	l.mu.Lock()
	u, ok := l.urls[key]
	l.mu.Unlock()
	if ok && !fresh && time.Until(u.Expires) > time.Minute {
		return u, nil
	}
	resp, err := l.C.LogUpload(ctx, key)
	if err != nil {
		return bucket.PresignedPut{}, err
	}
	l.mu.Lock()
	if l.urls == nil || len(l.urls) > 1000 {
		l.urls = map[publishing.LogRequest]bucket.PresignedPut{}
	}
	l.urls[key] = resp.Upload
	l.mu.Unlock()
	return resp.Upload, nil
}
