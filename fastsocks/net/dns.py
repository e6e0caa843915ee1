"""Names to addresses: a TTL cache over c-ares or the system resolver.

Every name a CONNECT, a UDP datagram, a BIND or an upstream names is looked
up here, one (name, family) at a time, so that Happy Eyeballs (RFC 8305 §3)
can ask for AAAA and A at once and use whichever answers first.

Which resolver answers (``[dns] resolver``):

* ``system``: getaddrinfo(3) on the loop's thread pool: /etc/hosts, every
  nsswitch source (LDAP, mDNS, systemd-resolved, ...) and the search
  domains, exactly what other programs on this host get.  libc gives no
  TTL: an answer is kept for ``SYSTEM_TTL`` seconds (within min/max_ttl).
* ``c-ares``: c-ares (pycares, through aiodns) for every name: on the loop,
  no thread per lookup, the records' TTLs.  It reads /etc/hosts and
  resolv.conf itself (``[dns] servers`` replaces resolv.conf's servers),
  and answers "localhost" as loopback, but consults no other nsswitch source.
* ``auto`` (the default): c-ares, except for the names the host itself
  knows, which go to the system resolver so that /etc/hosts and nsswitch
  win: "localhost" and ``*.localhost`` (RFC 6761 §6.3), single-label names
  (search domains, the host's own name), ``*.local`` (mDNS, RFC 6762),
  inet_aton shorthands such as ``127.1`` and every name in /etc/hosts.  Without aiodns installed, everything is ``system``.

The cache keeps answers for their TTL, clamped to [min_ttl, max_ttl];
NXDOMAIN and "no address of this family" for ``negative_ttl`` (RFC 2308
asks for the SOA minimum, which getaddrinfo-style answers do not carry);
other failures (timeouts, SERVFAIL) are not kept.  At most ``cache_size``
entries, the least recently used evicted first.  Concurrent lookups of
one (name, family) share one query: one in-flight future per key.
A hit is a dict lookup, with no await (the UDP path relies on that).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

aiodns: Any
try:  # c-ares; optional at run time (a platform without wheels falls back to the system)
    import aiodns
except ImportError:  # pragma: no cover - aiodns is a dependency
    aiodns = None

__all__ = ["DnsCache", "Resolution", "CACHE", "HAVE_CARES", "RESOLVERS", "SYSTEM_TTL",
           "RESOLUTION_DELAY", "parse_nameserver", "configure"]

log = logging.getLogger("fastsocks.dns")

HAVE_CARES = aiodns is not None
RESOLVERS = ("auto", "c-ares", "system")
#: How long an answer from getaddrinfo(3), which has no TTL, is kept (within min/max_ttl).
SYSTEM_TTL = 60.0
#: RFC 8305 §3: with A answered and AAAA not, wait this long for AAAA.
RESOLUTION_DELAY = 0.05
_FAMILIES: tuple[int, ...] = (socket.AF_INET6, socket.AF_INET)
_FAMILY_NAME: dict[int, str] = {socket.AF_INET6: "IPv6", socket.AF_INET: "IPv4"}
# c-ares status codes that are answers about the name, kept as negative entries.
_ARES_NODATA, _ARES_NOTFOUND = 1, 4
_HOSTS_CHECK = 1.0  # seconds between checks of /etc/hosts's modification time

def parse_nameserver(text: str) -> str:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` as c-ares takes it; ValueError if not one."""
    host, port = text.strip(), ""
    if host.startswith("["):
        host, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(text)
        port = rest[1:]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(text) from None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(text)
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _HostsFile:
    """The names in /etc/hosts, read again when the file changes."""

    def __init__(self, path: str = "/etc/hosts") -> None:
        self.path = path
        self.names: frozenset[str] = frozenset()
        self.mtime: float | None = None
        self.checked = -_HOSTS_CHECK

    def __contains__(self, name: str) -> bool:
        now = time.monotonic()
        if now - self.checked >= _HOSTS_CHECK:
            self.checked = now
            self._reload()
        return name.lower().rstrip(".") in self.names

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            self.names, self.mtime = frozenset(), None
            return
        if mtime == self.mtime:
            return
        names: set[str] = set()
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.partition("#")[0].split()
                    names.update(n.lower().rstrip(".") for n in fields[1:])
        except OSError:
            return
        self.names, self.mtime = frozenset(names), mtime


class DnsCache:
    """Answers per (name, family), their expiry, and the lookups in flight."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 hosts_path: str = "/etc/hosts") -> None:
        self.clock = clock
        self.entries: OrderedDict[tuple[str, int], tuple[float, Any]] = OrderedDict()
        self.inflight: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self.hosts = _HostsFile(hosts_path)
        self.resolver = "auto"
        self.servers: tuple[str, ...] = ()
        self.size = 10000
        self.min_ttl, self.max_ttl, self.negative_ttl = 1.0, 3600.0, 5.0
        self.lookups = 0  # queries started (a shared one counts once)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cares: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, resolver: str = "auto", servers: Iterable[str] = (),
                  cache_size: int = 10000, min_ttl: float = 1.0, max_ttl: float = 3600.0,
                  negative_ttl: float = 5.0) -> None:
        """Apply ``[dns]`` (at start and on reload); a new resolver or servers empties the cache."""
        servers = tuple(servers)
        if (resolver, servers) != (self.resolver, self.servers):
            self.entries.clear()
            self._cares = None  # made again, with the new servers, by the next lookup
        self.resolver, self.servers = resolver, servers
        self.size = max(1, cache_size)
        self.min_ttl, self.max_ttl, self.negative_ttl = min_ttl, max(min_ttl, max_ttl), negative_ttl
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # A server configures from its loop: make the channel (its thread and
        # descriptors) now, not inside the first CONNECT that needs it.
        if resolver != "system" and HAVE_CARES:
            self._bind(loop)
            try:
                self._channel()
            except Exception as exc:  # lookups fail one by one, each with this reason
                log.warning("c-ares could not start (%s); names will not resolve", exc)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # a new loop (tests, a restarted worker)
            self._loop, self._cares = loop, None
            self.inflight.clear()

    def _channel(self) -> Any:
        if self._cares is None:
            self._cares = aiodns.DNSResolver(nameservers=list(self.servers) or None,
                                             loop=self._loop)
        return self._cares

    # -- the cache ------------------------------------------------------------

    def get(self, host: str, family: int) -> Any:
        """The cached answer (addresses, or the reason there are none); None: not cached."""
        key = (host, family)
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry[1]

    def until(self, host: str, family: int) -> float:
        """When the cached answer for (host, family) expires (the clock's time); 0: none."""
        entry = self.entries.get((host, family))
        return 0.0 if entry is None else entry[0]

    def put(self, host: str, family: int, answer: Any, ttl: float | None) -> None:
        """Keep an answer: addresses for ``ttl`` (clamped), a reason for negative_ttl."""
        if isinstance(answer, str):
            ttl = self.negative_ttl
        else:
            ttl = min(max(SYSTEM_TTL if ttl is None else ttl, self.min_ttl), self.max_ttl)
        if ttl <= 0:
            return
        key = (host, family)
        self.entries[key] = (self.clock() + ttl, answer)
        self.entries.move_to_end(key)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)  # the least recently used

    # -- lookups --------------------------------------------------------------

    def lookup(self, host: str, family: int) -> asyncio.Future[Any]:
        """The answer for (host, family), from the query in flight or a new one.

        The future's result is the addresses (text), or a string saying why
        there are none: it never raises: waiters that
        leave just remove their callback, and the answer is still cached.
        """
        loop = asyncio.get_running_loop()
        self._bind(loop)
        key = (host, family)
        future = self.inflight.get(key)
        if future is not None:
            return future
        if self._use_system(host):
            futures = {f: loop.create_future() for f in _FAMILIES}
            for f, fut in futures.items():
                self.inflight.setdefault((host, f), fut)
            self.lookups += 1
            task = loop.create_task(self._system(host, futures))
            self._keep(task)
            return self.inflight[key]
        future = loop.create_future()
        self.inflight[key] = future
        self.lookups += 1
        self._cares_lookup(host, family, future)
        return future

    def _keep(self, task: asyncio.Task[None]) -> None:
        # A reference until it ends (the loop keeps only a weak one).
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _use_system(self, host: str) -> bool:
        if self.resolver == "system" or not HAVE_CARES:
            return True
        if self.resolver == "c-ares":
            return False
        name = host.lower().rstrip(".")
        last = name.rpartition(".")[2]
        # A numeric last label is no DNS name (no TLD is all digits, RFC 3696 §2) but an
        # inet_aton form ("127.1", "0x7f.1") that getaddrinfo turns into an address.
        return ("." not in name or name == "localhost" or name.endswith((".localhost", ".local"))
                or last.isdigit() or last.startswith("0x") or name in self.hosts)

    def _settle(self, host: str, family: int, future: asyncio.Future[Any], answer: Any,
                ttl: float | None, keep: bool = True) -> None:
        if self.inflight.get((host, family)) is future:
            del self.inflight[(host, family)]
        if keep:
            self.put(host, family, answer, ttl)
        if not future.done():
            future.set_result(answer)

    async def _system(self, host: str, futures: dict[int, asyncio.Future[Any]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM,
                                           proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            # EAI_NONAME / EAI_NODATA are answers about the name; EAI_AGAIN and the rest are not.
            keep = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
            for family, future in futures.items():
                self._settle(host, family, future, f"cannot resolve {host!r}: {exc}", None, keep)
            return
        except Exception as exc:  # UnicodeError, ValueError (a NUL), ...: not a name
            for family, future in futures.items():
                self._settle(host, family, future, f"cannot resolve {host!r}: {exc}", None, False)
            return
        found: dict[int, list[str]] = {f: [] for f in _FAMILIES}
        for family, _type, _proto, _canon, sockaddr in infos:
            address = str(sockaddr[0])
            if family in found and address not in found[family]:
                found[family].append(address)
        for family, future in futures.items():
            addresses = found[family]
            answer: Any = tuple(addresses) if addresses else \
                f"{host!r} has no {_FAMILY_NAME[family]} address"
            self._settle(host, family, future, answer, None)

    def _cares_lookup(self, host: str, family: int, future: asyncio.Future[Any]) -> None:
        try:
            query = self._channel().getaddrinfo(host, family=family, type=socket.SOCK_STREAM)
        except Exception as exc:  # a name c-ares refuses outright (NUL, too long)
            self._settle(host, family, future, f"cannot resolve {host!r}: {exc}", None, False)
            return
        query.add_done_callback(lambda q: self._cares_done(host, family, future, q))

    def _cares_done(self, host: str, family: int, future: asyncio.Future[Any],
                    query: asyncio.Future[Any]) -> None:
        exc = query.exception() if not query.cancelled() else asyncio.CancelledError()
        if exc is not None:
            status = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            what = exc.args[1] if len(exc.args) > 1 else exc
            reason = f"{host!r} has no {_FAMILY_NAME[family]} address" \
                if status == _ARES_NODATA else f"cannot resolve {host!r}: {what}"
            self._settle(host, family, future, reason, None,
                         status in (_ARES_NODATA, _ARES_NOTFOUND))
            return
        result = query.result()
        addresses: list[str] = []
        ttl: float | None = None
        for node in result.nodes:
            if node.family != family:
                continue
            addr = node.addr[0]
            addr = addr.decode() if isinstance(addr, bytes) else addr
            if addr not in addresses:
                addresses.append(addr)
            ttl = node.ttl if ttl is None else min(ttl, node.ttl)
        for cname in result.cnames:  # the chain lives as long as its shortest link
            ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        if not addresses:
            self._settle(host, family, future,
                         f"{host!r} has no {_FAMILY_NAME[family]} address", None)
            return
        self._settle(host, family, future, tuple(addresses), float(ttl or 0))


#: The process's cache (each worker is a process); ``configure`` applies ``[dns]``.
CACHE = DnsCache()
configure = CACHE.configure


class Resolution:
    """AAAA and A for one name at once, handed on as they come (RFC 8305 §3).

    ``on_addresses(family, addresses)`` gets each family's addresses: IPv6
    as soon as it is known; IPv4 at once when the AAAA answer is in, else
    after ``RESOLUTION_DELAY`` (or when AAAA fails), so that IPv6 still
    goes first when its answer is only a little behind.  ``on_end(reason)``
    comes last: None when some addresses came, else why none did.  Cached
    answers are handed on synchronously within ``start()``.  ``cancel()``
    releases the lookups (their answers are still cached) and the timer.
    """

    __slots__ = ("cache", "host", "on_addresses", "on_end", "waiting", "held", "timer",
                 "found", "reasons", "over", "left")

    def __init__(self, cache: DnsCache, host: str,
                 on_addresses: Callable[[int, tuple[str, ...]], None],
                 on_end: Callable[[str | None], None]) -> None:
        self.cache = cache
        self.host = host
        self.on_addresses = on_addresses
        self.on_end = on_end
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.held: tuple[str, ...] | None = None  # IPv4 waiting for the resolution delay
        self.timer: asyncio.TimerHandle | None = None
        self.found = False
        self.reasons: list[str] = []
        self.over = False
        self.left = len(_FAMILIES)  # families not answered yet

    def start(self) -> None:
        cache, host = self.cache, self.host
        answers = {}
        for family in _FAMILIES:
            answer = cache.get(host, family)
            if answer is None:
                future = cache.lookup(host, family)
                self.waiting[family] = future
                future.add_done_callback(self._answered)
            else:
                answers[family] = answer
        for family, answer in answers.items():
            if self.over:
                return
            self._answer(family, answer)

    def cancel(self) -> None:
        self.over = True
        for future in self.waiting.values():
            future.remove_done_callback(self._answered)
        self.waiting.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _answered(self, future: asyncio.Future[Any]) -> None:
        for family, waited in list(self.waiting.items()):
            if waited is future:
                del self.waiting[family]
                if not self.over:
                    self._answer(family, future.result())

    def _answer(self, family: int, answer: Any) -> None:
        self.left -= 1
        if isinstance(answer, str):
            self.reasons.append(answer)
        elif family == socket.AF_INET and socket.AF_INET6 in self.waiting:
            self.held = answer  # §3: give AAAA a moment
            self.timer = asyncio.get_running_loop().call_later(RESOLUTION_DELAY, self._release)
            return
        else:
            self.found = True
            self.on_addresses(family, answer)
        if self.over:
            return
        if family == socket.AF_INET6:
            self._release()
        elif not self.left and self.held is None:
            self._finish()

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held, self.held = self.held, None
        if held is not None:
            self.found = True
            self.on_addresses(socket.AF_INET, held)
        if not self.over and not self.left:
            self._finish()

    def _finish(self) -> None:
        if self.over:
            return
        self.over = True
        self.on_end(None if self.found else
                    (self.reasons[0] if self.reasons else f"cannot resolve {self.host!r}"))
