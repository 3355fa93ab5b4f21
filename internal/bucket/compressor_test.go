package bucket

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/guixfarm/guix-farm/internal/compress"
)

// TestCompressorReuseSameBytes: a recycled zstd encoder writes the same
// bytes as a new one (FileHash, and the content-addressed nar, must not
// depend on what the publisher compressed before).
func TestCompressorReuseSameBytes(t *testing.T) {
	p, err := NewPublisher(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b", AllowUnsigned: true})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var inputs [][]byte
	for _, size := range []int{0, 100, 3000, 300 << 10, 3 << 20, 2000} {
		b := make([]byte, size)
		for i := range b {
			if i%64 < 20 {
				b[i] = byte(r.Uint32())
			} else {
				b[i] = "store path text "[i%16]
			}
		}
		inputs = append(inputs, b)
	}
	for round := range 2 {
		for i, in := range inputs {
			var fresh, reused bytes.Buffer
			zw, err := compress.NewWriter(&fresh, p.cfg.Compression, p.cfg.Level)
			if err != nil {
				t.Fatal(err)
			}
			zw.Write(in)
			zw.Close()
			cw, release, err := p.compressor(&reused)
			if err != nil {
				t.Fatal(err)
			}
			cw.Write(in)
			if err := cw.Close(); err != nil {
				t.Fatal(err)
			}
			release()
			if !bytes.Equal(fresh.Bytes(), reused.Bytes()) {
				t.Errorf("round %d, input %d (%d bytes): a recycled encoder wrote %d bytes, a new one %d, not the same",
					round, i, len(in), reused.Len(), fresh.Len())
			}
		}
	}
}
