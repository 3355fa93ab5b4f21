package bucket

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/signing"
)

// putPresigned does what an agent does with a presigned URL: a plain PUT with its headers.
func putPresigned(t testing.TB, u PresignedPut, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, u.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range u.Headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func compressed(t testing.TB, kind string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := compress.NewWriter(&b, kind, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPublishUploaded: the publisher writes signed narinfos for nars others uploaded through
// presigned URLs, after verifying them; uploads are write-once; a forged nar is refused and
// deleted; the closure order and NotReproducible rules are those of PublishClosure.
func TestPublishUploaded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dep := dumpBytes(t, file(t, "the dependency\n"))
	top := dumpBytes(t, tree(t, "top"))
	depPath := "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-dep"
	topPath := "/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-top"
	depHash, _, _ := nar.Hash(bytes.NewReader(dep))
	topHash, _, _ := nar.Hash(bytes.NewReader(top))

	st, errs := e.pub.States(ctx, []StoreItem{{StorePath: depPath, NarHash: depHash}, {StorePath: topPath, NarHash: topHash}})
	for i, s := range st {
		if errs[i] != nil || s.Published || s.NarPresent || s.NarKey != NarKey(compress.Zstd, []string{depHash, topHash}[i]) {
			t.Fatalf("state %d: %+v %v", i, s, errs[i])
		}
	}
	upload := func(key string, data []byte) int {
		u, err := e.pub.PresignNarPut(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return putPresigned(t, u, data)
	}
	zdep, ztop := compressed(t, compress.Zstd, dep), compressed(t, compress.Zstd, top)
	depFileHash, _, _ := nar.Hash(bytes.NewReader(zdep))
	if code := upload(st[0].NarKey, zdep); code != 200 {
		t.Fatalf("PUT dep: %d", code)
	}
	if code := upload(st[0].NarKey, []byte("garbage")); code != http.StatusPreconditionFailed {
		t.Errorf("second PUT onto an uploaded nar: %d, want 412 (write-once)", code)
	}
	if code := upload(st[1].NarKey, ztop); code != 200 {
		t.Fatalf("PUT top: %d", code)
	}
	items := []StoreItem{
		{StorePath: topPath, References: []string{depPath}, NarHash: topHash, NarSize: uint64(len(top)),
			Uploaded: &UploadedNar{Compression: compress.Zstd, FileSize: int64(len(ztop)), Reread: true}},
		{StorePath: depPath, NarHash: depHash, NarSize: uint64(len(dep)),
			Uploaded: &UploadedNar{Compression: compress.Zstd, FileSize: int64(len(zdep)), FileHash: depFileHash}}, // size only: FileHash as told
	}
	res, err := e.pub.PublishClosure(ctx, items, 0)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := signing.ParseNixPublicKey(testPublicKey)
	r, err := NewReader(Config{Endpoint: e.m.URL, Bucket: e.bucket}, ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{pk}})
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		ni, err := r.NarInfo(ctx, it.StorePath)
		if err != nil || ni.NarHash != it.NarHash || ni.FileSize != uint64(it.Uploaded.FileSize) || ni.FileHash == "" {
			t.Errorf("%s: narinfo %+v, %v (result %+v)", it.StorePath, ni, err, res[i])
		}
	}
	if got, err := r.ReadFile(ctx, depPath); err != nil || string(got) != "the dependency\n" {
		t.Errorf("ReadFile(dep) = %q, %v", got, err)
	}
	if st, err := e.pub.State(ctx, StoreItem{StorePath: topPath, NarHash: topHash}); err != nil || !st.Published {
		t.Errorf("state of a published item: %+v, %v", st, err)
	}
	if _, err := e.pub.State(ctx, StoreItem{StorePath: topPath, NarHash: depHash}); !errors.Is(err, ErrNotReproducible) {
		t.Errorf("state with another NarHash: %v, want ErrNotReproducible", err)
	}
	if st, err := e.pub.State(ctx, StoreItem{StorePath: topPath, NarHash: depHash, Input: true}); err != nil || !st.Published {
		t.Errorf("state of an input with another NarHash: %+v, %v; want its published copy standing", st, err)
	}

	t.Run("forged nar refused and deleted", func(t *testing.T) {
		other := dumpBytes(t, file(t, "what the item should hold\n"))
		forged := dumpBytes(t, file(t, "a trojan\n"))
		p := "/gnu/store/00hs05w9rzk5r6zrg7dmhjn2950lz9yz-forged"
		h, _, _ := nar.Hash(bytes.NewReader(other))
		key := NarKey(compress.Zstd, h)
		z := compressed(t, compress.Zstd, forged)
		if code := upload(key, z); code != 200 {
			t.Fatalf("PUT: %d", code)
		}
		item := StoreItem{StorePath: p, NarHash: h, NarSize: uint64(len(other)), Uploaded: &UploadedNar{Compression: compress.Zstd, FileSize: int64(len(z)), Reread: true}}
		_, err := e.pub.PublishClosure(ctx, []StoreItem{item}, 0)
		var ie *InvalidUploadError
		if !errors.Is(err, ErrInvalidUpload) || !errors.As(err, &ie) || !strings.Contains(ie.Reason, "NarHash") {
			t.Fatalf("forged nar: %v, want an InvalidUploadError naming the NarHash", err)
		}
		if _, err := r.NarInfo(ctx, p); !errors.Is(err, ErrNotFound) {
			t.Errorf("narinfo of the forged item: %v, want none", err)
		}
		if code, _ := e.m.Get(t, e.url(key)); code != http.StatusNotFound {
			t.Errorf("the forged nar is still there (%d): a correct upload could never take its key", code)
		}
		// The key is free again: the right content goes through.
		zr := compressed(t, compress.Zstd, other)
		if code := upload(key, zr); code != 200 {
			t.Fatalf("PUT of the right content: %d", code)
		}
		item.Uploaded.FileSize = int64(len(zr))
		if _, err := e.pub.PublishClosure(ctx, []StoreItem{item}, 0); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("missing or wrong-size upload refused", func(t *testing.T) {
		data := dumpBytes(t, file(t, "never uploaded\n"))
		h, _, _ := nar.Hash(bytes.NewReader(data))
		item := StoreItem{StorePath: "/gnu/store/11hs05w9rzk5r6zrg7dmhjn2950lz9yz-absent", NarHash: h, NarSize: uint64(len(data)),
			Uploaded: &UploadedNar{Compression: compress.Zstd, FileSize: 10}}
		if _, err := e.pub.PublishClosure(ctx, []StoreItem{item}, 0); !errors.Is(err, ErrInvalidUpload) {
			t.Errorf("nar never uploaded: %v, want ErrInvalidUpload", err)
		}
		z := compressed(t, compress.Zstd, data)
		upload(NarKey(compress.Zstd, h), z)
		item.Uploaded.FileSize = int64(len(z)) + 1
		if _, err := e.pub.PublishClosure(ctx, []StoreItem{item}, 0); !errors.Is(err, ErrInvalidUpload) {
			t.Errorf("wrong size: %v, want ErrInvalidUpload", err)
		}
	})
}

// TestPresignedAttemptLog: a log uploaded through a presigned URL, then committed, reads like one
// PublishAttemptLog wrote.
func TestPresignedAttemptLog(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	u, err := e.pub.PresignAttemptLogPut(ctx, drvPath, 2, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code := putPresigned(t, u, compressed(t, compress.Gzip, []byte("attempt two\n"))); code != 200 {
		t.Fatalf("PUT log: %d", code)
	}
	if err := e.pub.CommitAttemptLog(ctx, drvPath, 2); err != nil {
		t.Fatal(err)
	}
	r, _ := NewReader(Config{Endpoint: e.m.URL, Bucket: e.bucket}, ReaderOptions{})
	for _, a := range []int{0, 2} {
		if got := readLog(t, r, drvPath, a); got != "attempt two\n" {
			t.Errorf("log %d: %q", a, got)
		}
	}
	// An earlier attempt committed later does not replace it.
	if err := e.pub.PublishAttemptLog(ctx, drvPath, 1, strings.NewReader("attempt one\n")); err != nil {
		t.Fatal(err)
	}
	if got := readLog(t, r, drvPath, 0); got != "attempt two\n" {
		t.Errorf("latest log after an earlier attempt's: %q", got)
	}
}

// TestUntrustedNarInfoSignedAgain: a narinfo in the bucket that none of the farm's keys signed
// is no published item: publishing the item (same NarHash) signs it again in place; the State of
// such an item is not Published.
func TestUntrustedNarInfoSignedAgain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	sk, _ := otherKey(t)
	cfg := e.cfg
	k, err := signing.ParseNixSecretKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Keys = signing.Keys{Nix: []signing.NixSecretKey{k}}
	stranger, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := file(t, "signed by a stranger\n")
	if _, err := stranger.Publish(ctx, DiskItem(helloPath, dir)); err != nil {
		t.Fatal(err)
	}
	data := dumpBytes(t, dir)
	h, _, _ := nar.Hash(bytes.NewReader(data))
	if st, err := e.pub.State(ctx, StoreItem{StorePath: helloPath, NarHash: h}); err != nil || st.Published || !st.NarPresent {
		t.Errorf("state of an item whose narinfo a stranger signed: %+v, %v; want not published, nar present", st, err)
	}
	res, err := e.pub.Publish(ctx, DiskItem(helloPath, dir))
	if err != nil || !res.Repaired || res.AlreadyPresent {
		t.Fatalf("publish over a stranger's narinfo: %+v, %v; want Repaired", res, err)
	}
	pk, _ := signing.ParseNixPublicKey(testPublicKey)
	r, _ := NewReader(Config{Endpoint: e.m.URL, Bucket: e.bucket}, ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{pk}})
	if _, err := r.NarInfo(ctx, helloPath); err != nil {
		t.Errorf("the narinfo after publishing again: %v", err)
	}
	if res, err := e.pub.Publish(ctx, DiskItem(helloPath, dir)); err != nil || !res.AlreadyPresent {
		t.Errorf("publishing once more: %+v, %v; want AlreadyPresent", res, err)
	}
}
