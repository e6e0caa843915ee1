#!/usr/bin/env bash
# The README's test command: installs everything the test suite needs, then
# runs it.  Extra arguments go to pytest (e.g. `bash tests/run.sh -k codec`).
# The suite is laid out by what a test starts: tests/unit/ (no process),
# tests/e2e/ (real servers and clients), tests/load/ (thousands of clients, a
# few minutes); `bash tests/run.sh tests/unit` is the quick pass.
#
# Real programs the tests drive (curl) come from Debian's packages; the Python
# side goes into a virtual environment at .venv unless one is already active.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
# GSSAPI tests: a throwaway Kerberos realm (tests/kerberos.py); python-gssapi
# builds against libkrb5-dev, so it comes before pip.
command -v krb5kdc >/dev/null 2>&1 || need+=(krb5-kdc)
command -v kadmin.local >/dev/null 2>&1 || need+=(krb5-admin-server)
command -v kinit >/dev/null 2>&1 || need+=(krb5-user)
command -v krb5-config >/dev/null 2>&1 || need+=(libkrb5-dev)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v microsocks >/dev/null 2>&1 || need+=(microsocks)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Programs wrapped by LD_PRELOAD (tests/e2e/test_wrappers.py).
command -v socksify >/dev/null 2>&1 || need+=(dante-client)
command -v proxychains4 >/dev/null 2>&1 || need+=(proxychains4)
# Happy Eyeballs runs in a network namespace of its own (tests/e2e/test_happy_eyeballs.py).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# HTTP proxying (tests/e2e/test_http_proxy.py): a browser, git over HTTP, a TLS certificate.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v git >/dev/null 2>&1 || need+=(git)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Only Debian and Ubuntu get the programs installed; elsewhere (macOS CI runs
# the codec tests) what is missing stays missing.
if ((${#need[@]})) && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}"
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
python -m fastsocks --version
# Dante's client library with GSSAPI, the real client of tests/e2e/test_gssapi.py:
# built once per machine into .cache/ (a minute), before pytest's timeouts run.
if command -v apt-get >/dev/null 2>&1; then
    bash tests/build_dante.sh >/dev/null
fi
# The layering of the planes (import-linter contracts in pyproject.toml) and the
# types (mypy over the package, the compiled modules through their stubs).
lint-imports
mypy
python -m pytest "$@"
