#!/usr/bin/env bash
# Install the reference SOCKS5 servers that benchmarks/run.py compares
# fastsocks with: microsocks and Dante (danted), from Debian's packages.
#
#   bash benchmarks/setup.sh
#
# run.py starts its own copy of each server on loopback with its own config.
# Debian's dante-server package may start (or try to start) a system-wide
# danted with /etc/danted.conf; it is stopped and disabled here so that it
# neither holds a port nor competes for CPU during a benchmark.
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi

if command -v microsocks >/dev/null 2>&1 && [ -x /usr/sbin/danted ]; then
    echo "setup.sh: microsocks and dante-server are already installed" >&2
else
    echo "setup.sh: installing microsocks and dante-server from Debian's packages" >&2
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y microsocks dante-server
fi

# Stop the packaged service however this machine manages services, and keep
# it from starting at boot.
if command -v systemctl >/dev/null 2>&1; then
    # "disable" works without a running systemd too (it removes the symlinks).
    "${SUDO[@]}" systemctl disable danted.service >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl stop danted.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/danted ]; then
    "${SUDO[@]}" /etc/init.d/danted stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1 && [ -x /etc/init.d/danted ]; then
    "${SUDO[@]}" update-rc.d danted disable >/dev/null 2>&1 || true
fi
# A system-wide danted that is still running (its pid file is the packaged
# default) is stopped by its pid; benchmark copies keep their pid files in
# their own temp directories and are not touched.
for pidfile in /run/danted.pid /var/run/danted.pid; do
    if [ -r "$pidfile" ]; then
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = danted ]; then
            echo "setup.sh: stopping the system-wide danted (pid $pid)" >&2
            "${SUDO[@]}" kill "$pid" || true
        fi
    fi
done

echo "setup.sh: microsocks: $(command -v microsocks)" >&2
echo "setup.sh: danted: $(/usr/sbin/danted -v 2>&1 | head -n 1)" >&2
