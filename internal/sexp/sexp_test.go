package sexp

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// libgcryptAdvanced is what libgcrypt 1.10's gcry_sexp_sprint(ADVANCED)
// printed for libgcryptInput (checked with a C program): token, quoted and
// hex choices, and the newline/indent layout.
const (
	libgcryptInput    = `(signature (data (flags rfc6979) (hash sha256 #A7BC20F54C454F2EA5B45555C117EC8F3205F9DBC87FC3783C560BDC9DFBAB7C#)) (sig-val (ecdsa (r #00C8FF#) (s #0CB1#))) (public-key (ecc (curve Ed25519) (q #8D15#) (x "a b") (y "ab") (z 3:a"b) (w "\x01\n"))))`
	libgcryptAdvanced = "(signature \n (data \n  (flags rfc6979)\n  (hash sha256 #A7BC20F54C454F2EA5B45555C117EC8F3205F9DBC87FC3783C560BDC9DFBAB7C#)\n  )\n" +
		" (sig-val \n  (ecdsa \n   (r #00C8FF#)\n   (s \"\\f\xb1\")\n   )\n  )\n" +
		" (public-key \n  (ecc \n   (curve Ed25519)\n   (q #8D15#)\n   (x \"a b\")\n   (y ab)\n   (z \"a\\\"b\")\n   (w #010A#)\n   )\n  )\n )\n"
)

func TestLibgcryptLayout(t *testing.T) {
	n, err := Parse([]byte(libgcryptInput))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(libgcryptAdvanced, string(n.Advanced())); diff != "" {
		t.Errorf("Advanced (-libgcrypt +ours):\n%s", diff)
	}
	back, err := Parse([]byte(libgcryptAdvanced))
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(n) {
		t.Errorf("advanced text parsed to a different tree:\n%s", back.Canonical())
	}
}

func TestParseForms(t *testing.T) {
	abc := List(Token("a"), Atom([]byte("abc")))
	cases := map[string]struct {
		in   string
		want Node
	}{
		"canonical":       {"(1:a3:abc)", abc},
		"token":           {"(a abc)", abc},
		"quoted":          {`(a "abc")`, abc},
		"hex":             {"(a #616263#)", abc},
		"hex with spaces": {"(a #61 62\n63#)", abc},
		"base64":          {"(a |YWJj|)", abc},
		"length quoted":   {`(a 3"abc")`, abc},
		"length hex":      {"(a 3#616263#)", abc},
		"whitespace":      {"\n  ( a\t\r\n abc )  \n", abc},
		"escapes": {`(a "\x61\142\
c")`, abc},
		"control escapes":   {`(a "\b\t\v\n\f\r\"\'\\")`, List(Token("a"), Atom([]byte("\b\t\v\n\f\r\"'\\")))},
		"nested":            {"(a(b(c))d)", List(Token("a"), List(Token("b"), List(Token("c"))), Token("d"))},
		"empty list":        {"()", List()},
		"empty atom":        {`(a "")`, List(Token("a"), Atom(nil))},
		"digit token":       {"(n 42)", List(Token("n"), Token("42"))},
		"display hint":      {"(a [3:txt]3:abc)", List(Token("a"), Node{Atom: []byte("abc"), Hint: []byte("txt")})},
		"binary verbatim":   {"(1:a3:\x00\xff))", List(Token("a"), Atom([]byte{0, 0xff, ')'}))},
		"punctuation token": {"(a-b.c/d_e:f*g+h=i)", List(Token("a-b.c/d_e:f*g+h=i"))},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Parse([]byte(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(c.want) {
				t.Errorf("got %q, want %q", got.Canonical(), c.want.Canonical())
			}
			roundTrip(t, got)
		})
	}
}

func roundTrip(t *testing.T, n Node) {
	t.Helper()
	for form, text := range map[string][]byte{"canonical": n.Canonical(), "advanced": n.Advanced()} {
		back, err := Parse(text)
		if err != nil {
			t.Errorf("%s form %q does not parse: %v", form, text, err)
			continue
		}
		if !back.Equal(n) {
			t.Errorf("%s round trip: %q became %q", form, n.Canonical(), back.Canonical())
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct{ in, want string }{
		"empty":            {"  ", "empty input"},
		"atom at top":      {"abc", "expected '('"},
		"unclosed":         {"(a (b)", "missing ')'"},
		"trailing":         {"(a) b", "after the expression"},
		"odd hex":          {"(a #616#)", "odd number"},
		"bad hex":          {"(a #zz#)", "bad hex"},
		"unclosed hex":     {"(a #61", "missing closing '#'"},
		"unclosed string":  {`(a "abc`, "missing closing"},
		"bad escape":       {`(a "\q")`, "unknown escape"},
		"verbatim overrun": {"(5:abc)", "exceeds"},
		"length mismatch":  {`(a 4"abc")`, "length prefix 4"},
		"bad base64":       {"(a |!!|)", "bad base64"},
		"too deep":         {strings.Repeat("(", 100) + strings.Repeat(")", 100), "nested deeper"},
		"stray char":       {"(a @)", "unexpected character"},
		"unclosed hint":    {"(a [3:abc 1:x)", "missing ']'"},
	}
	for name, c := range cases {
		_, err := Parse([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
	}
}

func TestFind(t *testing.T) {
	n, err := Parse([]byte("(signature (data (hash sha256 #00#)) (public-key (ecc (curve Ed25519) (q #01#))))"))
	if err != nil {
		t.Fatal(err)
	}
	q, ok := n.Find("q")
	if v, ok2 := q.NthAtom(1); !ok || !ok2 || len(v) != 1 || v[0] != 1 {
		t.Errorf("Find(q) = %v %v", q, ok)
	}
	if n.Name() != "signature" {
		t.Errorf("Name = %q", n.Name())
	}
	if self, ok := n.Find("signature"); !ok || !self.Equal(n) {
		t.Errorf("Find should include the node itself")
	}
	if _, ok := n.Find("sha256"); ok {
		t.Errorf("Find matched an atom that does not start a list")
	}
	if _, ok := n.Nth(5); ok {
		t.Errorf("Nth out of range")
	}
}

func TestAdvancedChoices(t *testing.T) {
	cases := map[string]struct {
		atom []byte
		want string
	}{
		"token":         {[]byte("Ed25519"), "Ed25519"},
		"leading digit": {[]byte("1abc"), `"1abc"`},
		"space":         {[]byte("a b"), `"a b"`},
		"high bit":      {[]byte{0x80, 1}, "#8001#"},
		"leading zero":  {[]byte{0, 'a'}, "#0061#"},
		"control":       {[]byte{'a', 1}, "#6101#"},
		"empty":         {nil, `""`},
	}
	for name, c := range cases {
		got := string(List(Atom(c.atom)).Advanced())
		if want := "(" + c.want + ")\n"; got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
}

func FuzzRoundTrip(f *testing.F) {
	for _, s := range []string{libgcryptInput, libgcryptAdvanced, "(a [1:x]1:y)", "(1:\x00)", `(a "\x00\xff")`, "(()())"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(data)
		if err != nil {
			return
		}
		roundTrip(t, n)
	})
}
