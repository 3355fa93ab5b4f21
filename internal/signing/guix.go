package signing

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"

	"github.com/guixfarm/guix-farm/internal/sexp"
)

// Guix signs with libgcrypt's ECDSA over the Ed25519 twisted-Edwards group
// ("(genkey (ecdsa (curve Ed25519) (flags rfc6979)))"), which is not EdDSA:
// d is a plain scalar, q = d·G in RFC 8032 encoding, r = x(k·G) mod n and
// s = k⁻¹(e + r·d) mod n, with e the SHA-256 digest shifted right by 3 bits
// (libgcrypt truncates an opaque 256-bit hash to the 253-bit order).

// Errors returned (wrapped) by VerifyGuix, mirroring Guix's signature-case.
var (
	ErrGuixCorruptSignature = errors.New("corrupt signature")
	ErrGuixUnauthorizedKey  = errors.New("signed by a key that is not trusted")
	ErrGuixHashMismatch     = errors.New("signed hash does not match the narinfo")
	ErrGuixBadSignature     = errors.New("invalid signature")
)

// order is n = 2^252 + 27742317777372353535851937790883648493.
var order, _ = new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)

const orderBits = 253

// GuixPublicKey is a Guix signing public key: the 32-byte RFC 8032 encoding
// of the point Q, as in /etc/guix/signing-key.pub and /etc/guix/acl.
type GuixPublicKey struct {
	Q [32]byte
}

// GuixSecretKey is a Guix signing key (/etc/guix/signing-key.sec).
type GuixSecretKey struct {
	d *edwards25519.Scalar
	// dBE is d as the key file has it, 32 bytes big-endian. libgcrypt
	// generates d up to 2^256, not reduced mod n; the RFC 6979 nonce is
	// derived from these bytes, so keep them to sign exactly as libgcrypt.
	dBE []byte
	pub GuixPublicKey
}

// Public returns the matching public key.
func (k GuixSecretKey) Public() GuixPublicKey { return k.pub }

// Sexp returns "(public-key (ecc (curve Ed25519) (q #..#)))".
func (k GuixPublicKey) Sexp() sexp.Node {
	return sexp.Named("public-key", sexp.Named("ecc",
		sexp.Named("curve", sexp.Token("Ed25519")),
		sexp.Named("q", sexp.Atom(k.Q[:]))))
}

// String returns the key as Guix writes signing-key.pub (advanced form);
// `guix archive --authorize` accepts it.
func (k GuixPublicKey) String() string { return string(k.Sexp().Advanced()) }

// Sexp returns "(private-key (ecc (curve Ed25519) (q #..#) (d #..#)))".
func (k GuixSecretKey) Sexp() sexp.Node {
	return sexp.Named("private-key", sexp.Named("ecc",
		sexp.Named("curve", sexp.Token("Ed25519")),
		sexp.Named("q", sexp.Atom(k.pub.Q[:])),
		sexp.Named("d", sexp.Atom(mpi(k.dBE)))))
}

// String names the key by its public half without revealing d.
func (k GuixSecretKey) String() string { return fmt.Sprintf("guix secret key q=%X", k.pub.Q) }

// GoString keeps %#v from printing d.
func (k GuixSecretKey) GoString() string { return k.String() }

// Text returns the signing-key.sec file contents (advanced form).
func (k GuixSecretKey) Text() []byte { return k.Sexp().Advanced() }

// GenerateGuixKey makes a new key pair from rand (crypto/rand.Reader in
// production), as `guix archive --generate-key` does.
func GenerateGuixKey(rand io.Reader) (GuixSecretKey, error) {
	for {
		var buf [64]byte
		if _, err := io.ReadFull(rand, buf[:]); err != nil {
			return GuixSecretKey{}, fmt.Errorf("generate guix key: read random bytes: %w", err)
		}
		d, err := edwards25519.NewScalar().SetUniformBytes(buf[:])
		if err != nil {
			return GuixSecretKey{}, fmt.Errorf("generate guix key: %w", err)
		}
		if d.Equal(edwards25519.NewScalar()) == 1 {
			continue
		}
		return newSecretKey(d, beBytes(d)), nil
	}
}

func newSecretKey(d *edwards25519.Scalar, dBE []byte) GuixSecretKey {
	var k GuixSecretKey
	k.d, k.dBE = d, dBE
	copy(k.pub.Q[:], new(edwards25519.Point).ScalarBaseMult(d).Bytes())
	return k
}

// ParseGuixSecretKey parses signing-key.sec:
// (private-key (ecc (curve Ed25519) (q #..#) (d #..#))), in advanced or
// canonical form; libgcrypt's "(key-data (public-key ...) (private-key ...))"
// is accepted too. q, when present, must match d.
func ParseGuixSecretKey(sexpText []byte) (GuixSecretKey, error) {
	n, err := sexp.Parse(sexpText)
	if err != nil {
		return GuixSecretKey{}, fmt.Errorf("guix secret key: %w", err)
	}
	priv, ok := n.Find("private-key")
	if !ok {
		if _, pub := n.Find("public-key"); pub {
			return GuixSecretKey{}, fmt.Errorf("guix secret key: this is a public key; the farm needs the secret key signing-key.sec (guix archive --generate-key)")
		}
		return GuixSecretKey{}, fmt.Errorf("guix secret key: no (private-key ...) in %q", n.Name())
	}
	ecc, err := eccParams(priv)
	if err != nil {
		return GuixSecretKey{}, fmt.Errorf("guix secret key: %w", err)
	}
	dList, ok := ecc.Find("d")
	dBytes, ok2 := dList.NthAtom(1)
	if !ok || !ok2 {
		return GuixSecretKey{}, fmt.Errorf("guix secret key: missing (d #..#)")
	}
	dBytes = bytes.TrimLeft(dBytes, "\x00")
	if len(dBytes) > 32 {
		return GuixSecretKey{}, fmt.Errorf("guix secret key: d has %d bytes, want at most 32", len(dBytes))
	}
	dBE := make([]byte, 32)
	copy(dBE[32-len(dBytes):], dBytes)
	d := scalarFromBig(new(big.Int).SetBytes(dBE))
	if d.Equal(edwards25519.NewScalar()) == 1 {
		return GuixSecretKey{}, fmt.Errorf("guix secret key: d is 0 mod n")
	}
	k := newSecretKey(d, dBE)
	if qList, ok := ecc.Find("q"); ok {
		q, err := parseQ(qList)
		if err != nil {
			return GuixSecretKey{}, fmt.Errorf("guix secret key: %w", err)
		}
		if q != k.pub {
			return GuixSecretKey{}, fmt.Errorf("guix secret key: q does not equal d·G; the file is damaged or not an ECDSA Ed25519 key")
		}
	}
	return k, nil
}

// ParseGuixPublicKey parses a public key in any form Guix writes one:
// signing-key.pub "(public-key (ecc (curve Ed25519) (q #..#)))", an ACL
// entry "(entry (public-key ...) (tag (guix import)))", or a signature sexp
// (whose embedded public key is returned).
func ParseGuixPublicKey(sexpText []byte) (GuixPublicKey, error) {
	n, err := sexp.Parse(sexpText)
	if err != nil {
		return GuixPublicKey{}, fmt.Errorf("guix public key: %w", err)
	}
	return publicKeyFromNode(n)
}

// ParseGuixACL returns every key of an /etc/guix/acl file.
func ParseGuixACL(text []byte) ([]GuixPublicKey, error) {
	n, err := sexp.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("guix acl: %w", err)
	}
	if n.Name() != "acl" {
		return nil, fmt.Errorf("guix acl: top-level list is %q, want acl", n.Name())
	}
	var keys []GuixPublicKey
	for i, e := range n.List[1:] {
		if e.Name() != "entry" {
			return nil, fmt.Errorf("guix acl: element %d is %q, want entry", i+1, e.Name())
		}
		k, err := publicKeyFromNode(e)
		if err != nil {
			return nil, fmt.Errorf("guix acl: entry %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func publicKeyFromNode(n sexp.Node) (GuixPublicKey, error) {
	pub, ok := n.Find("public-key")
	if !ok {
		if _, priv := n.Find("private-key"); priv {
			return GuixPublicKey{}, fmt.Errorf("guix public key: this is a secret key; publish signing-key.pub instead")
		}
		return GuixPublicKey{}, fmt.Errorf("guix public key: no (public-key ...) in %q", n.Name())
	}
	ecc, err := eccParams(pub)
	if err != nil {
		return GuixPublicKey{}, fmt.Errorf("guix public key: %w", err)
	}
	qList, ok := ecc.Find("q")
	if !ok {
		return GuixPublicKey{}, fmt.Errorf("guix public key: missing (q #..#)")
	}
	q, err := parseQ(qList)
	if err != nil {
		return GuixPublicKey{}, fmt.Errorf("guix public key: %w", err)
	}
	return q, nil
}

// eccParams checks "(… (ecc (curve Ed25519) …))" and returns the ecc list.
func eccParams(key sexp.Node) (sexp.Node, error) {
	ecc, ok := key.Find("ecc")
	if !ok {
		// libgcrypt also spells the algorithm "ecdsa".
		if ecc, ok = key.Find("ecdsa"); !ok {
			return sexp.Node{}, fmt.Errorf("not an ECC key (want (ecc (curve Ed25519) ...))")
		}
	}
	curve, ok := ecc.Find("curve")
	name, ok2 := curve.NthAtom(1)
	if !ok || !ok2 || !strings.EqualFold(string(name), "Ed25519") {
		return sexp.Node{}, fmt.Errorf("curve %q is not Ed25519", name)
	}
	if flags, ok := ecc.Find("flags"); ok {
		for _, f := range flags.List[1:] {
			if !f.IsList && string(f.Atom) == "eddsa" {
				return sexp.Node{}, fmt.Errorf("EdDSA key (flags eddsa); Guix keys are ECDSA over Ed25519")
			}
		}
	}
	return ecc, nil
}

// parseQ reads (q #..#): the 32-byte RFC 8032 encoding, optionally with
// libgcrypt's 0x40 "compressed" prefix.
func parseQ(qList sexp.Node) (GuixPublicKey, error) {
	q, ok := qList.NthAtom(1)
	if !ok {
		return GuixPublicKey{}, fmt.Errorf("q is not an atom")
	}
	if len(q) == 33 && q[0] == 0x40 {
		q = q[1:]
	}
	if len(q) != 32 {
		return GuixPublicKey{}, fmt.Errorf("q has %d bytes, want 32", len(q))
	}
	if _, err := new(edwards25519.Point).SetBytes(q); err != nil {
		return GuixPublicKey{}, fmt.Errorf("q is not a point on Ed25519: %w", err)
	}
	var k GuixPublicKey
	copy(k.Q[:], q)
	return k, nil
}

// SignNarinfo signs SHA-256(body) and returns the signature sexp in the
// advanced form guix publish writes (the narinfo's Signature field carries
// it in base64). The nonce is deterministic (RFC 6979), as libgcrypt's.
func (k GuixSecretKey) SignNarinfo(body []byte) []byte {
	h := sha256.Sum256(body)
	return k.SignHash(h[:]).Advanced()
}

// SignHash signs a SHA-256 digest and returns the signature sexp.
func (k GuixSecretKey) SignHash(h []byte) sexp.Node {
	e := hashToScalar(h)
	nonces := newRFC6979(k.dBE, h)
	for {
		kk := nonces.next()
		r := affineXModN(new(edwards25519.Point).ScalarBaseMult(kk))
		if r.Equal(edwards25519.NewScalar()) == 1 {
			continue
		}
		// s = k⁻¹ (e + r·d)
		s := edwards25519.NewScalar().MultiplyAdd(r, k.d, e)
		s.Multiply(s, edwards25519.NewScalar().Invert(kk))
		if s.Equal(edwards25519.NewScalar()) == 1 {
			continue
		}
		return sexp.Named("signature",
			sexp.Named("data",
				sexp.Named("flags", sexp.Token("rfc6979")),
				sexp.Named("hash", sexp.Token("sha256"), sexp.Atom(h))),
			sexp.Named("sig-val", sexp.Named("ecdsa",
				sexp.Named("r", sexp.Atom(mpi(beBytes(r)))),
				sexp.Named("s", sexp.Atom(mpi(beBytes(s)))))),
			k.pub.Sexp())
	}
}

// VerifyGuix checks a signature sexp (advanced or canonical) over body the
// way Guix does: the embedded public key must be trusted, the signed hash
// must be SHA-256(body), and the ECDSA signature must verify. The error
// wraps one of the ErrGuix* values.
func VerifyGuix(trusted []GuixPublicKey, body []byte, sigSexp []byte) error {
	sig, err := parseSignature(sigSexp)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrGuixCorruptSignature, err)
	}
	ok := false
	for _, t := range trusted {
		if t == sig.pub {
			ok = true
			break
		}
	}
	if !ok {
		return fmt.Errorf("%w: key %X is not in the trusted list (guix archive --authorize)", ErrGuixUnauthorizedKey, sig.pub.Q)
	}
	h := sha256.Sum256(body)
	if !bytes.Equal(h[:], sig.hash) {
		return fmt.Errorf("%w: signature covers %X, body hashes to %X", ErrGuixHashMismatch, sig.hash, h)
	}
	if !verifyHash(sig.pub, sig.hash, sig.r, sig.s) {
		return fmt.Errorf("%w by key %X", ErrGuixBadSignature, sig.pub.Q)
	}
	return nil
}

type parsedSig struct {
	hash []byte
	r, s []byte
	pub  GuixPublicKey
}

func parseSignature(text []byte) (parsedSig, error) {
	n, err := sexp.Parse(text)
	if err != nil {
		return parsedSig{}, err
	}
	if n.Name() != "signature" {
		return parsedSig{}, fmt.Errorf("top-level list is %q, want signature", n.Name())
	}
	var ps parsedSig
	data, ok := n.Find("data")
	if !ok {
		return parsedSig{}, fmt.Errorf("missing (data ...)")
	}
	hash, ok := data.Find("hash")
	algo, ok2 := hash.NthAtom(1)
	value, ok3 := hash.NthAtom(2)
	if !ok || !ok2 || !ok3 {
		return parsedSig{}, fmt.Errorf("missing (hash sha256 #..#) in data")
	}
	if !strings.EqualFold(string(algo), "sha256") || len(value) != sha256.Size {
		return parsedSig{}, fmt.Errorf("hash is %s with %d bytes, want sha256 with 32", algo, len(value))
	}
	ps.hash = value
	sigVal, ok := n.Find("sig-val")
	if !ok {
		return parsedSig{}, fmt.Errorf("missing (sig-val ...)")
	}
	ecdsa, ok := sigVal.Find("ecdsa")
	if !ok {
		return parsedSig{}, fmt.Errorf("sig-val is not (ecdsa (r ..) (s ..))")
	}
	for name, dst := range map[string]*[]byte{"r": &ps.r, "s": &ps.s} {
		l, ok := ecdsa.Find(name)
		v, ok2 := l.NthAtom(1)
		if !ok || !ok2 {
			return parsedSig{}, fmt.Errorf("missing (%s #..#) in sig-val", name)
		}
		*dst = v
	}
	if ps.pub, err = publicKeyFromNode(n); err != nil {
		return parsedSig{}, err
	}
	return ps, nil
}

func verifyHash(pub GuixPublicKey, h, rBytes, sBytes []byte) bool {
	return verifyDigest(pub, hashToScalar(h), rBytes, sBytes)
}

// verifyDigest is the ECDSA check for the digest scalar e.
func verifyDigest(pub GuixPublicKey, e *edwards25519.Scalar, rBytes, sBytes []byte) bool {
	r, err := scalarFromBE(rBytes)
	if err != nil {
		return false
	}
	s, err := scalarFromBE(sBytes)
	if err != nil {
		return false
	}
	zero := edwards25519.NewScalar()
	if r.Equal(zero) == 1 || s.Equal(zero) == 1 {
		return false
	}
	Q, err := new(edwards25519.Point).SetBytes(pub.Q[:])
	if err != nil {
		return false
	}
	w := edwards25519.NewScalar().Invert(s)
	u1 := edwards25519.NewScalar().Multiply(e, w)
	u2 := edwards25519.NewScalar().Multiply(r, w)
	P := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(u2, Q, u1)
	if P.Equal(edwards25519.NewIdentityPoint()) == 1 {
		return false
	}
	return affineXModN(P).Equal(r) == 1
}

// hashToScalar is libgcrypt's treatment of an opaque hash: the whole byte
// string as a big-endian integer, shifted right to the order's bit length,
// then reduced mod n.
func hashToScalar(h []byte) *edwards25519.Scalar {
	e := new(big.Int).SetBytes(h)
	if bits := 8 * len(h); bits > orderBits {
		e.Rsh(e, uint(bits-orderBits))
	}
	return scalarFromBig(e)
}

// affineXModN returns the affine x coordinate of P reduced mod n.
func affineXModN(P *edwards25519.Point) *edwards25519.Scalar {
	X, _, Z, _ := P.ExtendedCoordinates()
	x := new(field.Element).Multiply(X, new(field.Element).Invert(Z))
	var wide [64]byte
	copy(wide[:], x.Bytes()) // little-endian, < 2^255
	s, _ := edwards25519.NewScalar().SetUniformBytes(wide[:])
	return s
}

func scalarFromBig(v *big.Int) *edwards25519.Scalar {
	v = new(big.Int).Mod(v, order)
	var be [32]byte
	v.FillBytes(be[:])
	s, err := edwards25519.NewScalar().SetCanonicalBytes(reverse(be[:]))
	if err != nil {
		panic("signing: reduced value not canonical: " + err.Error())
	}
	return s
}

// scalarFromBE reads a big-endian MPI that must lie in [0, n).
func scalarFromBE(b []byte) (*edwards25519.Scalar, error) {
	b = bytes.TrimLeft(b, "\x00")
	if len(b) > 32 {
		return nil, fmt.Errorf("value has %d bytes, more than the group order", len(b))
	}
	var be [32]byte
	copy(be[32-len(b):], b)
	return edwards25519.NewScalar().SetCanonicalBytes(reverse(be[:]))
}

// beBytes returns a scalar as 32 big-endian bytes.
func beBytes(s *edwards25519.Scalar) []byte { return reverse(s.Bytes()) }

// mpi returns the minimal unsigned big-endian encoding of a value, as
// libgcrypt prints an MPI; it always has whole bytes, so an even number of
// hex digits. Zero is one zero byte.
func mpi(be []byte) []byte {
	m := bytes.TrimLeft(be, "\x00")
	if len(m) == 0 {
		return []byte{0}
	}
	return m
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[len(b)-1-i] = c
	}
	return out
}

// rfc6979 is the HMAC-SHA256 DRBG of RFC 6979 §3.2 for the 253-bit order,
// as libgcrypt's _gcry_dsa_gen_rfc6979_k uses it.
type rfc6979 struct {
	k, v  []byte
	first bool
}

func newRFC6979(x, h []byte) *rfc6979 {
	// bits2octets(h) = int2octets(bits2int(h) mod n)
	e := new(big.Int).SetBytes(h)
	if bits := 8 * len(h); bits > orderBits {
		e.Rsh(e, uint(bits-orderBits))
	}
	e.Mod(e, order)
	var h1 [32]byte
	e.FillBytes(h1[:])
	g := &rfc6979{k: make([]byte, 32), v: bytes.Repeat([]byte{1}, 32), first: true}
	g.k = g.mac(g.k, g.v, []byte{0}, x, h1[:])
	g.v = g.mac(g.k, g.v)
	g.k = g.mac(g.k, g.v, []byte{1}, x, h1[:])
	g.v = g.mac(g.k, g.v)
	return g
}

func (g *rfc6979) mac(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

// next returns the next candidate k in [1, n).
func (g *rfc6979) next() *edwards25519.Scalar {
	for {
		if !g.first {
			g.k = g.mac(g.k, g.v, []byte{0})
			g.v = g.mac(g.k, g.v)
		}
		g.first = false
		g.v = g.mac(g.k, g.v)
		t := new(big.Int).SetBytes(g.v)
		t.Rsh(t, 8*32-orderBits)
		if t.Sign() > 0 && t.Cmp(order) < 0 {
			return scalarFromBig(t)
		}
	}
}

// FormatGuixSignatureField returns the narinfo "Signature:" value
// "1;<host>;<base64 of the sexp text>".
func FormatGuixSignatureField(host string, sigSexp []byte) string {
	return "1;" + host + ";" + base64.StdEncoding.EncodeToString(sigSexp)
}

// ParseGuixSignatureField splits a "Signature:" value into the host and the
// decoded sexp text, checking the version is 1 as Guix does.
func ParseGuixSignatureField(v string) (host string, sigSexp []byte, err error) {
	parts := strings.Split(strings.TrimSpace(v), ";")
	if len(parts) != 3 {
		return "", nil, fmt.Errorf("guix signature field: want 1;<host>;<base64>, got %d parts", len(parts))
	}
	if ver, err := strconv.Atoi(parts[0]); err != nil || ver != 1 {
		return "", nil, fmt.Errorf("guix signature field: unsupported version %q, want 1", parts[0])
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return "", nil, fmt.Errorf("guix signature field from %q: bad base64: %w", parts[1], err)
	}
	return parts[1], raw, nil
}
