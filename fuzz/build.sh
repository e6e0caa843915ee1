#!/usr/bin/env bash
# Build what fuzz/fuzz_codec.py needs, outside the source tree:
#
#   $BUILD/fastsocks/_codec.<abi>.so   fastsocks/_codec.pyx compiled by clang with
#                                      -fsanitize=address,fuzzer-no-link (ASan +
#                                      libFuzzer's coverage instrumentation)
#   $BUILD/asan_with_fuzzer.so         clang's ASan runtime with libFuzzer linked in,
#                                      to LD_PRELOAD (atheris' native_extension_fuzzing.md,
#                                      "Option A"; the atheris wheels on PyPI do not ship
#                                      it, so it is made here the way atheris' own
#                                      setup_utils/merge_libfuzzer_sanitizer.sh makes it)
#
# Usage: bash fuzz/build.sh [BUILD_DIR]   (default /tmp/fastsocks-fuzz-build, a
#                                          scratch directory outside the repository)
# Needs clang (Debian: apt-get update && apt-get install -y clang), Cython and
# atheris (pip install atheris).  setup.py and the normal build are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="$(realpath -m "${1:-/tmp/fastsocks-fuzz-build}")"
PY="${PYTHON:-python3}"
CC="${CC:-clang}"
CXX="${CXX:-clang++}"

command -v "$CC" >/dev/null || { echo "clang not found: apt-get install -y clang" >&2; exit 1; }
"$PY" -c "import atheris, Cython" || { echo "pip install atheris Cython" >&2; exit 1; }

mkdir -p "$BUILD/fastsocks"

# 1. Cython -> C, straight from the package sources (the .pxd beside the .pyx
#    is found by Cython; -o keeps the source tree clean).
"$PY" -m cython -3 --directive embedsignature=True \
    -o "$BUILD/fastsocks/_codec.c" fastsocks/_codec.pyx

# 2. C -> sanitized extension module.  -O1 and frame pointers for readable
#    ASan reports; no -DNDEBUG so Cython's internal checks stay in.
EXT_SUFFIX="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
SAN_FLAGS="-fsanitize=address,fuzzer-no-link"
"$CC" $SAN_FLAGS -fno-omit-frame-pointer -g -O1 -fPIC -shared \
    -I"$PY_INC" "$BUILD/fastsocks/_codec.c" \
    -o "$BUILD/fastsocks/_codec$EXT_SUFFIX"

# 3. ASan runtime + libFuzzer in one shared object to preload.  libFuzzer must
#    be in the global namespace before atheris loads (so atheris picks its
#    core_without_libfuzzer and the extension's coverage callbacks reach the
#    fuzzer instead of ASan's weak stubs); ASan's preinit object is dropped
#    because it only works in an executable.
RT_DIR="$("$CC" -print-resource-dir)/lib/linux"
ARCH="$(uname -m)"
ASAN_A="$RT_DIR/libclang_rt.asan-$ARCH.a"
FUZZER_A="$RT_DIR/libclang_rt.fuzzer_no_main-$ARCH.a"
for f in "$ASAN_A" "$FUZZER_A"; do
    [ -f "$f" ] || { echo "missing $f (clang's compiler-rt)" >&2; exit 1; }
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$ASAN_A" "$tmp/asan.a"
preinit="$(ar t "$tmp/asan.a" | grep -E '^asan_preinit\.cpp?\.o$' || true)"
[ -z "$preinit" ] || ar d "$tmp/asan.a" $preinit
"$CXX" -Wl,--whole-archive "$FUZZER_A" "$tmp/asan.a" -Wl,--no-whole-archive \
    -lpthread -ldl -shared -o "$BUILD/asan_with_fuzzer.so"

# 4. Prove the instrumentation is there (nm into a variable: grep -q would
#    close the pipe early and pipefail would report nm's SIGPIPE).
ext_syms="$(nm -D "$BUILD/fastsocks/_codec$EXT_SUFFIX")"
rt_syms="$(nm -D "$BUILD/asan_with_fuzzer.so")"
grep -q __asan_report_load <<<"$ext_syms" \
    || { echo "no ASan instrumentation in the extension" >&2; exit 1; }
grep -q __sanitizer_cov <<<"$ext_syms" \
    || { echo "no SanitizerCoverage instrumentation in the extension" >&2; exit 1; }
grep -q ' T LLVMFuzzerRunDriver' <<<"$rt_syms" \
    || { echo "LLVMFuzzerRunDriver missing from asan_with_fuzzer.so" >&2; exit 1; }

echo "built $BUILD/fastsocks/_codec$EXT_SUFFIX"
echo "built $BUILD/asan_with_fuzzer.so"
echo "run it as fuzz/README.md says, with FASTSOCKS_FUZZ_BUILD=$BUILD"
