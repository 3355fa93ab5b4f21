package narinfo

import (
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/gcryptverify"
)

// TestGuixSignatureUnderLibgcrypt checks a narinfo we sign the way Guix
// would: split at "Signature:", decode the field, libgcrypt-verify.
func TestGuixSignatureUnderLibgcrypt(t *testing.T) {
	gc := gcryptverify.Build(t)
	keys := testKeys(t)
	n := typical()
	if err := n.Sign(keys); err != nil {
		t.Fatal(err)
	}
	back, err := Parse(n.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	_, sig, err := signing.ParseGuixSignatureField(back.Signatures[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := gc.Verify(sig, back.SignedBody(), []byte(keys.Guix.Public().String())); err != nil {
		t.Errorf("libgcrypt: %v\n%s", err, n.Bytes())
	}
}

// typical is a narinfo of usual size: a few references and a deriver.
func typical() *NarInfo {
	return &NarInfo{
		StorePath:   "/gnu/store/y857mykfnc9vd1sc2lqz5g35l111fp71-opensmtpd-7.4.0",
		URL:         "nar/zstd/1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll.nar.zst",
		Compression: "zstd",
		FileHash:    "sha256:1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll",
		FileSize:    812345,
		NarHash:     "sha256:136lm3fxh4kbsgz32157cnmyypgynkkmrqqb03biym1nm6cdwyv7",
		NarSize:     2600123,
		References: []string{
			"2sznibwwvp6x0ha2j6n8s1z1brf8ra4q-glibc-2.39",
			"0jqd0rlxzra1rs38rdxl43yh6rxchgc6-openssl-3.0.8",
			"j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.3",
			"y857mykfnc9vd1sc2lqz5g35l111fp71-opensmtpd-7.4.0",
		},
		Deriver: "8aski1xwcn6lj112yc9ylgp2y3c7sj83-opensmtpd-7.4.0.drv",
	}
}

func BenchmarkNarinfoSignBoth(b *testing.B) {
	keys := testKeys(b)
	for b.Loop() {
		n := typical()
		if err := n.Sign(keys); err != nil {
			b.Fatal(err)
		}
		_ = n.Bytes()
	}
	// Baseline: the same narinfo signed for Nix only.
	nixOnly := signing.Keys{Nix: keys.Nix}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	start := time.Now()
	for i := 0; i < b.N; i++ {
		n := typical()
		if err := n.Sign(nixOnly); err != nil {
			b.Fatal(err)
		}
		_ = n.Bytes()
	}
	b.ReportMetric(perOp/(float64(time.Since(start).Nanoseconds())/float64(b.N)), "x_nix_only")
}
