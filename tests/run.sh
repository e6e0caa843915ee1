#!/usr/bin/env bash
# The README's test command: installs everything the test suite needs, then
# runs it.  Extra arguments go to pytest (e.g. `bash tests/run.sh -k codec`).
#
# Real programs the tests drive (curl) come from Debian's packages; the Python
# side goes into a virtual environment at .venv unless one is already active.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
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
python -m pytest "$@"
