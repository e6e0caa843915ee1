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
A UDP association adds ``datagrams=UP/DOWN``, a client that spoke another
protocol than SOCKS5 ``protocol=NAME`` (JSON lines always carry
``protocol``).  Text that a client chose (user
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
from typing import Any

from ..control.record import CloseRecord, Protocol
from ..errors import ConfigError
from ..net.address import format_address

__all__ = ["AccessLog", "check_access_log", "FORMATS"]

log = logging.getLogger("fastsocks.access")

FORMATS = ("text", "json")
FLUSH_INTERVAL = 1.0  # seconds a line may wait in the buffer
FLUSH_BYTES = 64 * 1024

_COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP_ASSOCIATE", 4: "HTTP"}
# One encoder for every line (json.dumps with options builds one per call).
_encode_json = json.JSONEncoder(separators=(",", ":")).encode

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
    """Formats a line per finished connection (its CloseRecord) and writes them in batches."""

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

    def write(self, record: CloseRecord) -> None:
        if self.fd < 0:
            return  # closed: the server has stopped
        if record.command is not None:
            command: str | None = _COMMANDS.get(record.command, str(record.command))
            target: str | None = format_address(record.host or "", record.port or 0)
        else:
            command = target = None
        client = format_address(*record.client) if record.client else None
        dialled = format_address(*record.dialled) if record.dialled else None
        duration = round(record.duration, 3)
        udp = record.datagrams_up is not None
        if self.json:
            fields: dict[str, Any] = {
                "time": self._time(),
                "client": client,
                "user": record.user,
                "command": command,
                "target": target,
                "dialled": dialled,
                "reply": record.reply,
                "bytes_up": record.bytes_up,
                "bytes_down": record.bytes_down,
                "duration": duration,
                "reason": record.reason.value,
                "protocol": record.protocol.value,
            }
            if udp:
                fields["datagrams_up"] = record.datagrams_up
                fields["datagrams_down"] = record.datagrams_down
            if record.userid is not None:  # a SOCKS4 client's USERID: its claim
                fields["userid"] = record.userid
            line = _encode_json(fields) + "\n"
        else:
            user = record.user
            reply = record.reply
            line = (
                f"{self._time()} {client or '-'} "
                f"{_text(user) if user is not None else '-'} {command or '-'} "
                f"{_text(target) if target is not None else '-'} "
                f"{dialled or '-'} "
                f"{reply if reply is not None else '-'} {record.bytes_up} {record.bytes_down} "
                f"{duration:.3f} {record.reason.value}"
            )
            if udp:
                line += f" datagrams={record.datagrams_up}/{record.datagrams_down}"
            if record.protocol is not Protocol.SOCKS5:  # SOCKS5 lines keep their fields
                line += f" protocol={record.protocol.value}"
            if record.userid is not None:
                line += f" userid={_text(record.userid)}"
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
