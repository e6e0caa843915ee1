#!/usr/bin/env bash
# Build Dante's client library (libdsocks) with GSSAPI from Debian's dante
# source package, once per machine.
#
# Debian ships libdsocks without GSSAPI, and Debian 12's curl cannot finish a
# SOCKS5 GSSAPI session, so this is the real client tests/e2e/test_gssapi.py
# drives through LD_PRELOAD.  The result is cached in .cache/dante-gssapi/
# (or $DANTE_GSSAPI_DIR); a second run finds it there and does nothing.
#
# Works as root (or with sudo) on a fresh Debian 12 whose only reachable
# network is Debian's mirrors: deb-src entries are made from the machine's own
# apt sources in a private directory, so /etc/apt is never changed.
# Usage: bash tests/build_dante.sh   (prints the directory holding libdsocks.so;
# DANTE_KEEP_WORK=1 keeps the unpacked source tree in $TMPDIR for debugging)
set -euo pipefail
cd "$(dirname "$0")/.."

out="${DANTE_GSSAPI_DIR:-$PWD/.cache/dante-gssapi}"
if [ -f "$out/libdsocks.so" ] && [ -f "$out/built-with-gssapi" ]; then
    echo "$out"
    exit 0
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# Tools and headers for the build; apt's own lists are enough for these.
need=()
for tool in gcc make bison flex dpkg-source autoreconf automake libtoolize; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
need=("${need[@]/dpkg-source/dpkg-dev}")
need=("${need[@]/autoreconf/autoconf}")
need=("${need[@]/libtoolize/libtool}")
[ -f /usr/include/gssapi/gssapi.h ] || need+=(libkrb5-dev)
if ((${#need[@]})); then
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/dante-gssapi.XXXXXX")"
[ -n "${DANTE_KEEP_WORK:-}" ] || trap 'rm -rf "$work"' EXIT

# A private apt configuration whose sources are the machine's own, as deb-src.
mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/src"
if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list \
        >"$work/apt/sources.list"
else
    : >"$work/apt/sources.list"
fi
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed 's/^Types:.*/Types: deb-src/' "$f" >"$work/apt/sources.list.d/$(basename "$f")"
done
for f in /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >"$work/apt/sources.list.d/$(basename "$f")"
done
apt_opts=(
    -o "Dir::Etc::SourceList=$work/apt/sources.list"
    -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
    -o "Dir::State::Lists=$work/apt/lists"
    -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" update -q >&2
(cd "$work/src" && apt-get "${apt_opts[@]}" source -q dante >&2)
srcdir="$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'dante-*' | head -n 1)"
[ -n "$srcdir" ] || { echo "build_dante.sh: apt-get source dante unpacked nothing" >&2; exit 1; }

cd "$srcdir"
# Debian's patches touch configure.ac (its rules run dh_autoreconf): do the same,
# or make tries to rerun the automake version the tarball was made with.
autoreconf -fi >&2
# The library alone: no server, no PAM/BSD auth/libwrap, GSSAPI from MIT krb5.
./configure --quiet --disable-server --without-pam --without-bsdauth --without-libwrap \
    --without-upnp --with-gssapi=/usr >&2
grep -q '^#define HAVE_GSSAPI 1' include/autoconf.h || {
    echo "build_dante.sh: configure did not enable GSSAPI (is libkrb5-dev installed?)" >&2
    exit 1
}
make -j"$(nproc)" -C lib >&2
make -j"$(nproc)" -C dlib >&2
# Debian's packaging renames the preload library libdsocksd; upstream's is libdsocks.
lib="$(find dlib/.libs -maxdepth 1 -name 'libdsocks*.so' -print -quit)"
[ -n "$lib" ] || { echo "build_dante.sh: no dlib/.libs/libdsocks*.so was built" >&2; exit 1; }

mkdir -p "$out"
cp -L "$lib" "$out/libdsocks.so.tmp"
mv "$out/libdsocks.so.tmp" "$out/libdsocks.so"
basename "$srcdir" >"$out/built-with-gssapi"
echo "$out"
