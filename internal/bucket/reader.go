package bucket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// ErrNotFound is returned (wrapped) for a store path the bucket lacks.
var ErrNotFound = errors.New("not in the bucket")

// ReaderOptions tune a Reader.
type ReaderOptions struct {
	// PositiveTTL and NegativeTTL bound how long Has trusts an answer
	// (defaults 10 min and 10 s: a missing path may be published any time,
	// a present one stays until GC).
	PositiveTTL, NegativeTTL time.Duration
	// MaxFileSize bounds ReadFile (default 64 MiB).
	MaxFileSize int64
	// TrustedNixKeys, when set, make NarInfo reject narinfos no trusted
	// key signed.
	TrustedNixKeys []signing.NixPublicKey
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Reader answers questions about the bucket's store paths.
type Reader struct {
	cfg  Config
	opts ReaderOptions
	c    *minio.Client
	dir  storepath.Dir

	mu    sync.Mutex
	cache map[string]cached // narinfo key -> answer
}

type cached struct {
	present bool
	expires time.Time
}

// NewReader makes a Reader; credentials may be empty for anonymous reads.
func NewReader(cfg Config, opts ReaderOptions) (*Reader, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if opts.PositiveTTL == 0 {
		opts.PositiveTTL = 10 * time.Minute
	}
	if opts.NegativeTTL == 0 {
		opts.NegativeTTL = 10 * time.Second
	}
	if opts.MaxFileSize == 0 {
		opts.MaxFileSize = DefaultMaxFileSize
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c, err := NewClient(cfg)
	if err != nil {
		return nil, err
	}
	return &Reader{cfg: cfg, opts: opts, c: c, dir: storepath.Dir(cfg.StoreDir), cache: map[string]cached{}}, nil
}

// Forget drops cached answers about storePaths, e.g. after GC deleted them, so Has asks again.
func (r *Reader) Forget(storePaths ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range storePaths {
		if k, err := r.key(p); err == nil {
			delete(r.cache, k)
		}
	}
}

func (r *Reader) key(storePath string) (string, error) {
	sp, err := r.dir.Parse(storePath)
	if err != nil {
		return "", err
	}
	return NarInfoKey(sp), nil
}

// Has reports whether the bucket has a narinfo for storePath (a HEAD,
// cached for PositiveTTL, or NegativeTTL when absent).
func (r *Reader) Has(ctx context.Context, storePath string) (bool, error) {
	key, err := r.key(storePath)
	if err != nil {
		return false, err
	}
	now := r.opts.Now()
	r.mu.Lock()
	c, ok := r.cache[key]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.present, nil
	}
	present, err := exists(ctx, r.c, r.cfg, r.cfg.Log, key)
	if err != nil {
		return false, err
	}
	r.remember(key, present, now)
	return present, nil
}

func (r *Reader) remember(key string, present bool, now time.Time) {
	ttl := r.opts.NegativeTTL
	if present {
		ttl = r.opts.PositiveTTL
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) > 100000 { // bound memory; answers are cheap to redo
		clear(r.cache)
	}
	r.cache[key] = cached{present: present, expires: now.Add(ttl)}
}

// NarInfo fetches and parses storePath's narinfo; errors.Is(err,
// ErrNotFound) when there is none.
func (r *Reader) NarInfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	key, err := r.key(storePath)
	if err != nil {
		return nil, err
	}
	data, _, err := getSmall(ctx, r.c, r.cfg, r.cfg.Log, key)
	// A missing bucket is a misconfiguration, not a missing path: saying
	// "not found" would have the farm rebuild what it cannot publish.
	if isNotFound(err) && !isNoSuchBucket(err) {
		r.remember(key, false, r.opts.Now())
		return nil, fmt.Errorf("%s (s3 object %s/%s): %w", storePath, r.cfg.Bucket, key, ErrNotFound)
	}
	if err != nil {
		return nil, explain(err, r.cfg.Endpoint, r.cfg.Bucket, key)
	}
	r.remember(key, true, r.opts.Now())
	ni, err := narinfo.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("s3 object %s/%s: %w", r.cfg.Bucket, key, err)
	}
	if ni.StorePath != storePath {
		return nil, &UntrustedError{Bucket: r.cfg.Bucket, Key: key, StorePath: storePath, Reason: fmt.Sprintf("it is the narinfo of %s", ni.StorePath)}
	}
	if len(r.opts.TrustedNixKeys) > 0 {
		if err := ni.Verify(r.opts.TrustedNixKeys, nil); err != nil {
			return nil, &UntrustedError{Bucket: r.cfg.Bucket, Key: key, StorePath: storePath, Reason: err.Error()}
		}
	}
	return ni, nil
}

// UntrustedError is a narinfo the reader must not believe: no trusted key signed it, or it names
// another store path. It matches availability.ErrUntrusted (errors.Is): the availability owner
// counts such an output absent, never available.
type UntrustedError struct {
	Bucket, Key, StorePath, Reason string
}

func (e *UntrustedError) Error() string {
	return fmt.Sprintf("s3 object %s/%s: the narinfo of %s is not trusted: %s", e.Bucket, e.Key, e.StorePath, e.Reason)
}

// Is makes errors.Is(err, availability.ErrUntrusted) true.
func (e *UntrustedError) Is(target error) bool { return target == availability.ErrUntrusted }

// Present reports whether a client could substitute storePath from the
// bucket now: its narinfo is there and so is the nar the narinfo's URL
// names. It is not cached (the availability owner decides how long an
// answer stands): a GET of the narinfo (through NarInfo) then a HEAD of the
// nar. A narinfo whose nar is missing counts as absent: a client would fail
// to substitute it. A narinfo that is not trusted (no trusted key signed it,
// with ReaderOptions.TrustedNixKeys; or it names another path) is absent
// too, with an *UntrustedError saying why (availability.ErrUntrusted), so
// that the owner can say so. A URL on another server is not ours to check
// and counts as present, as it does for the publisher. Errors other than
// these (the bucket unreachable, access denied, a narinfo that does not
// parse) are returned.
func (r *Reader) Present(ctx context.Context, storePath string) (bool, error) {
	ni, err := r.NarInfo(ctx, storePath)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if errors.Is(err, availability.ErrUntrusted) {
		return false, err
	}
	if err != nil {
		return false, fmt.Errorf("is %s in the bucket: %w", storePath, err)
	}
	if strings.Contains(ni.URL, "://") {
		return true, nil
	}
	key := strings.TrimPrefix(ni.URL, "./")
	ok, err := exists(ctx, r.c, r.cfg, r.cfg.Log, key)
	if err != nil {
		return false, fmt.Errorf("is the nar of %s in the bucket: %w", storePath, err)
	}
	if !ok {
		r.cfg.Log.V(1).Info("narinfo without its nar: counted absent", "storePath", storePath, "bucket", r.cfg.Bucket, "nar", key)
	}
	return ok, nil
}

// ReadFile returns the content of a store item that is a single regular
// file (a .drv, a text file): narinfo, then nar, decompressed, unpacked and
// checked against the narinfo's NarHash and NarSize.
func (r *Reader) ReadFile(ctx context.Context, storePath string) ([]byte, error) {
	ni, err := r.NarInfo(ctx, storePath)
	if err != nil {
		return nil, err
	}
	var data []byte
	_, err = retry(ctx, r.cfg.Retry, r.cfg.Log, "get nar", func(ctx context.Context) error {
		data, err = r.readNarFile(ctx, ni)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", storePath, err)
	}
	return data, nil
}

func (r *Reader) readNarFile(ctx context.Context, ni *narinfo.NarInfo) ([]byte, error) {
	kind, err := compress.ParseKind(ni.Compression)
	if err != nil || ni.Compression == "" {
		return nil, permanent(fmt.Errorf("narinfo Compression %q: %v", ni.Compression, err))
	}
	obj, err := r.c.GetObject(ctx, r.cfg.Bucket, ni.URL, minio.GetObjectOptions{})
	if err != nil {
		return nil, explain(err, r.cfg.Endpoint, r.cfg.Bucket, ni.URL)
	}
	defer obj.Close()
	zr, err := compress.NewReader(obj, kind)
	if err != nil {
		return nil, wrapObj(err, r.cfg, ni.URL)
	}
	defer zr.Close()
	h := nar.NewHashingWriter()
	tee := io.TeeReader(zr, h)
	data, err := nar.ReadSingleFile(tee, r.opts.MaxFileSize)
	if err != nil {
		return nil, wrapObj(err, r.cfg, ni.URL)
	}
	if _, err := io.Copy(io.Discard, tee); err != nil { // hash it all
		return nil, wrapObj(err, r.cfg, ni.URL)
	}
	want, err := normalizeNarHash(ni.NarHash)
	if err != nil {
		return nil, permanent(err)
	}
	if h.Sum() != want || uint64(h.Size()) != ni.NarSize {
		return nil, permanent(fmt.Errorf("s3 object %s/%s: NAR hashes to %s (%d bytes), the narinfo says %s (%d bytes): corrupt nar; delete the narinfo and republish",
			r.cfg.Bucket, ni.URL, h.Sum(), h.Size(), ni.NarHash, ni.NarSize))
	}
	return data, nil
}

func isNoSuchBucket(err error) bool {
	var er minio.ErrorResponse
	return errors.As(err, &er) && er.Code == "NoSuchBucket"
}

func wrapObj(err error, cfg Config, key string) error {
	if isNotFound(err) {
		return permanent(fmt.Errorf("s3 object %s/%s: the narinfo points at a missing nar: %w", cfg.Bucket, key, err))
	}
	if errors.Is(err, nar.ErrCorrupt) {
		return permanent(fmt.Errorf("s3 object %s/%s: %w", cfg.Bucket, key, err))
	}
	return explain(err, cfg.Endpoint, cfg.Bucket, key)
}

// Read returns the contents of a .drv from the bucket: the controller's
// derivation source.
// It follows drvsource's error contract: a path not in the bucket wraps drvsource.ErrNotFound, a
// malformed path drvsource.ErrInvalid; anything else is transient.
//
// What it returns is checked against drvPath: a .drv's store path is made from its content and
// references (derivation.CheckPath), so content that does not hash to its path is refused
// (drvsource.ErrInvalid), whoever signed its narinfo. A narinfo not trusted counts as absent
// (drvsource.ErrNotFound, saying why).
func (r *Reader) Read(ctx context.Context, drvPath string) ([]byte, error) {
	if _, err := r.dir.ParseDerivation(drvPath); err != nil {
		return nil, fmt.Errorf("%w: %w", drvsource.ErrInvalid, err)
	}
	data, err := r.ReadFile(ctx, drvPath)
	if errors.Is(err, ErrNotFound) || errors.Is(err, availability.ErrUntrusted) {
		return nil, fmt.Errorf("%w: %w", drvsource.ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	if err := derivation.CheckPath(r.dir, drvPath, data); err != nil {
		return nil, fmt.Errorf("%w: s3 bucket %s: %w", drvsource.ErrInvalid, r.cfg.Bucket, err)
	}
	return data, nil
}
