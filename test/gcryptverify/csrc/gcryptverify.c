/* gcryptverify: check and make Guix narinfo signatures with libgcrypt, the
 * way Guix does (guix/pki.scm: find data, sig-val and public-key in the
 * signature, compare the data's hash, then gcry_pk_verify). Used only by
 * tests, as an implementation independent of the Go one.
 *
 *   gcryptverify verify SIGFILE BODYFILE [PUBKEYFILE]
 *       exit 0 valid, 1 bad signature, 2 hash mismatch, 3 corrupt,
 *       4 key differs from PUBKEYFILE, 5 usage or I/O error
 *   gcryptverify sign SECKEYFILE BODYFILE   signature sexp on stdout
 *   gcryptverify genkey                     key-data sexp on stdout
 */
#include <gcrypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(5); }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  size_t r;
  while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
    n += r;
    if (n == cap) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  *len = n;
  return buf;
}

static gcry_sexp_t read_sexp(const char *path) {
  size_t len;
  char *text = slurp(path, &len);
  gcry_sexp_t s;
  size_t off = 0;
  gcry_error_t err = gcry_sexp_sscan(&s, &off, text, len);
  free(text);
  if (err) {
    fprintf(stderr, "%s: %s at offset %zu\n", path, gcry_strerror(err), off);
    exit(3);
  }
  return s;
}

static void print_advanced(gcry_sexp_t s) {
  size_t n = gcry_sexp_sprint(s, GCRYSEXP_FMT_ADVANCED, NULL, 0);
  char *buf = malloc(n);
  gcry_sexp_sprint(s, GCRYSEXP_FMT_ADVANCED, buf, n);
  fputs(buf, stdout);
  free(buf);
}

static int verify(const char *sigfile, const char *bodyfile, const char *pubfile) {
  gcry_sexp_t sig = read_sexp(sigfile);
  gcry_sexp_t data = gcry_sexp_find_token(sig, "data", 0);
  gcry_sexp_t val = gcry_sexp_find_token(sig, "sig-val", 0);
  gcry_sexp_t pub = gcry_sexp_find_token(sig, "public-key", 0);
  if (!data || !val || !pub) { fprintf(stderr, "missing data, sig-val or public-key\n"); return 3; }
  gcry_sexp_t hash = gcry_sexp_find_token(data, "hash", 0);
  size_t hlen = 0;
  const char *h = hash ? gcry_sexp_nth_data(hash, 2, &hlen) : NULL;
  if (!h) { fprintf(stderr, "missing (hash sha256 #..#)\n"); return 3; }

  size_t blen;
  char *body = slurp(bodyfile, &blen);
  unsigned char digest[32];
  gcry_md_hash_buffer(GCRY_MD_SHA256, digest, body, blen);
  free(body);

  if (pubfile) {
    gcry_sexp_t want = read_sexp(pubfile);
    gcry_sexp_t wq = gcry_sexp_find_token(want, "q", 0);
    gcry_sexp_t gq = gcry_sexp_find_token(pub, "q", 0);
    size_t wl = 0, gl = 0;
    const char *w = wq ? gcry_sexp_nth_data(wq, 1, &wl) : NULL;
    const char *g = gq ? gcry_sexp_nth_data(gq, 1, &gl) : NULL;
    if (!w || !g || wl != gl || memcmp(w, g, wl)) { fprintf(stderr, "unauthorized key\n"); return 4; }
  }
  if (hlen != 32 || memcmp(h, digest, 32)) { fprintf(stderr, "hash mismatch\n"); return 2; }
  gcry_error_t err = gcry_pk_verify(val, data, pub);
  if (err) { fprintf(stderr, "gcry_pk_verify: %s\n", gcry_strerror(err)); return 1; }
  return 0;
}

static int sign(const char *keyfile, const char *bodyfile) {
  gcry_sexp_t key = read_sexp(keyfile);
  gcry_sexp_t sec = gcry_sexp_find_token(key, "private-key", 0);
  if (!sec) { fprintf(stderr, "no private-key\n"); return 3; }
  gcry_sexp_t q = gcry_sexp_find_token(sec, "q", 0);
  size_t qlen = 0;
  const char *qd = q ? gcry_sexp_nth_data(q, 1, &qlen) : NULL;
  if (!qd) { fprintf(stderr, "no q in private-key\n"); return 3; }

  size_t blen;
  char *body = slurp(bodyfile, &blen);
  unsigned char digest[32];
  gcry_md_hash_buffer(GCRY_MD_SHA256, digest, body, blen);
  free(body);

  gcry_sexp_t data, val, pub, out;
  gcry_error_t err = gcry_sexp_build(&data, NULL, "(data (flags rfc6979) (hash sha256 %b))", 32, digest);
  if (!err) err = gcry_pk_sign(&val, data, sec);
  if (!err) err = gcry_sexp_build(&pub, NULL, "(public-key (ecc (curve Ed25519) (q %b)))", (int)qlen, qd);
  if (!err) err = gcry_sexp_build(&out, NULL, "(signature %S %S %S)", data, val, pub);
  if (err) { fprintf(stderr, "sign: %s\n", gcry_strerror(err)); return 5; }
  print_advanced(out);
  return 0;
}

static int genkey(void) {
  gcry_sexp_t params, key;
  gcry_error_t err = gcry_sexp_new(&params, "(genkey (ecdsa (curve Ed25519) (flags rfc6979)))", 0, 1);
  if (!err) err = gcry_pk_genkey(&key, params);
  if (err) { fprintf(stderr, "genkey: %s\n", gcry_strerror(err)); return 5; }
  print_advanced(key);
  return 0;
}

int main(int argc, char **argv) {
  if (!gcry_check_version(NULL)) return 5;
  gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
  gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
  if (argc >= 4 && argc <= 5 && !strcmp(argv[1], "verify"))
    return verify(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
  if (argc == 4 && !strcmp(argv[1], "sign")) return sign(argv[2], argv[3]);
  if (argc == 2 && !strcmp(argv[1], "genkey")) return genkey();
  fprintf(stderr, "usage: %s verify SIG BODY [PUB] | sign KEY BODY | genkey\n", argv[0]);
  return 5;
}
