package bucket

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// StoreItem is one store path to publish.
type StoreItem struct {
	// StorePath is the full path, e.g. /gnu/store/<hash>-hello.
	StorePath string
	// References are store paths or base names the item refers to
	// (itself included if it does), as the daemon reports them. Each one
	// but the item itself must have a narinfo in the bucket, or be in the
	// same PublishClosure batch.
	References []string
	// ScanReferences, when set, are candidate store paths: those whose hash
	// part occurs in the NAR are added to References (Nix's scan).
	ScanReferences []string
	// Deriver is the .drv path or base name, if known. Anything else (Nix's
	// "unknown-deriver", a path of another store) is left out of the
	// narinfo.
	Deriver string
	System  string
	CA      string
	// NarHash ("sha256:<nixbase32>", "sha256:<hex>", bare hex, or SRI
	// "sha256-<base64>", as the daemon or nix path-info reports it) and
	// NarSize, if known. When NarHash is empty the publisher reads the NAR
	// twice: once to hash it (its object name is the NarHash), once to
	// upload it.
	NarHash string
	NarSize uint64
	// Open returns the item's NAR stream; it may be called more than once
	// (hashing pass, retries). Not needed when Uploaded is set.
	Open func(ctx context.Context) (io.ReadCloser, error)
	// Uploaded, when set, says that the item's nar was put in the bucket by
	// someone else (an agent, through a presigned URL): Publish does not
	// upload it but verifies the object there (VerifyUploaded) before it
	// writes the signed narinfo. NarHash and NarSize are then required.
	Uploaded *UploadedNar
	// Commit, when set, runs after the nar is uploaded and verified, right
	// before the narinfo is written; its error leaves the narinfo unwritten
	// (the nar stays for GC). An agent checks there, freshly, that it still
	// owns the attempt whose output this is.
	Commit func(ctx context.Context) error
	// Input marks an item of the closure that this publication did not build (an input of the
	// attempt's outputs). If the bucket has it with another NarHash, its published copy stands
	// and the item counts as AlreadyPresent instead of failing with a NotReproducibleError: the
	// input was built twice (an attempt lost while its daemon finished, then built again
	// elsewhere) by a non-deterministic build, which says nothing of the build publishing now,
	// and the closure refers to the input by its path either way.
	Input bool
}

// DiskItem is a store item whose files are at dir on this machine (the
// store mounted in the agent pod, or a test store's host path).
func DiskItem(storePath, dir string) StoreItem {
	return StoreItem{StorePath: storePath, Open: func(ctx context.Context) (io.ReadCloser, error) {
		return nar.NewDumpReader(dir), nil // file contents read straight into the publisher's buffer
	}}
}

// Result says what Publish did.
type Result struct {
	NarInfo    *narinfo.NarInfo
	NarInfoKey string
	NarKey     string
	// AlreadyPresent: the narinfo was there with the same NarHash, and its
	// nar too, so nothing was uploaded.
	AlreadyPresent bool
	// Repaired: the narinfo was there with the same NarHash but its nar
	// was gone; the nar was uploaded again and the narinfo rewritten to
	// point at it.
	Repaired bool
	// Attempts of the upload (1 without retries).
	Attempts int
}

// ErrNotReproducible is matched (errors.Is) by every *NotReproducibleError.
var ErrNotReproducible = errors.New("not reproducible")

// NotReproducibleError: the bucket already has a narinfo for the store path
// with a different NarHash. The published narinfo is never overwritten.
type NotReproducibleError struct {
	StorePath string
	Published string // NarHash in the bucket
	Local     string // NarHash of the item being published
}

func (e *NotReproducibleError) Error() string {
	return fmt.Sprintf("%s is not reproducible: the bucket has NarHash %s, this build gave %s; the published narinfo is kept (check the build for non-determinism)", e.StorePath, e.Published, e.Local)
}

// Is makes errors.Is(err, ErrNotReproducible) true.
func (e *NotReproducibleError) Is(target error) bool { return target == ErrNotReproducible }

// Publisher uploads nars, narinfos and logs.
type Publisher struct {
	cfg  Config
	c    *minio.Client
	dir  storepath.Dir
	log  logr.Logger
	keys signing.Keys
	// trusted verify narinfos found in the bucket (untrusted).
	trusted []signing.NixPublicKey

	// smallParts recycles the buffer most objects fit in whole (small
	// store items, logs); firstParts the one that decides between one PUT
	// and a multipart upload, taken only when the small one fills.
	// Publishing many small items should not allocate (and clear) 5 MiB
	// each: a sync.Pool is emptied by every other GC, and small items make
	// GCs frequent.
	smallParts, firstParts sync.Pool
	// zstdEncoders recycles zstd encoders: a new one allocates and clears
	// megabytes of tables and buffers, far more than a small item's NAR.
	zstdEncoders sync.Pool

	// beforeNarInfo, when set (tests), runs after the nar is verified and
	// before the narinfo is written.
	beforeNarInfo func()
}

// NewPublisher checks the configuration and loads the signing keys. It
// does not contact the bucket.
func NewPublisher(cfg Config) (*Publisher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	keys := cfg.Keys
	if len(keys.Nix) == 0 && keys.Guix == nil && len(cfg.KeyFiles) > 0 {
		if keys, err = signing.LoadKeysFromFiles(cfg.KeyFiles...); err != nil {
			return nil, fmt.Errorf("bucket: loading narinfo signing keys: %w (give a Nix secret key made by nix-store --generate-binary-cache-key, or Guix's signing-key.sec)", err)
		}
	}
	if len(keys.Nix) == 0 && keys.Guix == nil && !cfg.AllowUnsigned {
		return nil, errors.New("bucket: no narinfo signing keys: set Config.Keys or Config.KeyFiles (or AllowUnsigned for a cache clients trust without signatures)")
	}
	c, err := NewClient(cfg)
	if err != nil {
		return nil, err
	}
	trusted := slices.Clone(cfg.TrustedNixKeys)
	for _, k := range keys.Nix {
		trusted = append(trusted, k.Public())
	}
	return &Publisher{cfg: cfg, c: c, dir: storepath.Dir(cfg.StoreDir), log: cfg.Log, keys: keys, trusted: trusted}, nil
}

// untrusted says whether a narinfo found in the bucket lacks a signature of the farm's Nix keys
// (those it signs with, and Config.TrustedNixKeys). Without Nix keys nothing is judged.
func (p *Publisher) untrusted(ni *narinfo.NarInfo) bool {
	return len(p.trusted) > 0 && ni.Verify(p.trusted, nil) != nil
}

// Client is the underlying S3 client.
func (p *Publisher) Client() *minio.Client { return p.c }

// NarInfoKey is the object name of a store path's narinfo.
func NarInfoKey(p storepath.Path) string { return p.Hash + ".narinfo" }

// NarKey is the object name of a nar: content-addressed by NarHash, so a
// re-upload of the same content lands on the same object.
func NarKey(kind, narHash string) string {
	return "nar/" + kind + "/" + strings.TrimPrefix(narHash, "sha256:") + ".nar" + compress.Extension(kind)
}

// normalizeNarHash turns the forms a daemon or narinfo uses into
// "sha256:<nixbase32>": "sha256:<nixbase32>", "sha256:<hex>", bare hex, and
// SRI "sha256-<base64>" (what `nix path-info --json` prints since Nix 2.4).
func normalizeNarHash(h string) (string, error) {
	if b64, ok := strings.CutPrefix(h, "sha256-"); ok {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
			if b, err := enc.DecodeString(b64); err == nil && len(b) == sha256.Size {
				return nar.FormatHash(b), nil
			}
		}
		return "", fmt.Errorf("NarHash %q: SRI form, but not the base64 of 32 bytes", h)
	}
	s := strings.TrimPrefix(h, "sha256:")
	switch len(s) {
	case 64:
		b, err := hex.DecodeString(s)
		if err == nil {
			return nar.FormatHash(b), nil
		}
	case 52:
		if _, err := nixbase32.DecodeString(s); err == nil {
			return "sha256:" + s, nil
		}
	}
	return "", fmt.Errorf("NarHash %q is none of sha256:<52 nixbase32>, <64 hex> or sha256-<base64> characters", h)
}

// unknownDeriver is what Nix's daemon reports as the deriver of a path it
// did not build (added, or substituted without one).
const unknownDeriver = "unknown-deriver"

// deriver returns the narinfo's Deriver for d: the base name of a
// derivation of this store, or "" when d is none. A path without a known
// deriver is normal (sources, imported paths); its narinfo simply has no
// Deriver line, so publishing it must not fail.
func (p *Publisher) deriver(d string, log logr.Logger) string {
	if d == "" || d == unknownDeriver {
		return ""
	}
	bases, err := p.baseNames("Deriver", []string{d})
	if err == nil && strings.HasSuffix(bases[0], storepath.DrvExt) {
		return bases[0]
	}
	log.V(1).Info("the deriver is not a derivation of the store; the narinfo omits it", "deriver", d, "storeDir", p.dir)
	return ""
}

// Publish uploads the item's nar and then its signed narinfo. A narinfo
// already present with the same NarHash makes it a no-op, unless its nar
// is gone: then the nar is uploaded again and the narinfo rewritten
// (Result.Repaired). A narinfo with another NarHash fails it with a
// *NotReproducibleError. Its references (but itself) must have narinfos in
// the bucket, or it is refused (ErrMissingReference) before any upload. A
// failure at any point leaves at most an unreferenced nar (for GC), never
// a narinfo without its nar.
func (p *Publisher) Publish(ctx context.Context, item StoreItem) (Result, error) {
	refs := p.newRefChecker()
	return p.publish(ctx, item, publishOpts{refs: refs, beforeNarInfo: func(ctx context.Context, scanned []string) error {
		return refs.require(ctx, scanned)
	}})
}

// publishOpts are what PublishClosure changes in publish.
type publishOpts struct {
	// refs checks that references have narinfos; one per call, so its
	// cache serves a whole batch.
	refs *refChecker
	// refsChecked: the item's References were checked already
	// (PublishClosure checks the whole batch's before any upload).
	refsChecked bool
	// beforeNarInfo runs after the nar is verified and before the narinfo
	// is written, with the references the scan found besides the declared
	// ones and the item itself; it may fail the item. PublishClosure waits
	// there for the item's references in the batch.
	beforeNarInfo func(ctx context.Context, scanned []string) error
}

func (p *Publisher) publish(ctx context.Context, item StoreItem, o publishOpts) (Result, error) {
	sp, err := p.dir.Parse(item.StorePath)
	if err != nil {
		return Result{}, fmt.Errorf("publish: %w", err)
	}
	if item.Open == nil && item.Uploaded == nil {
		return Result{}, fmt.Errorf("publish %s: StoreItem.Open is nil", item.StorePath)
	}
	if item.Uploaded != nil && (item.NarHash == "" || item.NarSize == 0) {
		return Result{}, fmt.Errorf("publish %s: an uploaded nar needs the item's NarHash and NarSize", item.StorePath)
	}
	refs, err := p.checkRefs(item, sp)
	if err != nil {
		return Result{}, err
	}
	log := p.log.WithValues("storePath", item.StorePath)
	res := Result{NarInfoKey: NarInfoKey(sp)}

	narHash, narSize := item.NarHash, item.NarSize
	if narHash != "" {
		if narHash, err = normalizeNarHash(narHash); err != nil {
			return res, fmt.Errorf("publish %s: %w", item.StorePath, err)
		}
	} else {
		var size int64
		if _, err = retry(ctx, p.cfg.Retry, log, "hash nar", func(ctx context.Context) error {
			narHash, size, err = p.hashItem(ctx, item)
			return err
		}); err != nil {
			return res, err
		}
		if narSize != 0 && narSize != uint64(size) {
			return res, fmt.Errorf("publish %s: the NAR is %d bytes, StoreItem.NarSize says %d", item.StorePath, size, narSize)
		}
		narSize = uint64(size)
	}
	// Idempotence: nothing to upload if the narinfo and its nar are there.
	// The check is repeated by the conditional narinfo PUT at the end.
	existing, existingETag, err := p.getNarInfo(ctx, res.NarInfoKey)
	if err != nil {
		return res, err
	}
	replace := "" // the ETag of a narinfo whose nar is gone, to rewrite it
	if existing != nil {
		present, err := p.compare(res, existing, item, narHash)
		if present.AlreadyPresent && item.Input && !sameNarHash(existing, narHash) {
			return present, nil // the published copy stands, whatever state its nar is in
		}
		if err != nil {
			return present, err
		}
		ok, err := p.narPresent(ctx, existing.URL)
		if err != nil {
			return res, err
		}
		if ok && !p.untrusted(existing) {
			log.V(1).Info("already published", "narinfo", res.NarInfoKey)
			return present, nil
		}
		if ok {
			// Same NarHash, but no key of the farm signed it: clients that trust the farm refuse
			// it, and so does the controller. The nar is checked like a new one and the narinfo
			// signed again in place.
			log.Info("the published narinfo is not signed by the farm's keys: signing it again", "narinfo", res.NarInfoKey)
		} else {
			// GC, a hand deletion or a lost bucket left the narinfo pointing at
			// nothing; clients fail on it until the nar is back.
			log.Info("the published narinfo's nar is missing: uploading it again", "narinfo", res.NarInfoKey, "nar", existing.URL)
		}
		replace, res.Repaired = existingETag, true
	}
	if !o.refsChecked {
		if err := o.refs.require(ctx, refs.others(refs.declared)); err != nil {
			return res, fmt.Errorf("publish %s: %w", item.StorePath, err)
		}
	}

	kind := p.cfg.Compression
	var up uploaded
	if item.Uploaded != nil {
		kind = item.Uploaded.Compression
		res.NarKey = NarKey(kind, narHash)
		res.Attempts, err = retry(ctx, p.cfg.Retry, log, "verify uploaded nar", func(ctx context.Context) error {
			up, err = p.verifyUploaded(ctx, item, narHash, narSize)
			return err
		})
		if err != nil {
			return res, err
		}
		log.V(1).Info("uploaded nar verified", "key", res.NarKey, "narSize", up.narSize, "fileSize", up.fileSize, "reread", item.Uploaded.Reread)
	} else {
		res.NarKey = NarKey(kind, narHash)
		res.Attempts, err = retry(ctx, p.cfg.Retry, log, "upload nar", func(ctx context.Context) error {
			up, err = p.uploadNar(ctx, item, res.NarKey, narHash, narSize)
			if err == nil {
				err = p.verifyNar(ctx, res.NarKey, up)
			}
			return err
		})
		if err != nil {
			return res, err
		}
		log.V(1).Info("nar uploaded", "key", res.NarKey, "narSize", up.narSize, "fileSize", up.fileSize)
	}

	scanned, err := p.baseNames("scanned references", up.scanned)
	if err != nil { // ScanReferences were checked: cannot happen
		return res, fmt.Errorf("publish %s: %w", item.StorePath, err)
	}
	ni := &narinfo.NarInfo{
		StorePath: item.StorePath, URL: res.NarKey, Compression: kind,
		FileHash: up.fileHash, FileSize: uint64(up.fileSize),
		NarHash: narHash, NarSize: uint64(up.narSize),
		References: union(refs.declared, scanned), Deriver: p.deriver(item.Deriver, log),
		System: item.System, CA: item.CA,
	}
	if len(p.keys.Nix) > 0 || p.keys.Guix != nil {
		if err := ni.Sign(p.keys); err != nil {
			return res, fmt.Errorf("publish %s: %w", item.StorePath, err)
		}
	}
	res.NarInfo = ni
	if o.beforeNarInfo != nil {
		extra := refs.others(slices.DeleteFunc(scanned, func(b string) bool { return slices.Contains(refs.declared, b) }))
		if err := o.beforeNarInfo(ctx, extra); err != nil {
			return res, fmt.Errorf("publish %s: %w", item.StorePath, err)
		}
	}
	if item.Commit != nil {
		if err := item.Commit(ctx); err != nil {
			return res, fmt.Errorf("publish %s: not writing the narinfo: %w", item.StorePath, err)
		}
	}
	if p.beforeNarInfo != nil {
		p.beforeNarInfo()
	}
	created := false
	if _, err = retry(ctx, p.cfg.Retry, log, "put narinfo", func(ctx context.Context) error {
		created, err = p.putNarInfo(ctx, res.NarInfoKey, ni.Bytes(), replace)
		return err
	}); err != nil {
		return res, explain(err, p.cfg.Endpoint, p.cfg.Bucket, res.NarInfoKey)
	}
	if !created { // lost a race with another publisher (or repairer) of the same path
		existing, _, err := p.getNarInfo(ctx, res.NarInfoKey)
		if err != nil {
			return res, err
		}
		if existing == nil {
			return res, fmt.Errorf("publish %s: the conditional narinfo PUT was refused, yet no narinfo can be read (deleted meanwhile?); publish it again", item.StorePath)
		}
		// The winner verified its nar before writing its narinfo.
		return p.compare(res, existing, item, narHash)
	}
	log.Info("published", "narinfo", res.NarInfoKey, "nar", res.NarKey, "narSize", ni.NarSize, "fileSize", ni.FileSize, "compression", kind, "repaired", res.Repaired)
	return res, nil
}

// union returns the sorted union of two sorted, deduplicated lists.
func union(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// compare fails with a *NotReproducibleError unless existing has narHash (or item is an Input:
// its published copy stands); otherwise it returns res as AlreadyPresent with the existing
// narinfo.
func (p *Publisher) compare(res Result, existing *narinfo.NarInfo, item StoreItem, narHash string) (Result, error) {
	res.NarInfo, res.NarKey, res.Repaired = existing, existing.URL, false
	if !sameNarHash(existing, narHash) {
		if !item.Input {
			return res, &NotReproducibleError{StorePath: item.StorePath, Published: existing.NarHash, Local: narHash}
		}
		p.log.Info("an input of the publication differs from its published copy, which stands (a non-deterministic build ran twice)",
			"storePath", item.StorePath, "published", existing.NarHash, "local", narHash)
	}
	res.AlreadyPresent = true
	return res, nil
}

// sameNarHash says whether a published narinfo has narHash (normalized).
func sameNarHash(existing *narinfo.NarInfo, narHash string) bool {
	have, err := normalizeNarHash(existing.NarHash)
	if err != nil {
		have = existing.NarHash
	}
	return have == narHash
}

// narPresent reports whether the nar a published narinfo's URL names is
// in the bucket. A URL on another server (not ours to check) counts as
// present.
func (p *Publisher) narPresent(ctx context.Context, url string) (bool, error) {
	if strings.Contains(url, "://") {
		return true, nil
	}
	return exists(ctx, p.c, p.cfg, p.log, strings.TrimPrefix(url, "./"))
}

// getNarInfo returns the narinfo at key and its ETag, or nil when there is
// none.
func (p *Publisher) getNarInfo(ctx context.Context, key string) (*narinfo.NarInfo, string, error) {
	data, etag, err := getSmall(ctx, p.c, p.cfg, p.log, key)
	if isNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	}
	ni, err := narinfo.Parse(data)
	if err != nil {
		return nil, "", fmt.Errorf("s3 object %s/%s: %w (a corrupt narinfo is never overwritten: delete it by hand)", p.cfg.Bucket, key, err)
	}
	return ni, etag, nil
}

// putNarInfo writes the narinfo in one PUT, only if absent (If-None-Match:
// *), or with replace set only if it is still the object of that ETag
// (If-Match), so that of concurrent publishers exactly one writes. It
// returns false when the condition failed.
func (p *Publisher) putNarInfo(ctx context.Context, key string, data []byte, replace string) (bool, error) {
	opts := minio.PutObjectOptions{ContentType: ContentTypeNarInfo, DisableMultipart: true}
	if replace != "" {
		opts.SetMatchETag(replace)
	} else {
		opts.SetMatchETagExcept("*")
	}
	_, err := p.c.PutObject(ctx, p.cfg.Bucket, key, bytes.NewReader(data), int64(len(data)), opts)
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.StatusCode == http.StatusPreconditionFailed {
		return false, nil
	}
	return err == nil, err
}

// hashItem reads the item's NAR once to learn its NarHash (and checks it).
func (p *Publisher) hashItem(ctx context.Context, item StoreItem) (string, int64, error) {
	src, err := item.Open(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("publish %s: opening the NAR: %w", item.StorePath, err)
	}
	defer src.Close()
	h := nar.NewHashingWriter()
	if _, err := nar.Validate(bufio.NewReaderSize(io.TeeReader(src, h), narReadBuffer(item.NarSize))); err != nil {
		return "", 0, sourceError(item.StorePath, err)
	}
	return h.Sum(), h.Size(), nil
}

func sourceError(storePath string, err error) error {
	err = fmt.Errorf("publish %s: the NAR stream: %w", storePath, err)
	if errors.Is(err, nar.ErrCorrupt) {
		return permanent(err)
	}
	return err
}

// errUploadEnded is what the NAR producer sees when the upload stopped
// reading; the upload's own error is the one to report.
var errUploadEnded = errors.New("the upload stopped reading")

type uploaded struct {
	fileHash string
	fileSize int64
	narSize  int64
	etag     string
	scanned  []string
}

// uploadNar streams NAR → (NarHash ‖ reference scan ‖ compress → FileHash)
// → multipart PUT. The producer goroutine ends the pipe with an error when
// the NAR is corrupt or its hash is not the expected one, which makes the
// upload abort instead of completing: a wrong nar is never stored.
func (p *Publisher) uploadNar(ctx context.Context, item StoreItem, key, narHash string, narSize uint64) (uploaded, error) {
	src, err := item.Open(ctx)
	if err != nil {
		return uploaded{}, fmt.Errorf("publish %s: opening the NAR: %w", item.StorePath, err)
	}
	pr, pw := io.Pipe()
	narHasher, fileHasher := nar.NewHashingWriter(), nar.NewHashingWriter()
	var scan *nar.RefScanner
	done := make(chan error, 1)
	go func() {
		err := func() error {
			defer src.Close()
			zw, release, err := p.compressor(io.MultiWriter(fileHasher, pw))
			if err != nil {
				return permanent(err)
			}
			sinks := []io.Writer{narHasher, zw}
			if len(item.ScanReferences) > 0 {
				scan = nar.NewRefScanner(item.ScanReferences)
				sinks = append(sinks, scan)
			}
			if _, err := nar.Validate(bufio.NewReaderSize(io.TeeReader(src, io.MultiWriter(sinks...)), narReadBuffer(narSize))); err != nil {
				zw.Close()
				return sourceError(item.StorePath, err)
			}
			if err := zw.Close(); err != nil {
				return err
			}
			release()
			if got := narHasher.Sum(); got != narHash || (narSize != 0 && uint64(narHasher.Size()) != narSize) {
				return permanent(fmt.Errorf("publish %s: the NAR read for upload has NarHash %s (%d bytes), expected %s (%d bytes): the store item changed, or its NarHash is wrong",
					item.StorePath, got, narHasher.Size(), narHash, narSize))
			}
			return nil
		}()
		pw.CloseWithError(err)
		done <- err
	}()
	info, uerr := p.putStream(ctx, key, pr, minio.PutObjectOptions{ContentType: ContentTypeNar})
	pr.CloseWithError(errUploadEnded) // unblocks the producer
	perr := <-done
	switch {
	case perr != nil && !errors.Is(perr, errUploadEnded):
		return uploaded{}, perr // the source's fault: the upload saw it too
	case uerr != nil:
		return uploaded{}, explain(uerr, p.cfg.Endpoint, p.cfg.Bucket, key)
	case perr != nil:
		return uploaded{}, perr
	}
	if info.Size != fileHasher.Size() {
		return uploaded{}, fmt.Errorf("s3 object %s/%s: uploaded %d bytes, compressed %d", p.cfg.Bucket, key, info.Size, fileHasher.Size())
	}
	up := uploaded{fileHash: fileHasher.Sum(), fileSize: fileHasher.Size(), narSize: narHasher.Size(), etag: info.ETag}
	if scan != nil {
		up.scanned = scan.Found()
	}
	return up, nil
}

// putStream uploads r with opts' content type, encoding and metadata: one
// PUT when it fits in the first part (most store items and logs are
// small), else a multipart upload with Concurrency parts in flight.
// Memory: PartSize × (Concurrency + 1).
func (p *Publisher) putStream(ctx context.Context, key string, r io.Reader, opts minio.PutObjectOptions) (minio.UploadInfo, error) {
	opts.DisableContentSha256 = true // the content is hashed by us
	sp := pooled(&p.smallParts, smallPartSize)
	defer p.smallParts.Put(sp)
	small := *sp
	n, err := io.ReadFull(r, small)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		opts.DisableMultipart = true
		return p.c.PutObject(ctx, p.cfg.Bucket, key, bytes.NewReader(small[:n]), int64(n), opts)
	}
	if err != nil {
		return minio.UploadInfo{}, err
	}
	bp := pooled(&p.firstParts, minPartSize)
	defer p.firstParts.Put(bp)
	first := *bp
	copy(first, small)
	m, err := io.ReadFull(r, first[len(small):])
	n = len(small) + m
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		opts.DisableMultipart = true
		return p.c.PutObject(ctx, p.cfg.Bucket, key, bytes.NewReader(first[:n]), int64(n), opts)
	}
	if err != nil {
		return minio.UploadInfo{}, err
	}
	opts.PartSize, opts.NumThreads, opts.ConcurrentStreamParts = p.cfg.PartSize, uint(p.cfg.Concurrency), p.cfg.Concurrency > 1
	return p.c.PutObject(ctx, p.cfg.Bucket, key, io.MultiReader(bytes.NewReader(first), r), -1, opts)
}

// compressor returns a writer compressing into w as configured, and a
// release to call once it is closed without error (it may then be reused).
// A reused zstd encoder is Reset: a new, independent stream, the same
// bytes as a new encoder's.
func (p *Publisher) compressor(w io.Writer) (io.WriteCloser, func(), error) {
	if e, _ := p.zstdEncoders.Get().(*zstd.Encoder); e != nil {
		e.Reset(w)
		return e, func() { p.zstdEncoders.Put(e) }, nil
	}
	zw, err := compress.NewWriter(w, p.cfg.Compression, p.cfg.Level)
	if err != nil {
		return nil, nil, err
	}
	if e, ok := zw.(*zstd.Encoder); ok {
		return zw, func() { p.zstdEncoders.Put(e) }, nil
	}
	return zw, func() {}, nil
}

// smallPartSize is the first buffer putStream reads into: most store items
// and logs fit in it.
const smallPartSize = 256 << 10

// pooled returns a buffer of size bytes from pool, or a new one.
func pooled(pool *sync.Pool, size int) *[]byte {
	if bp, _ := pool.Get().(*[]byte); bp != nil {
		return bp
	}
	b := make([]byte, size)
	return &b
}

// narReadBuffer is the size of the read buffer for a NAR of narSize bytes
// (0: unknown): 1 MiB, or the NAR's size when it is smaller, so that each
// small item does not allocate and clear a megabyte.
func narReadBuffer(narSize uint64) int {
	if narSize > 0 && narSize < 1<<20 {
		return max(int(narSize), 4096)
	}
	return 1 << 20
}

// verifyNar checks the stored object before a narinfo may point at it:
// its size (and ETag, so a concurrent overwrite is noticed), and with
// VerifyReread its FileHash.
func (p *Publisher) verifyNar(ctx context.Context, key string, up uploaded) error {
	st, err := p.c.StatObject(ctx, p.cfg.Bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	}
	if st.Size != up.fileSize {
		return fmt.Errorf("s3 object %s/%s: stored %d bytes, uploaded %d: not writing the narinfo", p.cfg.Bucket, key, st.Size, up.fileSize)
	}
	if !p.cfg.VerifyReread && st.ETag == up.etag {
		return nil
	}
	obj, err := p.c.GetObject(ctx, p.cfg.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	}
	defer obj.Close()
	h, size, err := nar.Hash(obj)
	if err != nil {
		return explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	}
	if h != up.fileHash || size != up.fileSize {
		return fmt.Errorf("s3 object %s/%s: re-read as %s (%d bytes), uploaded %s (%d bytes): not writing the narinfo", p.cfg.Bucket, key, h, size, up.fileHash, up.fileSize)
	}
	return nil
}

// EnsureCacheInfo writes nix-cache-info unless it already says the same.
func (p *Publisher) EnsureCacheInfo(ctx context.Context) error {
	const key = "nix-cache-info"
	want := narinfo.CacheInfo(p.cfg.StoreDir, p.cfg.Priority)
	_, err := retry(ctx, p.cfg.Retry, p.log, "nix-cache-info", func(ctx context.Context) error {
		obj, err := p.c.GetObject(ctx, p.cfg.Bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		have, err := io.ReadAll(io.LimitReader(obj, 64<<10))
		obj.Close()
		if err == nil && bytes.Equal(have, want) {
			return nil
		}
		if err != nil && !isNotFound(err) {
			return err
		}
		_, err = p.c.PutObject(ctx, p.cfg.Bucket, key, bytes.NewReader(want), int64(len(want)), minio.PutObjectOptions{ContentType: ContentTypeCacheInfo, DisableMultipart: true})
		return err
	})
	return explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
}

// EnsureBucket creates the bucket if needed and sets its anonymous policy:
// read objects, and list the bucket, which is what makes a missing key
// answer 404 instead of 403 (S3 answers 403 to a reader who may not list;
// Guix treats 403 as a transient error, 404 as "not there"). It also asks
// the server to abort multipart uploads left incomplete for a day (a
// killed publisher's), where lifecycle rules support it (ensureAbortRule).
func (p *Publisher) EnsureBucket(ctx context.Context) error {
	b := p.cfg.Bucket
	_, err := retry(ctx, p.cfg.Retry, p.log, "ensure bucket", func(ctx context.Context) error {
		ok, err := p.c.BucketExists(ctx, b)
		if err != nil {
			return err
		}
		if !ok {
			if err := p.c.MakeBucket(ctx, b, minio.MakeBucketOptions{Region: p.cfg.Region}); err != nil {
				var er minio.ErrorResponse
				if !errors.As(err, &er) || (er.Code != "BucketAlreadyOwnedByYou" && er.Code != "BucketAlreadyExists") {
					return err
				}
			}
		}
		return p.c.SetBucketPolicy(ctx, b, AnonymousReadPolicy(b))
	})
	if err != nil {
		return explain(err, p.cfg.Endpoint, b, "")
	}
	p.ensureAbortRule(ctx)
	return nil
}

// abortRuleID names the lifecycle rule ensureAbortRule keeps.
const abortRuleID = "guix-farm-abort-incomplete-uploads"

// ensureAbortRule asks the server to abort multipart uploads left
// incomplete for a day (a killed publisher's), bucket-wide: no publisher
// upload takes that long. It adds the rule to the bucket's lifecycle
// configuration, keeping the operator's rules (a PUT replaces the whole
// configuration). Failing is not an error: without the rule, a killed
// publisher's parts cost space until the server's own expiry (if any)
// or an operator removes them; publishing is unaffected.
func (p *Publisher) ensureAbortRule(ctx context.Context) {
	b := p.cfg.Bucket
	log := p.log.WithValues("bucket", b, "rule", abortRuleID)
	want := lifecycle.Rule{
		ID: abortRuleID, Status: "Enabled",
		AbortIncompleteMultipartUpload: lifecycle.AbortIncompleteMultipartUpload{DaysAfterInitiation: 1},
	}
	lc, err := p.c.GetBucketLifecycle(ctx, b)
	var er minio.ErrorResponse
	switch {
	case errors.As(err, &er) && er.Code == "NoSuchLifecycleConfiguration":
		lc = lifecycle.NewConfiguration()
	case err != nil && lifecycleUnsupported(err):
		log.V(1).Info("the server has no lifecycle rules; its own expiry of stale uploads applies", "answer", err.Error())
		return
	case err != nil:
		log.Info("could not read the lifecycle configuration, so not adding the rule that aborts incomplete uploads; the server's own expiry of stale uploads applies", "err", err.Error())
		return
	}
	for _, r := range lc.Rules {
		if r.ID == abortRuleID && r.Status == want.Status && r.AbortIncompleteMultipartUpload == want.AbortIncompleteMultipartUpload && r.RuleFilter.Prefix == "" && r.Prefix == "" {
			return
		}
	}
	lc.Rules = append(slices.DeleteFunc(lc.Rules, func(r lifecycle.Rule) bool { return r.ID == abortRuleID }), want)
	err = p.c.SetBucketLifecycle(ctx, b, lc)
	switch {
	case err == nil:
		log.V(1).Info("set the lifecycle rule that aborts incomplete uploads after a day")
	case lifecycleUnsupported(err):
		// MinIO's lifecycle parser has no AbortIncompleteMultipartUpload, so
		// it sees a rule without an action it knows and refuses it (400
		// InvalidArgument, "The XML you provided was not well-formed…",
		// TestEnsureBucketLifecycle). It needs no such rule: it deletes
		// stale multipart uploads itself (api stale_uploads_expiry, 24h by
		// default). An expected answer, so not worth a warning at every
		// agent start.
		errors.As(err, &er)
		log.V(1).Info("the server does not support a lifecycle rule that aborts incomplete uploads; its own expiry of stale uploads applies", "server", er.Server, "answer", err.Error())
	default:
		log.Info("could not set the lifecycle rule that aborts incomplete uploads; the server's own expiry of stale uploads applies", "err", err.Error())
	}
}

// lifecycleUnsupported tells a server without (this kind of) lifecycle
// rule from other failures: NotImplemented, or a 400 refusing the
// configuration, which is valid S3 (minio-go writes it), so the server
// does not know some of it. Access denied, 5xx and network errors are
// other failures.
func lifecycleUnsupported(err error) bool {
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		return false
	}
	switch {
	case er.Code == "NotImplemented", er.StatusCode == http.StatusNotImplemented:
		return true
	case er.StatusCode == http.StatusBadRequest:
		return er.Code == "MalformedXML" || er.Code == "InvalidArgument" || er.Code == "InvalidRequest"
	}
	return false
}

// AnonymousReadPolicy is the bucket policy EnsureBucket sets.
func AnonymousReadPolicy(bucket string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Statement":[`+
		`{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%[1]s/*"]},`+
		`{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::%[1]s"]}]}`, bucket)
}

// ProbeWrite writes a small object, health/<name>, to check that the bucket takes writes with
// these credentials: an agent offers no slots while it fails, rather than failing builds.
func (p *Publisher) ProbeWrite(ctx context.Context, name string) error {
	key := "health/" + name
	body := strings.NewReader(time.Now().UTC().Format(time.RFC3339))
	_, err := p.c.PutObject(ctx, p.cfg.Bucket, key, body, body.Size(), minio.PutObjectOptions{ContentType: "text/plain"})
	return explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
}
