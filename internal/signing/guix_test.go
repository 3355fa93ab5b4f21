package signing

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/big"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/sexp"
)

// Vectors G1 (berlin.guixsd.org) and G2 (throwaway farm key) of protocols.md §6.
const (
	g1Body = "StorePath: /gnu/store/y857mykfnc9vd1sc2lqz5g35l111fp71-opensmtpd-test\n" +
		"URL: nar/gzip/y857mykfnc9vd1sc2lqz5g35l111fp71-opensmtpd-test\n" +
		"Compression: gzip\n" +
		"NarHash: sha256:136lm3fxh4kbsgz32157cnmyypgynkkmrqqb03biym1nm6cdwyv7\n" +
		"NarSize: 2600\n" +
		"References: 2sznibwwvp6x0ha2j6n8s1z1brf8ra4q-opensmtpd-test-builder\n" +
		"FileSize: 894\n" +
		"System: x86_64-linux\n" +
		"Deriver: 8aski1xwcn6lj112yc9ylgp2y3c7sj83-opensmtpd-test.drv\n"
	g1Hash = "A7BC20F54C454F2EA5B45555C117EC8F3205F9DBC87FC3783C560BDC9DFBAB7C"
	g1R    = "C8FF6F1325AD74AF8CD5C913DA658E239C2B8D5B6F739DC587C15DD5B807FD"
	g1S    = "0CB1075B94291CD85E0294487F3195AB9E2981980EC86D7546C062F4553AF13B"
	g1Q    = "8D156F295D24B0D9A86FA5741A840FF2D24F60F7B6C4134814AD55625971B394"

	g2Body = "StorePath: /gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt\n" +
		"NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n" +
		"NarSize: 120\n" +
		"References: \n"
	g2Hash = "F8FBD25EC51C013B5936B9699D39E0D0D3ADF2EB56FB71FC4B7A3199200FDBC2"
	g2R    = "0DC0D29F60497ADE12D2B75749C12EFFFB52F519DFB7CB722C8226EA2F240A39"
	g2S    = "0D559CAD2CC6FB469A98A4E112637639F7421B27A2E72A8151A58D0435C07B59"
	g2Q    = "B3CAAA55EC180110A47427B7B9CB1BCEE7178D575810E140F40B95D3B5D07AD2"
	g2D    = "0EDC0AC274390B2F4676958FBB35C0BE484BC71D43842E9EE4A5BFEBD332ABD1"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sigSexp(t testing.TB, hash, r, s, q string) sexp.Node {
	return sexp.Named("signature",
		sexp.Named("data", sexp.Named("flags", sexp.Token("rfc6979")), sexp.Named("hash", sexp.Token("sha256"), sexp.Atom(unhex(t, hash)))),
		sexp.Named("sig-val", sexp.Named("ecdsa", sexp.Named("r", sexp.Atom(unhex(t, r))), sexp.Named("s", sexp.Atom(unhex(t, s))))),
		sexp.Named("public-key", sexp.Named("ecc", sexp.Named("curve", sexp.Token("Ed25519")), sexp.Named("q", sexp.Atom(unhex(t, q))))))
}

func pubKey(t testing.TB, q string) GuixPublicKey {
	t.Helper()
	k, err := ParseGuixPublicKey([]byte("(public-key (ecc (curve Ed25519) (q #" + q + "#)))"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func g2Key(t testing.TB) GuixSecretKey {
	t.Helper()
	k, err := ParseGuixSecretKey([]byte("(private-key (ecc (curve Ed25519) (q #" + g2Q + "#) (d #" + g2D + "#)))"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGuixVectors(t *testing.T) {
	cases := map[string]struct {
		body, hash, r, s, q string
	}{
		"G1 berlin": {g1Body, g1Hash, g1R, g1S, g1Q},
		"G2 farm":   {g2Body, g2Hash, g2R, g2S, g2Q},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if h := sha256.Sum256([]byte(c.body)); !bytes.Equal(h[:], unhex(t, c.hash)) {
				t.Fatalf("body hash %X, vector says %s", h, c.hash)
			}
			sig := sigSexp(t, c.hash, c.r, c.s, c.q)
			trusted := []GuixPublicKey{pubKey(t, c.q)}
			for form, text := range map[string][]byte{"advanced": sig.Advanced(), "canonical": sig.Canonical()} {
				if err := VerifyGuix(trusted, []byte(c.body), text); err != nil {
					t.Errorf("%s: %v", form, err)
				}
			}
			// Without truncating the digest to 253 bits it must fail:
			// proves the shift is what makes it verify.
			if verifyHashUntruncated(t, trusted[0], unhex(t, c.hash), unhex(t, c.r), unhex(t, c.s)) {
				t.Errorf("verifies without truncation too")
			}
		})
	}
}

// verifyHashUntruncated uses the whole 256-bit digest (mod n) as e, to
// show the vectors need libgcrypt's truncation.
func verifyHashUntruncated(t testing.TB, pub GuixPublicKey, h, r, s []byte) bool {
	return verifyDigest(pub, scalarFromBig(new(big.Int).SetBytes(h)), r, s)
}

func TestGuixSecretKey(t *testing.T) {
	k := g2Key(t)
	if q := k.Public().Q; !strings.EqualFold(hex.EncodeToString(q[:]), g2Q) {
		t.Errorf("q = %X, want %s", q, g2Q)
	}
	// The file text round-trips, advanced and canonical.
	for form, text := range map[string][]byte{"advanced": k.Text(), "canonical": k.Sexp().Canonical()} {
		back, err := ParseGuixSecretKey(text)
		if err != nil {
			t.Fatalf("%s: %v", form, err)
		}
		if back.Public() != k.Public() || !bytes.Equal(back.Text(), k.Text()) {
			t.Errorf("%s: round trip changed the key", form)
		}
	}
	want := "(private-key \n (ecc \n  (curve Ed25519)\n  (q #" + g2Q + "#)\n  (d #" + g2D + "#)\n  )\n )\n"
	if got := string(k.Text()); got != want {
		t.Errorf("Text:\n%s\nwant\n%s", got, want)
	}
	pubText := k.Public().String()
	if p, err := ParseGuixPublicKey([]byte(pubText)); err != nil || p != k.Public() {
		t.Errorf("public key round trip: %v", err)
	}
	entry := "(entry " + pubText + " (tag (guix import)))"
	if p, err := ParseGuixPublicKey([]byte(entry)); err != nil || p != k.Public() {
		t.Errorf("acl entry: %v", err)
	}
	acl := "(acl " + entry + "\n(entry (public-key (ecc (curve Ed25519) (q #" + g1Q + "#))) (tag (guix import))))"
	keys, err := ParseGuixACL([]byte(acl))
	if err != nil || len(keys) != 2 || keys[0] != k.Public() || keys[1] != pubKey(t, g1Q) {
		t.Errorf("ParseGuixACL = %v, %v", keys, err)
	}
}

func TestGuixKeyErrors(t *testing.T) {
	cases := map[string]struct {
		secret bool
		text   string
		want   string
	}{
		"public as secret": {true, "(public-key (ecc (curve Ed25519) (q #" + g2Q + "#)))", "this is a public key"},
		"secret as public": {false, "(private-key (ecc (curve Ed25519) (q #" + g2Q + "#) (d #" + g2D + "#)))", "this is a secret key"},
		"wrong q":          {true, "(private-key (ecc (curve Ed25519) (q #" + g1Q + "#) (d #" + g2D + "#)))", "q does not equal"},
		"rsa":              {true, "(private-key (rsa (n #00#) (e #01#)))", "not an ECC key"},
		"other curve":      {false, "(public-key (ecc (curve NIST-P256) (q #04#)))", "not Ed25519"},
		"eddsa":            {false, "(public-key (ecc (curve Ed25519) (flags eddsa) (q #" + g2Q + "#)))", "EdDSA"},
		"short q":          {false, "(public-key (ecc (curve Ed25519) (q #0102#)))", "2 bytes"},
		"no d":             {true, "(private-key (ecc (curve Ed25519) (q #" + g2Q + "#)))", "missing (d"},
		"d too big":        {true, "(private-key (ecc (curve Ed25519) (d #FF" + g2D + "#)))", "33 bytes"},
		"d zero":           {true, "(private-key (ecc (curve Ed25519) (d #00#)))", "0 mod n"},
		"garbage":          {true, "private-key", "expected '('"},
	}
	for name, c := range cases {
		var err error
		if c.secret {
			_, err = ParseGuixSecretKey([]byte(c.text))
		} else {
			_, err = ParseGuixPublicKey([]byte(c.text))
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
	}
}

func TestGuixSignVerify(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 8; i++ {
		k, err := GenerateGuixKey(rng)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, rng.Intn(500))
		rng.Read(body)
		sig := k.SignNarinfo(body)
		if err := VerifyGuix([]GuixPublicKey{k.Public()}, body, sig); err != nil {
			t.Fatalf("key %d: %v\n%s", i, err, sig)
		}
		if again := k.SignNarinfo(body); !bytes.Equal(again, sig) {
			t.Errorf("RFC 6979 signatures differ between runs")
		}
	}
}

func TestVerifyGuixErrors(t *testing.T) {
	k := g2Key(t)
	body := []byte(g2Body)
	sig := k.SignNarinfo(body)
	trusted := []GuixPublicKey{k.Public()}
	parsed, err := sexp.Parse(sig)
	if err != nil {
		t.Fatal(err)
	}
	// Replace s with s+1 to break only the ECDSA equation.
	sv, _ := parsed.Find("s")
	bumped := append([]byte{}, sv.List[1].Atom...)
	bumped[len(bumped)-1]++
	badS := strings.Replace(string(sig), hex.EncodeToString(sv.List[1].Atom), hex.EncodeToString(bumped), 1)
	badS = strings.Replace(badS, strings.ToUpper(hex.EncodeToString(sv.List[1].Atom)), strings.ToUpper(hex.EncodeToString(bumped)), 1)

	cases := map[string]struct {
		trusted []GuixPublicKey
		body    []byte
		sig     []byte
		want    error
	}{
		"untrusted key":  {[]GuixPublicKey{pubKey(t, g1Q)}, body, sig, ErrGuixUnauthorizedKey},
		"no trust":       {nil, body, sig, ErrGuixUnauthorizedKey},
		"other body":     {trusted, append(body, 'x'), sig, ErrGuixHashMismatch},
		"bad s":          {trusted, body, []byte(badS), ErrGuixBadSignature},
		"not a sexp":     {trusted, body, []byte("hello"), ErrGuixCorruptSignature},
		"no sig-val":     {trusted, body, []byte("(signature (data (hash sha256 #" + g2Hash + "#)) (public-key (ecc (curve Ed25519) (q #" + g2Q + "#))))"), ErrGuixCorruptSignature},
		"md5":            {trusted, body, []byte(strings.Replace(string(sig), "sha256", "md5", 1)), ErrGuixCorruptSignature},
		"odd hex digits": {trusted, body, []byte(strings.Replace(string(sig), "(r #", "(r #0", 1)), ErrGuixCorruptSignature},
		"zero r":         {trusted, body, sigSexp(t, g2Hash, "00", g2S, g2Q).Advanced(), ErrGuixBadSignature},
		"r too big":      {trusted, body, sigSexp(t, g2Hash, "FF"+g2R, g2S, g2Q).Advanced(), ErrGuixBadSignature},
	}
	for name, c := range cases {
		err := VerifyGuix(c.trusted, c.body, c.sig)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
}

func TestGuixSignatureField(t *testing.T) {
	sig := g2Key(t).SignNarinfo([]byte(g2Body))
	f := FormatGuixSignatureField("farm", sig)
	host, back, err := ParseGuixSignatureField(f)
	if err != nil || host != "farm" || !bytes.Equal(back, sig) {
		t.Errorf("round trip: %q %v", host, err)
	}
	for name, bad := range map[string]string{
		"version 2":  "2;farm;AAAA",
		"two parts":  "1;AAAA",
		"bad base64": "1;farm;***",
		"not number": "x;farm;AAAA",
	} {
		if _, _, err := ParseGuixSignatureField(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// reportRatio adds the benchmark's time per op as a multiple of baseline's,
// timed right after it for as many iterations, so figures compare across
// machines. (testing.Benchmark cannot run inside a benchmark.)
func reportRatio(b *testing.B, unit string, baseline func()) {
	b.Helper()
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	start := time.Now()
	for i := 0; i < b.N; i++ {
		baseline()
	}
	b.ReportMetric(perOp/(float64(time.Since(start).Nanoseconds())/float64(b.N)), unit)
}

func BenchmarkGuixSign(b *testing.B) {
	k := g2Key(b)
	body := []byte(g2Body)
	for b.Loop() {
		k.SignNarinfo(body)
	}
	nix := mustNixSec(b, n3Secret)
	reportRatio(b, "x_ed25519_sign", func() { nix.Sign(g2Body) })
}

func BenchmarkGuixVerify(b *testing.B) {
	k := g2Key(b)
	body := []byte(g2Body)
	sig := k.SignNarinfo(body)
	trusted := []GuixPublicKey{k.Public()}
	for b.Loop() {
		if err := VerifyGuix(trusted, body, sig); err != nil {
			b.Fatal(err)
		}
	}
	nix := mustNixSec(b, n3Secret)
	nixSig := nix.Sign(g2Body)
	pubs := []NixPublicKey{nix.Public()}
	reportRatio(b, "x_ed25519_verify", func() { VerifyNix(pubs, g2Body, nixSig) })
}
