// Package bucket publishes store items to an S3-compatible bucket that is,
// over plain HTTP, the substitute server of Guix and Nix clients, and reads
// them back (the controller's .drv source).
//
// Layout (docs/bucket.md): nix-cache-info, <hash>.narinfo,
// nar/<compression>/<NarHash nixbase32>.nar<ext>, log/<drv base name>,
// attempt-log/<drv base name>/<attempt>.
package bucket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Defaults.
const (
	DefaultPartSize    = 16 << 20
	DefaultConcurrency = 2
	DefaultPriority    = 40
	DefaultRegion      = "us-east-1"
	// DefaultMaxFileSize bounds what ReadFile returns (a .drv is kilobytes).
	DefaultMaxFileSize = 64 << 20
	minPartSize        = 5 << 20 // S3's minimum for all parts but the last
)

// Content types of the objects.
const (
	ContentTypeNarInfo   = "text/x-nix-narinfo"
	ContentTypeNar       = "application/x-nix-nar"
	ContentTypeCacheInfo = "text/x-nix-cache-info"
	ContentTypeLog       = "text/plain; charset=utf-8"
)

// Config says where the bucket is and how to write to it.
type Config struct {
	// Endpoint is "host:port" (then Secure decides the scheme) or a URL
	// "http://host:port" / "https://host".
	Endpoint  string
	Secure    bool
	Region    string // default us-east-1 (saves a location lookup)
	Bucket    string
	AccessKey string
	SecretKey string

	// StoreDir is the store directory of every path published (default
	// /gnu/store).
	StoreDir string
	// Compression of nars: zstd (default), gzip, lzip, xz or none; Level 0
	// is the compressor's default.
	Compression string
	Level       int

	// Keys sign narinfos. When empty, KeyFiles are loaded with
	// signing.LoadKeysFromFiles. One of them is required unless
	// AllowUnsigned.
	Keys          signing.Keys
	KeyFiles      []string
	AllowUnsigned bool
	// TrustedNixKeys are public keys whose signatures, besides those of Keys, make a narinfo
	// found in the bucket the farm's (e.g. the previous key during a rotation). A narinfo none
	// of them signed is signed again when its item is published (same NarHash only).
	TrustedNixKeys []signing.NixPublicKey

	// PartSize of the multipart upload (default 16 MiB, at least 5 MiB) and
	// Concurrency, the parts in flight: memory is about
	// PartSize × (Concurrency + 1) plus the compressor's window.
	PartSize    uint64
	Concurrency int
	// VerifyReread re-downloads each nar after upload and checks its
	// FileHash before the narinfo is written (costs a full read).
	VerifyReread bool
	// Priority written to nix-cache-info (default 40; lower is preferred).
	Priority int

	// Retry is the backoff for transient errors (5xx, connection resets).
	Retry Backoff
	Log   logr.Logger
	// Transport, if set, is the HTTP transport of the S3 client.
	Transport http.RoundTripper
}

// Backoff is a capped exponential backoff.
type Backoff struct {
	Attempts int           // total tries, default 4
	Initial  time.Duration // default 250ms
	Max      time.Duration // default 5s
	// Sleep waits d or until ctx ends; tests inject a fake.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (b Backoff) withDefaults() Backoff {
	if b.Attempts <= 0 {
		b.Attempts = 4
	}
	if b.Initial <= 0 {
		b.Initial = 250 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 5 * time.Second
	}
	if b.Sleep == nil {
		b.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	return b
}

func (c Config) withDefaults() (Config, error) {
	if c.Bucket == "" {
		return c, errors.New("bucket: Config.Bucket is empty: name the bucket that serves substitutes")
	}
	if c.Endpoint == "" {
		return c, errors.New("bucket: Config.Endpoint is empty: give the S3 endpoint, e.g. http://minio.guix-farm:9000")
	}
	if c.StoreDir == "" {
		c.StoreDir = string(storepath.DefaultDir)
	}
	if err := storepath.Dir(c.StoreDir).Validate(); err != nil {
		return c, fmt.Errorf("bucket: Config.StoreDir: %w", err)
	}
	kind, err := compress.ParseKind(c.Compression)
	if err != nil {
		return c, fmt.Errorf("bucket: Config.Compression: %w", err)
	}
	c.Compression = kind
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.PartSize < minPartSize {
		return c, fmt.Errorf("bucket: Config.PartSize %d is below S3's 5 MiB minimum part size", c.PartSize)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	c.Retry = c.Retry.withDefaults()
	return c, nil
}

// PublicURL is the bucket's anonymous HTTP(S) URL, path-style: the substitute URL that guix and
// nix clients (and the agents' daemons) are given.
func (c Config) PublicURL() (string, error) {
	if c.Bucket == "" {
		return "", errors.New("bucket: no bucket name (--bucket)")
	}
	host, scheme := c.Endpoint, "http"
	if c.Secure {
		scheme = "https"
	}
	if strings.Contains(host, "://") {
		u, err := url.Parse(host)
		if err != nil || u.Host == "" {
			return "", fmt.Errorf("bucket: endpoint %q: want host:port or http(s)://host[:port]", c.Endpoint)
		}
		host, scheme = u.Host, u.Scheme
	}
	return scheme + "://" + host + "/" + c.Bucket, nil
}

// NewClient makes the S3 client for c's endpoint and credentials (anonymous when both keys are
// empty). minio-go's own retries stay on (few), so a failed part is re-sent from its buffer
// instead of restarting the item.
func NewClient(c Config) (*minio.Client, error) {
	host, secure := c.Endpoint, c.Secure
	if strings.Contains(host, "://") {
		u, err := url.Parse(host)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("bucket: endpoint %q: want host:port or http(s)://host[:port] without a path (the bucket goes in Config.Bucket)", c.Endpoint)
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	var creds *credentials.Credentials
	if c.AccessKey != "" || c.SecretKey != "" {
		creds = credentials.NewStaticV4(c.AccessKey, c.SecretKey, "")
	} else {
		creds = credentials.New(&credentials.Static{Value: credentials.Value{SignerType: credentials.SignatureAnonymous}})
	}
	tr := c.Transport
	if tr == nil {
		t, err := minio.DefaultTransport(secure)
		if err != nil {
			return nil, fmt.Errorf("bucket: endpoint %q: %w", c.Endpoint, err)
		}
		// net/http's 4 KiB write buffer cuts a 16 MiB part into 4096
		// write(2) calls; 256 KiB ones cost the upload far less CPU.
		t.WriteBufferSize = 256 << 10
		tr = t
	}
	cl, err := minio.New(host, &minio.Options{
		Creds: creds, Secure: secure, Region: c.Region, Transport: tr,
		BucketLookup: minio.BucketLookupPath, MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("bucket: endpoint %q: %w", c.Endpoint, err)
	}
	return cl, nil
}

// maxSmallObject bounds what getSmall reads: a narinfo is about 1 KiB.
const maxSmallObject = 1 << 20

// getSmall reads a small object (a narinfo) whole, retrying transient
// errors, and returns it with its ETag.
func getSmall(ctx context.Context, c *minio.Client, cfg Config, log logr.Logger, key string) ([]byte, string, error) {
	var data []byte
	var etag string
	_, err := retry(ctx, cfg.Retry, log, "get "+key, func(ctx context.Context) error {
		obj, err := c.GetObject(ctx, cfg.Bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer obj.Close()
		st, err := obj.Stat() // makes the request: a missing key fails here
		if err != nil {
			return err
		}
		etag = st.ETag
		data, err = io.ReadAll(io.LimitReader(obj, maxSmallObject))
		return err
	})
	return data, etag, err
}

// exists reports whether key exists (a HEAD), retrying transient errors.
func exists(ctx context.Context, c *minio.Client, cfg Config, log logr.Logger, key string) (bool, error) {
	present := false
	_, err := retry(ctx, cfg.Retry, log, "stat "+key, func(ctx context.Context) error {
		_, err := c.StatObject(ctx, cfg.Bucket, key, minio.StatObjectOptions{})
		present = err == nil
		if isNotFound(err) {
			return nil
		}
		return err
	})
	if err != nil {
		return false, explain(err, cfg.Endpoint, cfg.Bucket, key)
	}
	return present, nil
}

// permanentError marks an error retrying cannot fix (bad input).
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// Transient says whether err is worth retrying later: the bucket could not be reached or
// answered with a server error, as opposed to refusing the request.
func Transient(err error) bool { return transient(err) }

// transient says whether err is worth retrying: server errors, throttling,
// timeouts and broken connections; never 4xx answers or bad input.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pe permanentError
	if errors.As(err, &pe) {
		return false
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.StatusCode != 0 {
		return er.StatusCode >= 500 || er.StatusCode == http.StatusTooManyRequests || er.StatusCode == http.StatusRequestTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF)
}

// retry runs op until it succeeds, fails permanently, or the attempts run
// out. It returns the number of attempts made.
func retry(ctx context.Context, b Backoff, log logr.Logger, what string, op func(ctx context.Context) error) (int, error) {
	delay := b.Initial
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || !transient(err) || attempt >= b.Attempts {
			return attempt, err
		}
		log.Info("transient error, retrying", "op", what, "attempt", attempt, "delay", delay, "err", err.Error())
		if serr := b.Sleep(ctx, delay); serr != nil {
			return attempt, fmt.Errorf("%w (gave up waiting to retry: %v)", err, serr)
		}
		delay = min(delay*2, b.Max)
	}
}

// isNotFound reports a missing object (or bucket) answer.
func isNotFound(err error) bool {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.StatusCode == http.StatusNotFound || er.Code == "NoSuchKey"
	}
	return false
}

// explain adds the likely fix to an S3 error about bucket b.
func explain(err error, endpoint, b, object string) error {
	if err == nil {
		return nil
	}
	var er minio.ErrorResponse
	where := fmt.Sprintf("s3 object %s/%s at %s", b, object, endpoint)
	if object == "" {
		where = fmt.Sprintf("s3 bucket %s at %s", b, endpoint)
	}
	switch {
	case errors.As(err, &er) && er.Code == "NoSuchBucket":
		return fmt.Errorf("%s: %w (create it with EnsureBucket, or check Config.Bucket)", where, err)
	case errors.As(err, &er) && (er.Code == "AccessDenied" || er.Code == "InvalidAccessKeyId" || er.Code == "SignatureDoesNotMatch"):
		return fmt.Errorf("%s: %w (check the access key and secret, and that they may write the bucket)", where, err)
	case transient(err):
		return fmt.Errorf("%s: %w (is the endpoint reachable and the server up?)", where, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}
