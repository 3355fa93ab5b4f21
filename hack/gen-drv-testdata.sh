#!/usr/bin/env bash
# Regenerates internal/derivation/testdata: real .drv files made by Debian's nix-instantiate
# (nix-bin 2.8; `hack/tools.sh nix` installs it) with store dir /gnu/store, in a private
# chroot store under a temp dir, never the host's store or daemon.
# Writes <name>.drv per derivation and paths.txt: "<name> <drv path> <output>=<path>...".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT_DIR:-$ROOT/internal/derivation/testdata} # OUT_DIR: tests regenerate into a temp dir
mkdir -p "$OUT"
command -v nix-instantiate >/dev/null || { echo "nix-instantiate missing: run hack/tools.sh nix" >&2; exit 1; }
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || { echo "$BUSYBOX missing: run hack/tools.sh nix" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/root" "$TMP/state" "$TMP/log" "$TMP/conf" "$TMP/src/bbsrc/bin"
printf 'substituters =\nbuild-users-group =\nexperimental-features = nix-command\n' > "$TMP/conf/nix.conf"
# Talk to the private store directly: no NIX_REMOTE, no daemon.
unset NIX_REMOTE
export NIX_STORE_DIR=/gnu/store NIX_STATE_DIR=$TMP/state NIX_LOG_DIR=$TMP/log NIX_CONF_DIR=$TMP/conf HOME=$TMP
STORE="local?root=$TMP/root"
# Nix 2.8 keeps a chroot store's files under <root>/nix/store whatever the logical store dir.
REAL=$TMP/root/nix/store

printf 'hello\n' > "$TMP/src/hello.txt"
cp "$BUSYBOX" "$TMP/src/bbsrc/bin/busybox"
BB=$(nix-store --store "$STORE" --add "$TMP/src/bbsrc")

cat > "$TMP/src/drvs.nix" <<'NIX'
{ bb }:
rec {
  demo = derivation { name = "demo"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo hi > $out" ]; };
  fod = derivation { name = "fod"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo hello > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  dep = derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh";
    outputs = [ "out" "lib" ];
    args = [ "-c" "cat ${demo} ${fod} > $out; touch $lib" ]; src = ./hello.txt; };
  # A NAR-hashed fixed output (r:sha256): its path is a "source" path.
  fodrec = derivation { name = "hello.txt"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo hello > $out" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"; };
  hello-bb = let busybox = builtins.storePath bb; in derivation {
    name = "hello-bb"; system = "x86_64-linux"; builder = "${busybox}/bin/busybox";
    args = [ "sh" "-c" "echo hello > $out" ]; };
  # Strings needing every escape, plus a chain through dep and hello-bb.
  escapes = derivation { name = "escapes-1.0"; system = "x86_64-linux"; builder = "/bin/sh";
    outputs = [ "bin" "doc" "out" ];
    args = [ "-c" "echo \"quoted\" 'back\\slash'\n\ttab\r" ];
    deps = [ dep hello-bb dep.lib ];
    unicode = "grüße ✓"; empty = ""; };
}
NIX

rm -f "$OUT"/*.new
: > "$OUT/paths.txt.new"
for name in demo fod dep fodrec hello-bb escapes; do
  drv=$(nix-instantiate --store "$STORE" "$TMP/src/drvs.nix" --arg bb "\"$BB\"" -A "$name" 2>/dev/null)
  drv=${drv%%!*} # a multi-output derivation prints as <drv>!<first output>
  install -m 644 "$REAL/$(basename "$drv")" "$OUT/$name.drv.new"
  outs=$(nix-store --store "$STORE" --query --outputs "$drv" | while read -r o; do
    # Output names come from the .drv itself, matched by path.
    n=$(grep -o "(\"[a-z]*\",\"$o\"" "$OUT/$name.drv.new" | head -1 | cut -d'"' -f2)
    printf ' %s=%s' "$n" "$o"
  done)
  echo "$name $drv$outs" >> "$OUT/paths.txt.new"
done
for f in "$OUT"/*.new; do mv "$f" "${f%.new}"; done
echo "wrote $(ls "$OUT"/*.drv | wc -l) derivations to $OUT" >&2
