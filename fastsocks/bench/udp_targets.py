"""UDP targets: an echo and a sink that counts what it received and says so when asked.

One blocking socket and one loop each, no per-datagram timer.  The sink
answers a statistics query sent straight to it (not through a proxy), so
that a one-way run can tell how many datagrams arrived.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from .common import UDP_SOCKET_BUFFER, family

__all__ = ["UdpTarget", "udp_sink_stats"]

# The query: MAGIC + reply port (2 bytes) + nonce (8) -> MAGIC_R + nonce +
# datagrams (8) + bytes (8).  Control datagrams are not counted.
UDP_STATS_MAGIC = b"FSBENCH-SINK-STATS?"
UDP_STATS_REPLY = b"FSBENCH-SINK-STATS!"
UDP_STATS_QUERY_LEN = len(UDP_STATS_MAGIC) + 2 + 8


class UdpTarget:
    """A UDP echo or sink: one blocking socket, one loop, no per-datagram timer.

    The loop blocks in the receive call with no timeout (a timeout would add
    a poll() to every datagram); ``stop()`` sets a flag and sends the socket
    a datagram to wake it.  Large socket buffers (``UDP_SOCKET_BUFFER``, as
    fastsocks sets on its relay sockets) so that the target's own queue is not
    where datagrams are lost.
    """

    MAX_DATAGRAMS = 1 << 40  # a bound on the loop; never reached

    def __init__(self, kind: str, host: str) -> None:
        self.kind = kind
        self.sock = socket.socket(family(host), socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
            except OSError:
                pass
        self.sock.bind((host, 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.datagrams = 0
        self.bytes = 0
        self._stop = False

    def serve(self) -> None:
        if self.kind == "udp-echo":
            self._echo()
        else:
            self._sink()

    def _echo(self) -> None:
        buf = bytearray(65536)
        view = memoryview(buf)
        recvfrom_into, sendto = self.sock.recvfrom_into, self.sock.sendto
        for _ in range(self.MAX_DATAGRAMS):
            try:
                n, addr = recvfrom_into(buf)
                if self._stop:
                    break
                sendto(view[:n], addr)
            except OSError:
                if self._stop:
                    break
                continue  # e.g. ECONNREFUSED from an ICMP error: keep serving
        view.release()

    def _sink(self) -> None:
        buf = bytearray(65536)
        recv_into = self.sock.recv_into
        qlen = UDP_STATS_QUERY_LEN
        count = total = 0
        for _ in range(self.MAX_DATAGRAMS):
            try:
                n = recv_into(buf)
            except OSError:
                if self._stop:
                    break
                continue
            if self._stop:
                break
            if n == qlen and buf.startswith(UDP_STATS_MAGIC):
                # Counters are kept in locals (faster) and published on request.
                self.datagrams, self.bytes = count, total
                self._answer(bytes(buf[:n]))
                continue
            count += 1
            total += n
        self.datagrams, self.bytes = count, total

    def _answer(self, query: bytes) -> None:
        m = len(UDP_STATS_MAGIC)
        port = struct.unpack(">H", query[m:m + 2])[0]
        nonce = query[m + 2:m + 10]
        try:
            answer = UDP_STATS_REPLY + nonce + struct.pack(">QQ", self.datagrams, self.bytes)
            self.sock.sendto(answer, (self.address[0], port))
        except OSError:
            pass

    def stop(self) -> None:
        self._stop = True
        try:
            with socket.socket(family(self.address[0]), socket.SOCK_DGRAM) as s:
                s.sendto(b"stop", self.address)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def udp_sink_stats(address: tuple[str, int], timeout: float = 0.3,
                   tries: int = 8) -> tuple[int, int] | None:
    """(datagrams, bytes) a fastsocks-bench UDP sink has received, or None if it does not say.

    Asked straight (not through a proxy) with a datagram carrying a nonce;
    retried, since a sink whose queue is full may drop the question too.
    """
    with socket.socket(family(address[0]), socket.SOCK_DGRAM) as q:
        q.bind((address[0], 0))
        q.settimeout(timeout)
        port = q.getsockname()[1]
        for _ in range(tries):
            nonce = os.urandom(8)
            try:
                q.sendto(UDP_STATS_MAGIC + struct.pack(">H", port) + nonce, address)
            except OSError:
                return None
            deadline = time.monotonic() + timeout
            for _ in range(64):  # skip stale answers to earlier tries
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                q.settimeout(left)
                try:
                    answer = q.recv(64)
                except (socket.timeout, OSError):
                    break
                m = len(UDP_STATS_REPLY)
                if answer[:m] == UDP_STATS_REPLY and answer[m:m + 8] == nonce:
                    datagrams, nbytes = struct.unpack(">QQ", answer[m + 8:m + 24])
                    return datagrams, nbytes
    return None
