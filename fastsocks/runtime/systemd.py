"""systemd service readiness (``Type=notify``), without libsystemd.

When systemd starts fastsocks it sets ``NOTIFY_SOCKET``; fastsocks then says
READY=1 once every listener (every worker's, with ``--workers``) is accepting,
RELOADING=1 / READY=1 around a SIGHUP reload, and STOPPING=1 when it begins
to stop.  Elsewhere this does nothing.  The protocol is one datagram per
message to a Unix socket (sd_notify(3)); a name starting with "@" is in the
abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "stopping"]

log = logging.getLogger("fastsocks")


def notify(message: str) -> bool:
    """Send ``message`` to systemd; False when not run by systemd (or it failed)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "@/" or not hasattr(socket, "AF_UNIX"):
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", path, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    extra = f"\nSTATUS={status}" if status else ""
    return notify(f"READY=1\nMAINPID={os.getpid()}{extra}")


def reloading() -> bool:
    # Type=notify-reload wants the monotonic time of the reload with it.
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")
