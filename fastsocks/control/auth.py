"""RFC 1929 username/password: the users file and credential checks.

The users file holds one ``name:hash`` per line, as ``htpasswd -B`` writes it
(bcrypt ``$2y$``/``$2b$``/``$2a$``), or with an argon2id hash (``$argon2id$``).
Blank lines and lines starting with ``#`` are ignored.

A hash check costs milliseconds, so it runs in a thread pool of its own
(never on the event loop, and never in the default executor, where a flood
of wrong passwords would hold up the system resolver's lookups); how many may
wait there is bounded (``control/authgate.py``).  A successful check is
remembered as an HMAC of the password under a per-process random key, so a
client that reconnects costs one SHA-256 instead of a bcrypt round, without
queueing (``cached``); the comparison is constant-time.  Where the splice
engine negotiates, it keeps the same MACs (``mirror``) and answers a login
they vouch for itself, without the loop.  Unknown users are
checked against a dummy hash made like the file's own (the algorithm and
cost most of its hashes use, re-made with the file on reload), so that
timing does not reveal which names exist.  Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from ..errors import ConfigError

argon2: Any
try:
    import argon2
    import argon2.exceptions
except ImportError:  # pragma: no cover - argon2-cffi is a dependency
    argon2 = None

__all__ = ["Users", "hash_password", "set_user", "remove_user"]

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_ARGON2_PREFIXES = ("$argon2id$", "$argon2i$")
# bcrypt reads at most 72 bytes of a password (longer ones raise in bcrypt>=5);
# truncating is what htpasswd and OpenBSD's bcrypt do.
_BCRYPT_MAX = 72
_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _check_hash(password: bytes, hashed: str) -> bool:
    """Verify ``password`` against a bcrypt or argon2 hash (blocking)."""
    if hashed.startswith(_ARGON2_PREFIXES):
        try:
            return bool(argon2.PasswordHasher().verify(hashed, password))
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False
    return bcrypt.checkpw(password[:_BCRYPT_MAX], hashed.encode("ascii"))


_pool: tuple[int, ThreadPoolExecutor] | None = None


def hash_pool() -> ThreadPoolExecutor:
    """This process's threads for hash checks (made on first use: workers fork first)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        threads = min(8, max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 2))
        _pool = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="fastsocks-hash"))
    return _pool[1]


def cost_of(hashed: str) -> tuple[Any, ...]:
    """What a check against ``hashed`` costs: its algorithm and parameters."""
    if hashed.startswith(_ARGON2_PREFIXES):
        p = argon2.extract_parameters(hashed)
        return ("argon2", p.type.name.lower(), p.version, p.memory_cost, p.time_cost,
                p.parallelism, p.hash_len, p.salt_len)
    return ("bcrypt", int(hashed[4:6]))


def dummy_like(hashes: list[str]) -> str | None:
    """A hash that costs what most of ``hashes`` cost to check, and that nothing matches.

    One of them with a fresh random salt: the same algorithm and parameters
    (bcrypt cost; argon2 type, memory, time, parallelism, lengths), so the
    check of an unknown user takes as long as a known user's.  None for an
    empty file.
    """
    if not hashes:
        return None
    costs = collections.Counter(cost_of(h) for h in hashes)
    common = costs.most_common(1)[0][0]
    model = next(h for h in hashes if cost_of(h) == common)
    if common[0] == "bcrypt":
        # $2b$NN$ + 22 characters of salt + 31 of digest; gensalt's salt is canonical.
        salt = bcrypt.gensalt(rounds=common[1]).decode("ascii")[7:29]
        return model[:7] + salt + model[29:]
    # $argon2id$v=19$m=...,t=...,p=...$SALT$HASH: a new salt of the same length.
    head, _, tail = model.rpartition("$")
    head = head.rpartition("$")[0]
    salt = base64.b64encode(secrets.token_bytes(common[7])).decode("ascii").rstrip("=")
    return f"{head}${salt}${tail}"


def hash_password(password: bytes, scheme: str = "bcrypt", cost: int = 10) -> str:
    """A new hash for the users file: bcrypt (as htpasswd -B) or argon2id."""
    if scheme == "argon2id":
        return argon2.PasswordHasher().hash(password)
    if scheme != "bcrypt":
        raise ValueError(f"unknown hash scheme {scheme!r}: use bcrypt or argon2id")
    return bcrypt.hashpw(password[:_BCRYPT_MAX], bcrypt.gensalt(rounds=cost)).decode("ascii")


def _validate_hash(hashed: str) -> str | None:
    """Why ``hashed`` is not a usable hash, or None if it is."""
    if hashed.startswith(_BCRYPT_PREFIXES):
        if not _BCRYPT_RE.fullmatch(hashed):
            return "the bcrypt hash is malformed (expected $2y$NN$ and 53 characters of [./A-Za-z0-9])"
        return None
    if hashed.startswith(_ARGON2_PREFIXES):
        try:
            argon2.extract_parameters(hashed)
        except argon2.exceptions.InvalidHashError:
            return "the argon2 hash is malformed"
        return None
    return "the hash must be bcrypt ($2y$, $2b$, $2a$: htpasswd -B) or argon2id ($argon2id$)"


@dataclass
class Users:
    """The users file, loaded and validated, with a cache of good checks."""

    path: str
    hashes: dict[str, str]
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _verified: dict[str, tuple[str, bytes]] = field(default_factory=dict, repr=False)
    _dummy: str | None = field(default=None, repr=False)
    _engine: Any = field(default=None, repr=False)
    _mirrored: int = field(default=0, repr=False)  # MACs given to the engine since its reset

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Users:
        """Read and validate a users file; errors name the file and line."""
        path = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read users file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: users file is not UTF-8 text") from None
        hashes: dict[str, str] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            where = f"{path}:{lineno}"
            if not sep or not name:
                raise ConfigError(
                    f"{where}: expected 'name:hash' (create entries with "
                    f"'fastsocks users add {path} NAME' or 'htpasswd -B {path} NAME')"
                )
            if len(name.encode("utf-8")) > 255:
                raise ConfigError(f"{where}: user name longer than 255 bytes (RFC 1929 limit)")
            if name in hashes:
                raise ConfigError(f"{where}: user {name!r} appears twice")
            problem = _validate_hash(hashed.strip())
            if problem:
                raise ConfigError(f"{where}: user {name!r}: {problem}")
            hashes[name] = hashed.strip()
        return cls(path, hashes, _dummy=dummy_like(list(hashes.values())))

    def __len__(self) -> int:
        return len(self.hashes)

    def _digest(self, username: bytes, password: bytes) -> bytes:
        # Keyed BLAKE2s is a MAC (RFC 7693), at a third of HMAC-SHA256's cost here;
        # each field after its length, as the engine's login_mac makes it.
        return hashlib.blake2s(b"%s%s%s%s" % (len(username).to_bytes(4, "big"), username,
                                              len(password).to_bytes(4, "big"), password),
                               key=self._key).digest()

    def mirror(self, engine: Any) -> None:
        """Let the splice engine answer the logins this cache vouches for, now and later.

        It gets the key and the MACs of the good checks so far
        (``Engine.logins``), and each new one as it is made.  The engine's set
        only grows, while a user's new good check replaces the old one here
        (bcrypt reads 72 bytes of a password: longer ones that differ after
        them all match), so once it holds more than twice the users (and 64)
        it is made again from the cache: bounded by the users file.
        """
        self._engine = engine
        self._mirrored = len(self._verified)
        engine.logins(self._key, [digest for _, digest in self._verified.values()])

    def cached(self, username: bytes, password: bytes) -> bool:
        """True when a recent good check vouches for these credentials (no hashing, no queue)."""
        name = username.decode("utf-8", "surrogateescape")
        hashed = self.hashes.get(name)
        if hashed is None:
            return False
        cached = self._verified.get(name)
        return (cached is not None and cached[0] == hashed
                and hmac.compare_digest(cached[1], self._digest(username, password)))

    async def verify(self, username: bytes, password: bytes) -> bool:
        """True when the credentials match; never blocks the loop."""
        if self.cached(username, password):
            return True
        name = username.decode("utf-8", "surrogateescape")
        hashed = self.hashes.get(name)
        loop = asyncio.get_running_loop()
        pool = hash_pool()
        if hashed is None:
            if self._dummy is None:  # an empty users file: nothing to match
                self._dummy = await loop.run_in_executor(pool, hash_password, b"\0", "bcrypt", 10)
            await loop.run_in_executor(pool, _check_hash, password, self._dummy)
            return False
        ok = await loop.run_in_executor(pool, _check_hash, password, hashed)
        if ok:
            digest = self._digest(username, password)
            self._verified[name] = (hashed, digest)
            if self._engine is not None:
                self._mirrored += 1
                if self._mirrored > 2 * len(self.hashes) + 64:
                    self.mirror(self._engine)
                else:
                    self._engine.add_login(digest)
        return ok


def _rewrite(path: str, name: str, entry: str | None) -> bool:
    """Replace (or remove, when ``entry`` is None) ``name``'s line; atomic."""
    p = Path(path)
    lines = p.read_text(encoding="utf-8").splitlines() if p.exists() else []
    out: list[str] = []
    found = False
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#") and line.partition(":")[0].strip() == name:
            found = True
            if entry is not None:
                out.append(entry)
            continue
        out.append(line)
    if entry is not None and not found:
        out.append(entry)
    directory = str(p.parent) if str(p.parent) else "."
    fd, tmp = tempfile.mkstemp(prefix=".fastsocks-users-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{line}\n" for line in out))
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return found


def set_user(path: str, name: str, password: bytes, scheme: str = "bcrypt", cost: int = 10) -> bool:
    """Add or update ``name`` in the users file; True if it existed."""
    if not name or ":" in name or name != name.strip() or len(name.encode()) > 255:
        raise ValueError("a user name is 1 to 255 bytes, without ':' or surrounding spaces")
    if not password:
        raise ValueError("the password must not be empty")
    if len(password) > 255:
        raise ValueError("the password must be at most 255 bytes (RFC 1929 limit)")
    return _rewrite(path, name, f"{name}:{hash_password(password, scheme, cost)}")


def remove_user(path: str, name: str) -> bool:
    """Remove ``name`` from the users file; True if it was there."""
    return _rewrite(path, name, None)
