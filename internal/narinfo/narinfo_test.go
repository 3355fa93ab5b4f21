package narinfo

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/guixfarm/guix-farm/internal/sexp"
	"github.com/guixfarm/guix-farm/internal/signing"
)

// The narinfo of protocols.md §3.6 with the N3 Nix signature; its Guix
// signature is rebuilt from vector G2.
const (
	n3Secret = "farm-test-1:hY9VwhCbTTUMtCKPZ66fxtpzWKbm7WYxW+KBw1zYL/EILNh1gFX05Q4YERPw/gOC6PSZ59h5XJ4ueFTt9qsnqw=="
	n3Public = "farm-test-1:CCzYdYBV9OUOGBET8P4Dguj0mefYeVyeLnhU7farJ6s="
	n3Sig    = "farm-test-1:R34xftou/ph0lOHdJbmLYWhRHXtkMhabSDPFZ/BL0yDkG6hLswsjOSzuzpmToZ2NuNtWder+EZldMSJngUiPCw=="
	g2Secret = "(private-key (ecc (curve Ed25519) (q #B3CAAA55EC180110A47427B7B9CB1BCEE7178D575810E140F40B95D3B5D07AD2#) (d #0EDC0AC274390B2F4676958FBB35C0BE484BC71D43842E9EE4A5BFEBD332ABD1#)))"

	helloBody = "StorePath: /gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt\n" +
		"NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n" +
		"NarSize: 120\n" +
		"References: \n"
	helloTail = "URL: nar/1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll.nar.zstd\n" +
		"Compression: zstd\n" +
		"FileHash: sha256:1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll\n" +
		"FileSize: 98\n" +
		"Sig: " + n3Sig + "\n"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// guixSigField builds a Signature value from the parts a vector gives.
func guixSigField(t testing.TB, host, hash, r, s, q string) string {
	t.Helper()
	n := sexp.Named("signature",
		sexp.Named("data", sexp.Named("flags", sexp.Token("rfc6979")), sexp.Named("hash", sexp.Token("sha256"), sexp.Atom(mustHex(t, hash)))),
		sexp.Named("sig-val", sexp.Named("ecdsa", sexp.Named("r", sexp.Atom(mustHex(t, r))), sexp.Named("s", sexp.Atom(mustHex(t, s))))),
		sexp.Named("public-key", sexp.Named("ecc", sexp.Named("curve", sexp.Token("Ed25519")), sexp.Named("q", sexp.Atom(mustHex(t, q))))))
	return signing.FormatGuixSignatureField(host, n.Advanced())
}

func helloNarinfo(t testing.TB) string {
	return helloBody + "Signature: " + guixSigField(t, "farm-test",
		"F8FBD25EC51C013B5936B9699D39E0D0D3ADF2EB56FB71FC4B7A3199200FDBC2",
		"0DC0D29F60497ADE12D2B75749C12EFFFB52F519DFB7CB722C8226EA2F240A39",
		"0D559CAD2CC6FB469A98A4E112637639F7421B27A2E72A8151A58D0435C07B59",
		"B3CAAA55EC180110A47427B7B9CB1BCEE7178D575810E140F40B95D3B5D07AD2") + "\n" + helloTail
}

// berlinNarinfo is vector G1: old layout, URL and Compression signed too.
func berlinNarinfo(t testing.TB) string {
	return "StorePath: /gnu/store/y857mykfnc9vd1sc2lqz5g35l111fp71-opensmtpd-test\n" +
		"URL: nar/gzip/y857mykfnc9vd1sc2lqz5g35l111fp71-opensmtpd-test\n" +
		"Compression: gzip\n" +
		"NarHash: sha256:136lm3fxh4kbsgz32157cnmyypgynkkmrqqb03biym1nm6cdwyv7\n" +
		"NarSize: 2600\n" +
		"References: 2sznibwwvp6x0ha2j6n8s1z1brf8ra4q-opensmtpd-test-builder\n" +
		"FileSize: 894\n" +
		"System: x86_64-linux\n" +
		"Deriver: 8aski1xwcn6lj112yc9ylgp2y3c7sj83-opensmtpd-test.drv\n" +
		"Signature: " + guixSigField(t, "berlin.guixsd.org",
		"A7BC20F54C454F2EA5B45555C117EC8F3205F9DBC87FC3783C560BDC9DFBAB7C",
		"C8FF6F1325AD74AF8CD5C913DA658E239C2B8D5B6F739DC587C15DD5B807FD",
		"0CB1075B94291CD85E0294487F3195AB9E2981980EC86D7546C062F4553AF13B",
		"8D156F295D24B0D9A86FA5741A840FF2D24F60F7B6C4134814AD55625971B394") + "\n"
}

func guixPub(t testing.TB, q string) signing.GuixPublicKey {
	t.Helper()
	k, err := signing.ParseGuixPublicKey([]byte("(public-key (ecc (curve Ed25519) (q #" + q + "#)))"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testKeys(t testing.TB) signing.Keys {
	t.Helper()
	k, err := signing.KeysFromSecretData(map[string][]byte{
		signing.SecretDataNixKey:  []byte(n3Secret + "\n"),
		signing.SecretDataGuixKey: []byte(g2Secret),
		signing.SecretDataHost:    []byte("farm-test"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseHello(t *testing.T) {
	text := helloNarinfo(t)
	n, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := &NarInfo{
		StorePath:   "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt",
		URL:         "nar/1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll.nar.zstd",
		Compression: "zstd",
		FileHash:    "sha256:1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll",
		FileSize:    98,
		NarHash:     "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		NarSize:     120,
		References:  []string{},
		Sigs:        []string{n3Sig},
		Signatures:  n.Signatures,
	}
	if diff := cmp.Diff(want, n, cmpopts.IgnoreUnexported(NarInfo{}), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	if got := string(n.Bytes()); got != text {
		t.Errorf("Bytes of an unchanged narinfo:\n%s\nwant\n%s", got, text)
	}
	// Our layout reproduces the reference narinfo byte for byte.
	fresh := *n
	fresh.raw, fresh.rendered = nil, nil
	if got := string(fresh.Bytes()); got != text {
		t.Errorf("rendered layout differs from protocols.md §3.6:\n%s", cmp.Diff(text, got))
	}
	if got := string(n.SignedBody()); got != helloBody {
		t.Errorf("SignedBody = %q, want %q", got, helloBody)
	}
	fp, err := n.Fingerprint()
	if err != nil || fp != "1;/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;" {
		t.Errorf("Fingerprint = %q, %v", fp, err)
	}
	nixPub, _ := signing.ParseNixPublicKey(n3Public)
	g2 := guixPub(t, "B3CAAA55EC180110A47427B7B9CB1BCEE7178D575810E140F40B95D3B5D07AD2")
	if err := n.Verify([]signing.NixPublicKey{nixPub}, []signing.GuixPublicKey{g2}); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if name, err := n.ObjectName(); err != nil || name != "mai503rgk7jq72577x5iwgyc5izfvp9i.narinfo" {
		t.Errorf("ObjectName = %q, %v", name, err)
	}
}

func TestVerifyBerlinOldLayout(t *testing.T) {
	n, err := Parse([]byte(berlinNarinfo(t)))
	if err != nil {
		t.Fatal(err)
	}
	berlin := guixPub(t, "8D156F295D24B0D9A86FA5741A840FF2D24F60F7B6C4134814AD55625971B394")
	if err := n.Verify(nil, []signing.GuixPublicKey{berlin}); err != nil {
		t.Fatalf("Verify G1: %v", err)
	}
	if n.References[0] != "2sznibwwvp6x0ha2j6n8s1z1brf8ra4q-opensmtpd-test-builder" || n.Deriver != "8aski1xwcn6lj112yc9ylgp2y3c7sj83-opensmtpd-test.drv" || n.System != "x86_64-linux" || n.FileSize != 894 {
		t.Errorf("fields: %+v", n)
	}
	// Changing a field re-renders in our layout, which the old signature
	// does not cover.
	n.FileSize = 895
	if err := n.Verify(nil, []signing.GuixPublicKey{berlin}); err == nil {
		t.Errorf("Verify passed after changing FileSize")
	}
}

func TestSignBothAndVerify(t *testing.T) {
	keys := testKeys(t)
	n := &NarInfo{
		StorePath:   "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt",
		URL:         "nar/1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll.nar.zstd",
		Compression: "zstd",
		FileHash:    "sha256:1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll",
		FileSize:    98,
		NarHash:     "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		NarSize:     120,
	}
	if err := n.Sign(keys); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{n3Sig}, n.Sigs); diff != "" {
		t.Errorf("Sigs (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(n.Signatures[0], "1;farm-test;") {
		t.Errorf("Signature = %q", n.Signatures[0])
	}
	nixPub, _ := signing.ParseNixPublicKey(n3Public)
	guix := []signing.GuixPublicKey{keys.Guix.Public()}
	// Round trip through text, as clients see it.
	back, err := Parse(n.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Verify([]signing.NixPublicKey{nixPub}, guix); err != nil {
		t.Fatalf("Verify: %v\n%s", err, n.Bytes())
	}
	if got := string(back.SignedBody()); got != helloBody {
		t.Errorf("SignedBody = %q", got)
	}
	// Signing again replaces rather than duplicates.
	if err := back.Sign(keys); err != nil {
		t.Fatal(err)
	}
	if len(back.Sigs) != 1 || len(back.Signatures) != 1 {
		t.Errorf("re-sign: %d Sigs, %d Signatures", len(back.Sigs), len(back.Signatures))
	}

	tampered := map[string]func(*NarInfo){
		"NarSize":    func(n *NarInfo) { n.NarSize++ },
		"References": func(n *NarInfo) { n.References = []string{"2sznibwwvp6x0ha2j6n8s1z1brf8ra4q-x"} },
	}
	for name, mod := range tampered {
		c, _ := Parse(n.Bytes())
		mod(c)
		if err := c.Verify([]signing.NixPublicKey{nixPub}, nil); err == nil {
			t.Errorf("%s: Nix verify passed after tampering", name)
		}
		if err := c.Verify(nil, guix); err == nil {
			t.Errorf("%s: Guix verify passed after tampering", name)
		}
	}
	// URL and Compression are outside both signatures by design.
	c, _ := Parse(n.Bytes())
	c.URL = "nar/other.nar.zstd"
	if err := c.Verify([]signing.NixPublicKey{nixPub}, guix); err != nil {
		t.Errorf("changing URL broke a signature: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	good := helloBody + helloTail
	cases := map[string]struct {
		text, want string
	}{
		"no colon":      {strings.Replace(good, "NarSize: 120", "NarSize 120", 1), "line 3"},
		"bad NarHash":   {strings.Replace(good, "sha256:04zwf", "sha256:04zwe", 1), "NarHash"},
		"hex NarHash":   {strings.Replace(good, "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", "sha256:1c37d01a", 1), "nix-base32"},
		"md5 NarHash":   {strings.Replace(good, "NarHash: sha256:", "NarHash: md5:", 1), "want sha256"},
		"zero NarSize":  {strings.Replace(good, "NarSize: 120", "NarSize: 0", 1), "NarSize"},
		"bad FileSize":  {strings.Replace(good, "FileSize: 98", "FileSize: -1", 1), "FileSize"},
		"no StorePath":  {strings.Replace(good, "StorePath: /gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt\n", "", 1), "missing StorePath"},
		"bad StorePath": {strings.Replace(good, "/gnu/store/mai503", "gnu/store/mai503", 1), "StorePath"},
		"no URL":        {strings.Replace(good, "URL: nar/1p8406gp6zzyi4d1lh5yx3xhyivcgnvy8psxz7igxpxypz9mgdll.nar.zstd\n", "", 1), "missing URL"},
		"bad reference": {strings.Replace(good, "References: ", "References: /gnu/store/x", 1), "reference"},
		"dup StorePath": {good + "StorePath: /gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt\n", "repeats line 1"},
		"bad FileHash":  {strings.Replace(good, "FileHash: sha256:1p", "FileHash: sha256:1", 1), "FileHash"},
	}
	for name, c := range cases {
		_, err := Parse([]byte(c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
	}
}

func TestParseTolerant(t *testing.T) {
	// Unknown keys of both ecosystems, several URL blocks (last wins, as in
	// Nix), "unknown-deriver", no trailing newline.
	text := helloBody + "Deriver: unknown-deriver\nSignature: 1;h;AAAA\n" +
		"URL: nar/gzip/x\nCompression: gzip\nFileSize: 200\n" +
		"URL: nar/zstd/x\nCompression: zstd\nFileSize: 100\n" +
		"CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nFutureKey: whatever\nSig: a:b"
	n, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if n.URL != "nar/zstd/x" || n.Compression != "zstd" || n.FileSize != 100 || n.Deriver != "" || n.CA == "" || len(n.Sigs) != 1 {
		t.Errorf("got %+v", n)
	}
	if string(n.Bytes()) != text {
		t.Errorf("unchanged narinfo did not render as parsed")
	}
}

func TestSignNeedsFields(t *testing.T) {
	keys := testKeys(t)
	cases := map[string]NarInfo{
		"no NarSize":     {StorePath: "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt", NarHash: "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", URL: "u", Compression: "none"},
		"no Compression": {StorePath: "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt", NarHash: "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", NarSize: 1, URL: "u"},
		"bad StorePath":  {StorePath: "hello", NarHash: "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", NarSize: 1, URL: "u", Compression: "none"},
	}
	for name, n := range cases {
		if err := n.Sign(keys); err == nil {
			t.Errorf("%s: Sign succeeded", name)
		}
	}
}

func TestFingerprintReferences(t *testing.T) {
	n := &NarInfo{
		StorePath:  "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin",
		NarHash:    "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0",
		NarSize:    196040,
		References: []string{"yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n", "0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0", "j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12", "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115"},
	}
	want := "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
	got, err := n.Fingerprint()
	if err != nil || got != want {
		t.Errorf("Fingerprint = %q, %v\nwant %q", got, err, want)
	}
	// N2: the go-nix test key signs this fingerprint deterministically.
	k, _ := signing.ParseNixSecretKey("test1:jbX9NxZp8WB/coK8k7yLf0gNYmBbIbCrOFwgJgI7OV+0sASf4R5oFQlioSlN3bJ56uvshzr7S9Z75pcv+9hSkQ==")
	if sig := k.Sign(got); sig != "test1:519iiVLx/c4Rdt5DNt6Y2Jm6hcWE9+XY69ygiWSZCNGVcmOcyL64uVAJ3cV8vaTusIZdbTnYo9Y7vDNeTmmMBQ==" {
		t.Errorf("N2 signature = %q", sig)
	}
}

func TestCacheInfo(t *testing.T) {
	if got := string(CacheInfo("/gnu/store", 40)); got != "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 40\n" {
		t.Errorf("CacheInfo = %q", got)
	}
}
