package signing

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// Vectors N1-N3 of protocols.md §6.
const (
	curlFingerprint = "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
	n2Secret        = "test1:jbX9NxZp8WB/coK8k7yLf0gNYmBbIbCrOFwgJgI7OV+0sASf4R5oFQlioSlN3bJ56uvshzr7S9Z75pcv+9hSkQ=="
	n2Public        = "test1:tLAEn+EeaBUJYqEpTd2yeerr7Ic6+0vWe+aXL/vYUpE="
	n3Secret        = "farm-test-1:hY9VwhCbTTUMtCKPZ66fxtpzWKbm7WYxW+KBw1zYL/EILNh1gFX05Q4YERPw/gOC6PSZ59h5XJ4ueFTt9qsnqw=="
	n3Public        = "farm-test-1:CCzYdYBV9OUOGBET8P4Dguj0mefYeVyeLnhU7farJ6s="
)

func mustNixPub(t testing.TB, s string) NixPublicKey {
	t.Helper()
	k, err := ParseNixPublicKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustNixSec(t testing.TB, s string) NixSecretKey {
	t.Helper()
	k, err := ParseNixSecretKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNixVectors(t *testing.T) {
	cases := map[string]struct {
		secret, public, fingerprint, sig string
	}{
		"N1 cache.nixos.org": {
			public:      "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
			fingerprint: "1;/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432;sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6;464152;/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27",
			sig:         "cache.nixos.org-1:sn5s/RrqEI+YG6/PjwdbPjcAC7rcta7sJU4mFOawGvJBLsWkyLtBrT2EuFt/LJjWkTZ+ZWOI9NTtjo/woMdvAg==",
		},
		"N2 go-nix test key": {
			secret: n2Secret, public: n2Public, fingerprint: curlFingerprint,
			sig: "test1:519iiVLx/c4Rdt5DNt6Y2Jm6hcWE9+XY69ygiWSZCNGVcmOcyL64uVAJ3cV8vaTusIZdbTnYo9Y7vDNeTmmMBQ==",
		},
		"N3 farm test key": {
			secret: n3Secret, public: n3Public,
			fingerprint: "1;/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;",
			sig:         "farm-test-1:R34xftou/ph0lOHdJbmLYWhRHXtkMhabSDPFZ/BL0yDkG6hLswsjOSzuzpmToZ2NuNtWder+EZldMSJngUiPCw==",
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			pub := mustNixPub(t, c.public)
			if pub.String() != c.public {
				t.Errorf("public key round trip: %q", pub.String())
			}
			if !VerifyNix([]NixPublicKey{pub}, c.fingerprint, c.sig) {
				t.Errorf("VerifyNix rejected the vector")
			}
			if VerifyNix([]NixPublicKey{pub}, c.fingerprint+"x", c.sig) {
				t.Errorf("VerifyNix accepted a changed fingerprint")
			}
			if c.secret == "" {
				return
			}
			sec := mustNixSec(t, c.secret)
			if sec.Text() != c.secret {
				t.Errorf("secret key round trip: %q", sec.Text())
			}
			if got := sec.Public().String(); got != c.public {
				t.Errorf("Public() = %q, want %q", got, c.public)
			}
			if got := sec.Sign(c.fingerprint); got != c.sig {
				t.Errorf("Sign = %q, want %q", got, c.sig)
			}
		})
	}
}

func TestSecretsStayOutOfLogs(t *testing.T) {
	g, err := ParseGuixSecretKey([]byte("(private-key (ecc (curve Ed25519) (d #0EDC0AC274390B2F4676958FBB35C0BE484BC71D43842E9EE4A5BFEBD332ABD1#)))"))
	if err != nil {
		t.Fatal(err)
	}
	keys := Keys{Nix: []NixSecretKey{mustNixSec(t, n3Secret)}, Guix: &g, Host: "h"}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(format, keys)
		if strings.Contains(out, "hY9VwhCb") || strings.Contains(out, "0EDC0AC2") || strings.Contains(strings.ToLower(out), "0edc0ac2") {
			t.Errorf("%s leaks a secret: %s", format, out)
		}
	}
}

func TestVerifyNixRejects(t *testing.T) {
	pub := mustNixPub(t, n2Public)
	sig := mustNixSec(t, n2Secret).Sign(curlFingerprint)
	other := mustNixPub(t, n3Public)
	renamed := NixPublicKey{Name: "other", Key: pub.Key}
	cases := map[string]struct {
		pubs []NixPublicKey
		sig  string
	}{
		"no keys":            {nil, sig},
		"wrong key":          {[]NixPublicKey{other}, sig},
		"right key bad name": {[]NixPublicKey{renamed}, sig},
		"no colon":           {[]NixPublicKey{pub}, strings.TrimPrefix(sig, "test1:")},
		"bad base64":         {[]NixPublicKey{pub}, "test1:!!!"},
		"short":              {[]NixPublicKey{pub}, "test1:AAAA"},
	}
	for name, c := range cases {
		if VerifyNix(c.pubs, curlFingerprint, c.sig) {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseNixKeyErrors(t *testing.T) {
	cases := map[string]struct {
		secret bool
		in     string
		want   string
	}{
		"no name":           {true, "hY9VwhCbTTUM", "NAME:BASE64"},
		"public as secret":  {true, n3Public, "this is a public key"},
		"secret as public":  {false, n3Secret, "64 bytes, want 32"},
		"bad base64":        {false, "x:%%%", "bad base64"},
		"mismatched halves": {true, "x:" + strings.Repeat("A", 86) + "==", "does not match"},
	}
	for name, c := range cases {
		var err error
		if c.secret {
			_, err = ParseNixSecretKey(c.in)
		} else {
			_, err = ParseNixPublicKey(c.in)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
	}
}

// TestGenerateNixKey: the N3 key comes back from its seed, and names Nix
// would misread are refused.
func TestGenerateNixKey(t *testing.T) {
	seed := mustNixSec(t, n3Secret).Key.Seed()
	k, err := GenerateNixKey(bytes.NewReader(seed), "farm-test-1")
	if err != nil {
		t.Fatal(err)
	}
	if k.Text() != n3Secret || k.Public().String() != n3Public {
		t.Errorf("generated %s / %s, want the N3 vector", k.Text(), k.Public())
	}
	if _, err := ParseNixSecretKey(k.Text()); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"", "a:b", "cache 1", "tab\there", "nl\n"} {
		if _, err := GenerateNixKey(bytes.NewReader(seed), name); err == nil || !strings.Contains(err.Error(), "name") {
			t.Errorf("name %q: %v", name, err)
		}
	}
	if _, err := GenerateNixKey(bytes.NewReader(seed[:10]), "short"); err == nil {
		t.Error("no error from a short random source")
	}
}
