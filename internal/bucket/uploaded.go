package bucket

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Publishing through someone else's upload: the holder of the bucket's write credentials and the
// signing keys (the controller's publisher service) hands out presigned PUT URLs for the
// content-addressed nar keys, the uploader (an agent, which holds neither) puts the nars there,
// and the holder verifies each object (VerifyUploaded) before it writes the signed narinfo with
// Publish or PublishClosure, items carrying StoreItem.Uploaded. Nar PUTs are conditional
// (If-None-Match: *, signed into the URL): an upload never replaces an object, so what was
// verified stays as it was.

// UploadedNar is where an item's nar was uploaded, and what its uploader says of it.
type UploadedNar struct {
	// Compression is the kind the nar was compressed with; the object is at NarKey(Compression,
	// NarHash).
	Compression string
	// FileSize and FileHash ("sha256:<nixbase32>") are the uploader's word on the object; FileSize
	// 0 means unknown. With Reread they are checked against what is read back; without, FileSize
	// is checked against the object's size and FileHash goes into the narinfo as given.
	FileSize int64
	FileHash string
	// Reread streams the object back, decompresses it and checks the NAR's structure, NarHash and
	// NarSize (a full read of the object: the price of not trusting the uploader). Without it only
	// the object's existence and size are checked.
	Reread bool
}

// ErrInvalidUpload is matched (errors.Is) by the error of an item whose uploaded nar is missing,
// has the wrong size, or does not hold the NAR the item's NarHash names. Such an object is deleted
// (when its content was read and found wrong), so that a correct upload can take its key.
var ErrInvalidUpload = errors.New("invalid upload")

// InvalidUploadError says what was wrong with an uploaded nar.
type InvalidUploadError struct {
	StorePath, Key, Reason string
}

func (e *InvalidUploadError) Error() string {
	return fmt.Sprintf("publish %s: the uploaded nar %s %s: not writing the narinfo", e.StorePath, e.Key, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidUpload) true.
func (e *InvalidUploadError) Is(target error) bool { return target == ErrInvalidUpload }

// verifyUploaded checks the nar an item's uploader put at its key (see UploadedNar) and returns
// what the narinfo says of it.
func (p *Publisher) verifyUploaded(ctx context.Context, item StoreItem, narHash string, narSize uint64) (uploaded, error) {
	u := item.Uploaded
	kind, err := compress.ParseKind(u.Compression)
	if err != nil || kind != u.Compression {
		return uploaded{}, permanent(fmt.Errorf("publish %s: uploaded nar compression %q: want one of %v", item.StorePath, u.Compression, compress.Kinds()))
	}
	key := NarKey(kind, narHash)
	invalid := func(format string, args ...any) error {
		return permanent(&InvalidUploadError{StorePath: item.StorePath, Key: key, Reason: fmt.Sprintf(format, args...)})
	}
	// With Reread the GET's answer says what a HEAD would (one request per nar, not two).
	var obj *minio.Object
	var st minio.ObjectInfo
	if u.Reread {
		if obj, err = p.c.GetObject(ctx, p.cfg.Bucket, key, minio.GetObjectOptions{}); err == nil {
			if st, err = obj.Stat(); err != nil {
				obj.Close()
			}
		}
	} else {
		st, err = p.c.StatObject(ctx, p.cfg.Bucket, key, minio.StatObjectOptions{})
	}
	if isNotFound(err) {
		return uploaded{}, invalid("is not in bucket %s (was it uploaded?)", p.cfg.Bucket)
	}
	if err != nil {
		return uploaded{}, explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	}
	if obj != nil {
		defer obj.Close()
	}
	if u.FileSize != 0 && st.Size != u.FileSize {
		// Uploaded nars are write-once: a wrong size is a wrong object, which no correct
		// upload could replace while it is there.
		p.removeInvalid(ctx, key, st.ETag)
		return uploaded{}, invalid("has %d bytes, the uploader says %d", st.Size, u.FileSize)
	}
	if !u.Reread {
		if u.FileHash != "" {
			if err := checkFileHash(u.FileHash); err != nil {
				return uploaded{}, invalid("FileHash %q: %v", u.FileHash, err)
			}
		}
		return uploaded{fileHash: u.FileHash, fileSize: st.Size, narSize: int64(narSize), etag: st.ETag}, nil
	}
	fileHasher, narHasher := nar.NewHashingWriter(), nar.NewHashingWriter()
	src := io.TeeReader(obj, fileHasher)
	zr, err := compress.NewReader(src, kind)
	if err != nil {
		if transient(err) {
			return uploaded{}, err
		}
		p.removeInvalid(ctx, key, st.ETag)
		return uploaded{}, invalid("is not %s data: %v", kind, err)
	}
	sinks := []io.Writer{narHasher}
	var scan *nar.RefScanner
	if len(item.ScanReferences) > 0 {
		scan = nar.NewRefScanner(item.ScanReferences)
		sinks = append(sinks, scan)
	}
	_, err = nar.Validate(bufio.NewReaderSize(io.TeeReader(zr, io.MultiWriter(sinks...)), narReadBuffer(narSize)))
	zr.Close() // stops a decoder's goroutines before src is read here
	if err == nil {
		// Whatever follows the compressed stream counts in FileSize and FileHash.
		_, err = io.Copy(io.Discard, src)
	}
	switch {
	case err != nil && transient(err):
		return uploaded{}, explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	case err != nil:
		p.removeInvalid(ctx, key, st.ETag)
		return uploaded{}, invalid("does not decompress (%s) to a NAR: %v", kind, err)
	case narHasher.Sum() != narHash || uint64(narHasher.Size()) != narSize:
		p.removeInvalid(ctx, key, st.ETag)
		return uploaded{}, invalid("holds a NAR with NarHash %s (%d bytes), the item says %s (%d bytes)", narHasher.Sum(), narHasher.Size(), narHash, narSize)
	case fileHasher.Size() != st.Size:
		return uploaded{}, fmt.Errorf("s3 object %s/%s: read %d bytes of %d", p.cfg.Bucket, key, fileHasher.Size(), st.Size)
	case u.FileHash != "" && u.FileHash != fileHasher.Sum():
		p.removeInvalid(ctx, key, st.ETag)
		return uploaded{}, invalid("has FileHash %s, the uploader says %s", fileHasher.Sum(), u.FileHash)
	}
	up := uploaded{fileHash: fileHasher.Sum(), fileSize: fileHasher.Size(), narSize: narHasher.Size(), etag: st.ETag}
	if scan != nil {
		up.scanned = scan.Found()
	}
	return up, nil
}

// checkFileHash accepts the forms normalizeNarHash does.
func checkFileHash(h string) error {
	_, err := normalizeNarHash(h)
	return err
}

// removeInvalid deletes an uploaded nar found wrong, unless it changed since it was read (its
// ETag): nothing a narinfo names is ever at a key whose content is wrong, and the key is free
// again for a correct upload. A failure is only logged: the object stays for GC.
func (p *Publisher) removeInvalid(ctx context.Context, key, etag string) {
	st, err := p.c.StatObject(ctx, p.cfg.Bucket, key, minio.StatObjectOptions{})
	if err != nil || st.ETag != etag {
		return
	}
	if err := p.c.RemoveObject(ctx, p.cfg.Bucket, key, minio.RemoveObjectOptions{}); err != nil {
		p.log.Info("could not delete an invalid uploaded nar; GC will", "key", key, "err", err.Error())
		return
	}
	p.log.Info("deleted an invalid uploaded nar", "key", key)
}

// ItemState is what the bucket has of a store item, before its nar is uploaded.
type ItemState struct {
	// Published: its narinfo is there with the same NarHash, and so is the nar it names. Nothing
	// to do.
	Published bool
	// NarKey is where its nar goes: NarKey(Compression(), NarHash).
	NarKey string
	// NarPresent: an object is at NarKey already (the same content published for another path,
	// or an earlier upload): no upload is needed, and the object is verified like an upload
	// before a narinfo names it.
	NarPresent bool
}

// State says what the bucket has of item (its StorePath with its NarHash): a narinfo with another
// NarHash is a *NotReproducibleError (that narinfo is never replaced), or for an Input, that
// narinfo standing as Published.
func (p *Publisher) State(ctx context.Context, item StoreItem) (ItemState, error) {
	storePath, narHash := item.StorePath, item.NarHash
	sp, err := p.dir.Parse(storePath)
	if err != nil {
		return ItemState{}, fmt.Errorf("publish: %w", err)
	}
	if narHash, err = normalizeNarHash(narHash); err != nil {
		return ItemState{}, fmt.Errorf("publish %s: %w", storePath, err)
	}
	st := ItemState{NarKey: NarKey(p.cfg.Compression, narHash)}
	existing, _, err := p.getNarInfo(ctx, NarInfoKey(sp))
	if err != nil {
		return st, err
	}
	if existing != nil {
		if _, err := p.compare(Result{}, existing, item, narHash); err != nil {
			return st, err
		}
		if item.Input && !sameNarHash(existing, narHash) {
			st.Published = true
			return st, nil
		}
		ok, err := p.narPresent(ctx, existing.URL)
		if err != nil {
			return st, err
		}
		if ok && !p.untrusted(existing) {
			st.Published = true
			return st, nil
		}
	}
	st.NarPresent, err = exists(ctx, p.c, p.cfg, p.log, st.NarKey)
	return st, err
}

// States is State for many items at once, refCheckConcurrency at a time; errs[i] is item i's.
func (p *Publisher) States(ctx context.Context, items []StoreItem) ([]ItemState, []error) {
	out := make([]ItemState, len(items))
	errs := make([]error, len(items))
	sem := make(chan struct{}, refCheckConcurrency)
	var wg sync.WaitGroup
	for i := range items {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i], errs[i] = p.State(ctx, items[i])
		})
	}
	wg.Wait()
	return out, errs
}

// Compression is the kind nars are compressed with (Config.Compression).
func (p *Publisher) Compression() string { return p.cfg.Compression }

// Bucket is the bucket's name.
func (p *Publisher) Bucket() string { return p.cfg.Bucket }

// PresignedPut is a URL that lets its holder PUT one object, with these headers (they are signed:
// the request must carry them as they are, and may carry no other x-amz- header), until Expires.
// The body's length must be sent (Content-Length): S3 refuses a PUT without it.
type PresignedPut struct {
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
	Expires time.Time         `json:"expires"`
}

// PresignNarPut presigns the upload of a nar to key (NarKey of this publisher's compression):
// If-None-Match: * makes it write-once (a PUT onto an existing object answers 412), so an upload
// never replaces a nar a narinfo names.
func (p *Publisher) PresignNarPut(ctx context.Context, key string, expiry time.Duration) (PresignedPut, error) {
	return p.presignPut(ctx, key, expiry, map[string]string{"Content-Type": ContentTypeNar, "If-None-Match": "*"})
}

// PresignAttemptLogPut presigns the upload of attempt's log of drvPath to AttemptLogKey, gzipped
// (Content-Encoding: gzip), with the attempt number in its metadata as PublishAttemptLog writes
// it. CommitAttemptLog then makes it the derivation's log.
func (p *Publisher) PresignAttemptLogPut(ctx context.Context, drvPath string, attempt int, expiry time.Duration) (PresignedPut, error) {
	d, err := p.dir.ParseDerivation(drvPath)
	if err != nil {
		return PresignedPut{}, fmt.Errorf("presign log: %w", err)
	}
	if attempt < 1 {
		return PresignedPut{}, fmt.Errorf("presign log of %s: attempt %d: attempts count from 1", drvPath, attempt)
	}
	return p.presignPut(ctx, AttemptLogKey(d.String(), attempt), expiry, map[string]string{
		"Content-Type": ContentTypeLog, "Content-Encoding": "gzip", "X-Amz-Meta-" + logAttemptMeta: strconv.Itoa(attempt)})
}

func (p *Publisher) presignPut(ctx context.Context, key string, expiry time.Duration, headers map[string]string) (PresignedPut, error) {
	h := http.Header{}
	for k, v := range headers {
		h.Set(k, v)
	}
	now := time.Now()
	u, err := p.c.PresignHeader(ctx, http.MethodPut, p.cfg.Bucket, key, expiry, url.Values{}, h)
	if err != nil {
		return PresignedPut{}, explain(err, p.cfg.Endpoint, p.cfg.Bucket, key)
	}
	return PresignedPut{URL: u.String(), Headers: headers, Expires: now.Add(expiry)}, nil
}

// StoreDir is the store directory of the paths this publisher publishes.
func (p *Publisher) StoreDir() storepath.Dir { return p.dir }

// NormalizeNarHash turns the forms of a NarHash a daemon or a narinfo uses ("sha256:<nixbase32>",
// "sha256:<hex>", bare hex, SRI "sha256-<base64>") into "sha256:<nixbase32>".
func NormalizeNarHash(h string) (string, error) { return normalizeNarHash(h) }
