"""A small DNS server on loopback for the tests (dnslib parses and writes the wire format).

``DnsServer(records)`` answers A and AAAA from ``records``: name (no
trailing dot) → list of (type, address, ttl); a name not there gets
NXDOMAIN, a type it lacks NOERROR with no answer (no data).  ``delay``
maps (name, type) to seconds to wait before answering; ``queries``
counts what was asked, by (name, type).  One thread, bounded waits.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


class DnsServer:
    def __init__(self, records: dict[str, list[tuple[str, str, int]]],
                 delay: dict[tuple[str, str], float] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.records = records
        self.delay = delay or {}
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._timers: list[threading.Timer] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            try:
                request = DNSRecord.parse(data)
            except Exception:
                continue
            name = str(request.q.qname).rstrip(".").lower()
            qtype = QTYPE[request.q.qtype]
            self.queries[(name, qtype)] += 1
            reply = self._answer(request, name, qtype)
            wait = self.delay.get((name, qtype), 0.0)
            if wait:
                timer = threading.Timer(wait, self._send, (reply, peer))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            else:
                self._send(reply, peer)

    def _answer(self, request: Any, name: str, qtype: str) -> bytes:
        reply = request.reply()
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        for rtype, address, ttl in self.records[name]:
            if rtype == qtype:
                rdata = A(address) if rtype == "A" else AAAA(address)
                reply.add_answer(RR(request.q.qname, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
        return reply.pack()

    def _send(self, reply: bytes, peer: Any) -> None:
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass

    def count(self, name: str, qtype: str | None = None) -> int:
        return sum(n for (q, t), n in self.queries.items()
                   if q == name and (qtype is None or t == qtype))

    def close(self) -> None:
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        self._thread.join(5)
        self.sock.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
