package bucket

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/nar"
)

// BenchmarkVerifyUploaded128MiB: what the publisher service pays to verify one uploaded nar of a
// 128 MiB store item (half random, half text; zstd) before it signs its narinfo: reread streams
// it back, decompresses it and hashes the NAR (MB/s of NAR); size only stats it. Both also read
// the (absent) narinfo and write the signed one.
func BenchmarkVerifyUploaded128MiB(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	dir := filepath.Join(b.TempDir(), "item")
	os.MkdirAll(dir, 0o755)
	random := make([]byte, 64<<20)
	rand.Read(random)
	os.WriteFile(filepath.Join(dir, "random"), random, 0o644)
	os.WriteFile(filepath.Join(dir, "text"), bytes.Repeat([]byte("a line of a build's text output\n"), 2<<20), 0o644)
	var narBuf bytes.Buffer
	if err := nar.Dump(&narBuf, dir); err != nil {
		b.Fatal(err)
	}
	data := narBuf.Bytes()
	h, n, _ := nar.Hash(bytes.NewReader(data))
	z := compressed(b, compress.Zstd, data)
	u, err := e.pub.PresignNarPut(ctx, NarKey(compress.Zstd, h), time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	if code := putPresigned(b, u, z); code != 200 {
		b.Fatalf("PUT: %d", code)
	}
	for _, reread := range []bool{true, false} {
		name := "size"
		if reread {
			name = "reread"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(n)
			for i := range b.N {
				p := "/gnu/store/" + string(bytes.Repeat([]byte{"0123456789abcdfg"[i%16]}, 32)) + "-big-" + name
				b.StartTimer()
				_, err := e.pub.Publish(ctx, StoreItem{StorePath: p, NarHash: h, NarSize: uint64(n),
					Uploaded: &UploadedNar{Compression: compress.Zstd, FileSize: int64(len(z)), Reread: reread}})
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
