"""The access log: one line per client connection, written when it ends.

Every connection gets exactly one line, whatever became of it (a failed
handshake, a refused target, a relayed connection, a UDP association), as
text or as a JSON object per line::

    2024-05-01T12:00:00.123Z 127.0.0.1:51234 alice CONNECT example.org:443 93.184.216.34:443 0 517 4711 1.042 eof

The text fields, in order: time (ISO 8601, UTC, at close), client address,
user (``-``: none), command (``-``: no valid request), target as requested,
address dialled (the resolved address connected to for CONNECT, the peer for
BIND; ``-``: none), reply code sent (``-``: none, e.g. a handshake timeout),
bytes up (client to target), bytes down, duration in seconds, close reason.
A UDP association adds ``datagrams=UP/DOWN``.  Text that a client chose (user
names, requested names) is escaped, so a line is always one line of
space-separated fields.  Passwords are never recorded.

Lines are formatted only when a log is configured, and written in batches
(at most a second or 64 KiB late) with one ``write(2)`` on an ``O_APPEND``
descriptor, so the event loop does not stop for the disk per connection and
workers sharing one file do not tear each other's lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..net.address import format_address

if TYPE_CHECKING:
    from ..control.session import Session

__all__ = ["AccessLog", "close_reason", "check_access_log", "FORMATS"]

log = logging.getLogger("fastsocks.access")

FORMATS = ("text", "json")
FLUSH_INTERVAL = 1.0  # seconds a line may wait in the buffer
FLUSH_BYTES = 64 * 1024

_COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP_ASSOCIATE"}
# One encoder for every line (json.dumps with options builds one per call).
_encode_json = json.JSONEncoder(separators=(",", ":")).encode

# Failure replies (RFC 1928 §6) as close reasons.
_REPLY_REASONS = {
    1: "general_failure",
    2: "rule_denied",
    3: "network_unreachable",
    4: "host_unreachable",
    5: "refused",
    6: "bind_timeout",
    7: "command_not_supported",
    8: "address_type_not_supported",
}

# The session's own reasons (free text, for its debug log) as short tokens.
_PREFIXES = (
    ("handshake timeout", "handshake_timeout"),
    ("PROXY protocol header timeout", "proxy_protocol_timeout"),
    ("PROXY protocol: not from a trusted", "proxy_protocol_untrusted"),
    ("PROXY protocol", "proxy_protocol_error"),
    ("client closed", "client_closed"),
    ("client error", "client_reset"),
    ("no acceptable authentication method", "no_acceptable_method"),
    ("authentication failed", "auth_failed"),
    ("protocol error", "protocol_error"),
    ("UDP association idle", "idle_timeout"),
    ("target closed before", "upstream_closed"),
    ("shutdown", "shutdown"),
    ("limit ", "limit_reached"),
)


def close_reason(session: Session, text: str) -> str:
    """A short token saying why ``session`` ended (``text``: the session's reason).

    The relays already report tokens (eof, client_reset, upstream_reset,
    idle_timeout, shutdown, ...); failures before the relay are named after
    the session's reason, else after the reply code sent.
    """
    if " " not in text and ":" not in text:
        return text  # already a token
    for prefix, token in _PREFIXES:
        if text.startswith(prefix):
            if token == "client_closed" and session.udp is not None and session.reply == 0:
                return "eof"  # a UDP association ends when its TCP connection does
            return token
    reply = session.reply
    if reply == 4 and text.endswith("timed out"):
        return "connect_timeout"
    if reply == 2 and "refused a connection from" in text:
        return "bind_peer_refused"
    if reply is not None and reply in _REPLY_REASONS:
        return _REPLY_REASONS[reply]
    return "error"


def check_access_log(path: str) -> None:
    """Fail at start-up, naming the file, if the log cannot be opened."""
    if path == "-":
        return
    try:
        os.close(_open(path))
    except OSError as exc:
        raise ConfigError(f"access log {path!r}: cannot open it for appending: "
                          f"{exc.strerror or exc}; give a writable file, or '-' for "
                          "standard output") from None


def _open(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _text(value: str) -> str:
    """``value`` as one space-free field; client-chosen text is escaped."""
    if value and value.isprintable() and " " not in value and "\\" not in value:
        return value
    if not value:
        return '""'
    return value.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


class AccessLog:
    """Formats a line per finished session and writes them in batches."""

    def __init__(self, path: str, fmt: str = "text",
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"access log format {fmt!r}: use text or json")
        self.path = path
        self.json = fmt == "json"
        self.loop = loop or asyncio.get_running_loop()
        self.fd = 1 if path == "-" else _open(path)
        self._buf: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._warned = False

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(self, session: Session, reason: str, bytes_up: int, bytes_down: int) -> None:
        if self.fd < 0:
            return  # closed: the server has stopped
        request = session.request
        if request is not None:
            command: str | None = _COMMANDS.get(request.command, str(request.command))
            target: str | None = format_address(request.host, request.port)
        else:
            command = target = None
        dialled = session.dialled
        peer = session.peer
        udp = session.udp
        duration = round(time.monotonic() - session.started, 3)
        token = close_reason(session, reason)
        if self.json:
            record: dict[str, Any] = {
                "time": self._time(),
                "client": format_address(peer[0], peer[1]) if peer else None,
                "user": session.user,
                "command": command,
                "target": target,
                "dialled": format_address(dialled[0], dialled[1]) if dialled else None,
                "reply": session.reply,
                "bytes_up": bytes_up,
                "bytes_down": bytes_down,
                "duration": duration,
                "reason": token,
            }
            if udp is not None:
                record["datagrams_up"] = udp.datagrams_up
                record["datagrams_down"] = udp.datagrams_down
            line = _encode_json(record) + "\n"
        else:
            user = session.user
            reply = session.reply
            line = (
                f"{self._time()} {format_address(peer[0], peer[1]) if peer else '-'} "
                f"{_text(user) if user is not None else '-'} {command or '-'} "
                f"{_text(target) if target is not None else '-'} "
                f"{format_address(dialled[0], dialled[1]) if dialled else '-'} "
                f"{reply if reply is not None else '-'} {bytes_up} {bytes_down} "
                f"{duration:.3f} {token}"
            )
            if udp is not None:
                line += f" datagrams={udp.datagrams_up}/{udp.datagrams_down}"
            line += "\n"
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "backslashreplace")
        self._buf.clear()
        self._size = 0
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError as exc:
            if not self._warned:  # a full disk must not stop the proxy
                self._warned = True
                log.warning("access log %s: cannot write: %s; dropping lines", self.path, exc)

    def close(self) -> None:
        self.flush()
        if self.fd != 1:
            os.close(self.fd)
        self.fd = -1
