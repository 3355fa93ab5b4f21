# The sample distribution `make run` builds for real: a small DAG of derivations whose only tool is
# a static busybox (added to the store as bb/bin/busybox, so busybox finds its applets by argv[0]).
#   nix-instantiate hack/sample-farm.nix --argstr bb /gnu/store/...-bbsrc -A hello -A report
# A bootstrap chain (stage0 -> stage1 -> toolchain), four libraries built with the toolchain, a
# multi-output package, and hello on top; report is a second top that shares the toolchain.
{ bb, seconds ? "3" }:
let
  busybox = builtins.storePath bb;
  pkg = name: script: extra: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "${busybox}/bin/busybox";
    args = [ "sh" "-c" ''
      set -e
      PATH=${busybox}/bin
      echo "building ${name}"
      sleep ${seconds}
      ${script}
    '' ];
  } // extra);
  stage0 = pkg "stage0" ''echo "stage0: the seed" > $out'' { };
  stage1 = pkg "stage1" ''{ cat ${stage0}; echo "stage1: built by stage0"; } > $out'' { };
  toolchain = pkg "toolchain-1.0" ''{ cat ${stage1}; echo "toolchain 1.0"; } > $out'' { };
  lib = n: pkg "lib${n}-1.0" ''{ echo "lib${n}, built with:"; cat ${toolchain}; } > $out'' { };
  libs = map lib [ "a" "b" "c" "d" ];
  # Two outputs: out refers to lib.
  split = pkg "split-1.0" ''
    mkdir -p $lib $out
    echo "split's library" > $lib/libsplit.txt
    echo "uses $lib/libsplit.txt" > $out/README
  '' { outputs = [ "out" "lib" ]; };
in {
  hello = pkg "hello-2.12.1" ''
    mkdir -p $out/share
    echo "Hello, world! Built by guix-farm." > $out/share/hello.txt
    cat ${builtins.concatStringsSep " " libs} ${split}/README > $out/share/built-with.txt
  '' { };
  report = pkg "toolchain-report" ''{ echo "report on:"; cat ${toolchain}; } > $out'' { };
}
