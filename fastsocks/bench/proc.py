"""Measuring a server from /proc (Linux): CPU time and memory of a process tree, UDP drops.

CPU comes from ``/proc/PID/stat`` for the process and all its descendants,
memory from ``status`` (RSS) and ``smaps_rollup`` (PSS), and the datagrams a
UDP socket's full receive queue discarded from ``/proc/net/udp{,6}``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys

__all__ = ["CLK_TCK", "ProcessTree", "udp_socket_drops", "socket_key"]

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcessTree:
    """CPU seconds and RSS of a process with all its threads and descendants (Linux).

    CPU counts utime+stime of every live process in the tree plus cutime+cstime
    (children that exited and were reaped), so a before/after difference is
    right even when children come and go in between.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @staticmethod
    def _stat(pid: int) -> list[str] | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read().decode("ascii", "replace")
        except OSError:
            return None
        # comm (field 2) may hold spaces and parentheses: split after the last ')'.
        return data[data.rindex(")") + 2:].split()

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            fields = self._stat(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
        out: list[int] = []
        todo = [self.pid]
        while todo and len(out) < 100_000:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids():
            fields = self._stat(pid)
            if fields is None:
                continue
            # fields[0] is state (field 3); utime, stime, cutime, cstime are 14..17.
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        return ticks / CLK_TCK

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = f.read()
            except OSError:
                continue
            match = re.search(rb"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if match:
                total += int(match.group(1))
        return total

    def pss_kib(self) -> int | None:
        """Proportional set size (shared pages split between sharers), or None.

        Fairer than summed RSS for servers that fork workers sharing pages.
        """
        total, seen = 0, False
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            match = re.search(rb"^Pss:\s+(\d+) kB", data, re.MULTILINE)
            if match:
                total += int(match.group(1))
                seen = True
        return total if seen else None

    def alive(self) -> bool:
        return self._stat(self.pid) is not None


def _proc_net_address(text: str) -> tuple[str, int] | None:
    """``0100007F:1F90`` (as /proc/net/udp writes it: 32-bit words in host order) as (ip, port)."""
    try:
        hexaddr, hexport = text.rsplit(":", 1)
        raw = bytes.fromhex(hexaddr)
        port = int(hexport, 16)
    except ValueError:
        return None
    if len(raw) not in (4, 16):
        return None
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), port


def socket_key(address: tuple[str, int]) -> tuple[str, int] | None:
    """(canonical IP text, port), or None for a name (only IP literals are looked up)."""
    try:
        return ipaddress.ip_address(address[0].partition("%")[0]).compressed, address[1]
    except ValueError:
        return None


def udp_socket_drops(addresses: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Receive-queue drops of the UDP sockets bound to ``addresses``, from /proc/net/udp{,6}.

    The kernel counts, per socket, the datagrams it discarded because the
    receive buffer was full: that is where loss happens on loopback (the
    sender's own queue is released at once).  A socket bound to the wildcard
    address matches any address with its port; addresses not found are left out.
    """
    wanted = {key for key in map(socket_key, addresses) if key is not None}
    by_port = {port: host for host, port in wanted}
    drops: dict[tuple[str, int], int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines[:100_000]:
            fields = line.split()
            if len(fields) < 13:
                continue
            local = _proc_net_address(fields[1])
            if local is None or local[1] not in by_port:
                continue
            host, port = local
            for want in [w for w in wanted if w[1] == port]:
                if host == want[0] or host in ("0.0.0.0", "::"):
                    drops[want] = drops.get(want, 0) + int(fields[-1])
    return drops
