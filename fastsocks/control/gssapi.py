"""GSSAPI authentication for SOCKS5 (RFC 1961) on python-gssapi.

``Acceptor`` is the server-wide part: the acceptor credentials from the
keytab, the minimum protection level, and how a Kerberos principal becomes a
user name.  ``Conversation`` is one client's exchange after the server chose
method X'01':

1. security context establishment (RFC 1961 §3): MTYP 1 tokens both ways
   until ``gss_accept_sec_context`` completes;
2. protection-level sub-negotiation (§4): the client sends its level as one
   octet wrapped without confidentiality (MTYP 2); the server answers with
   its choice the same way, or aborts (X'01' X'FF', §3.8) when the level is
   below the configured minimum;
3. per-message protection (§5): from then on every byte either way travels
   in MTYP 3 messages, wrapped with confidentiality at level 2 and without
   it at level 1 — the SOCKS request and reply included.  Under UDP
   ASSOCIATE each datagram either way is one such message: the whole
   RFC 1928 §7 datagram (header and data) wrapped as one token, as Dante's
   client sends and expects them (``unwrap_datagram``/``wrap_datagram``).

Levels: 1 is "required per-message integrity", 2 "required integrity and
confidentiality", 3 "selective per-message" (the server's local choice:
this server answers 3 with 2, since it always encrypts when it can).  Level
0, "clear", is not in RFC 1961: it is Dante's extension (its clients offer
it with ``gssapi.encryption: clear``), where only the authentication is
GSSAPI and the request and data then flow unwrapped — so the splice engine
can relay them.  It is accepted only when ``min_protection = "clear"``.

Every acceptor step is CPU work on a keytab read from local disk (0.7 ms per
AP-REQ measured here), so the exchange runs on the event loop; nothing in it
waits on the network.  A failure raises ``GssFailure`` with a reason for the
log — the GSS status text, never a token.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .. import codec
from ..errors import ConfigError, ProtocolError

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("fastsocks.gssapi")

__all__ = ["Acceptor", "Conversation", "GssFailure", "PROTECTION_LEVELS", "load_gssapi",
           "acceptor_from_settings"]

#: Configuration names of the protection levels, by RFC 1961 §4.3 number
#: (0 is Dante's "clear", outside the RFC).
PROTECTION_LEVELS = {"clear": 0, "integrity": 1, "confidentiality": 2}
_LEVEL_NAMES = {0: "clear", 1: "integrity", 2: "confidentiality", 3: "selective"}

_NEED_DATA = codec.NEED_DATA
_MTYP_AUTH = 0x01
_MTYP_PROTECTION = 0x02
_MTYP_DATA = 0x03
_MTYP_ABORT = 0xFF
_DATAGRAM_MAX = 65507  # the largest UDP payload over IPv4 (65535 - 20 - 8)

# Conversation states.
_CONTEXT = 0  # MTYP 1 tokens until the context is complete
_PROTECTION = 1  # waiting for the client's MTYP 2 level
_WRAPPED = 2  # level 1 or 2: MTYP 3 messages both ways
_CLEAR = 3  # level 0 (Dante): plain bytes both ways


class GssFailure(Exception):
    """The GSSAPI exchange failed; ``str()`` is the reason to log (never a token)."""


def _gss_text(exc: BaseException) -> str:
    """The GSS major and minor status messages of a python-gssapi error, one line."""
    try:
        text = exc.gen_message()  # type: ignore[attr-defined]
    except Exception:  # not a GSSError, or the status cannot be rendered
        text = str(exc)
    return " ".join(str(text).split())


def _level_name(level: int) -> str:
    return f"{_LEVEL_NAMES.get(level, 'unknown')} ({level})"


def load_gssapi() -> Any:
    """python-gssapi, or a ConfigError that says how to install it."""
    try:
        import gssapi
        import gssapi.raw
    except ImportError as exc:
        raise ConfigError(
            f"GSSAPI authentication needs python-gssapi, which did not import ({exc}): install "
            "it with pip install 'fastsocks[gssapi]' (it builds against MIT Kerberos: on Debian "
            "apt-get install libkrb5-dev first)") from None
    return gssapi


class Acceptor:
    """The server's side of GSSAPI: credentials, minimum level, principal → user."""

    __slots__ = ("gssapi", "raw", "credentials", "min_level", "principal_map", "realm")

    def __init__(self, keytab: str | None, principal: str | None, min_protection: str,
                 principal_map: dict[str, str] | None = None) -> None:
        gssapi = load_gssapi()
        self.gssapi = gssapi
        self.raw = gssapi.raw
        self.min_level = PROTECTION_LEVELS[min_protection]
        self.principal_map = dict(principal_map or {})
        name = None
        if principal:
            name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
        store = None
        if keytab:
            if not os.access(keytab, os.R_OK):
                raise ConfigError(f"gssapi keytab {keytab!r} is not readable by this process: "
                                  "give the path of the service's keytab (ktutil or kadmin "
                                  "ktadd makes one)")
            store = {"keytab": keytab}
        try:
            self.credentials = gssapi.Credentials(name=name, usage="accept", store=store)
        except gssapi.exceptions.GSSError as exc:
            where = keytab or os.environ.get("KRB5_KTNAME") or "the default keytab"
            who = f"principal {principal!r}" if principal else "any principal"
            raise ConfigError(f"gssapi: no acceptor credentials for {who} in {where}: "
                              f"{_gss_text(exc)}") from None
        # Principals of the service's own realm map to their bare name
        # ("alice@EXAMPLE.COM" → "alice"); one from another realm keeps its
        # realm, so that a trusted realm's "alice" is not this realm's.
        # (The service's realm is the one its ticket names, known per context.)
        self.realm = principal.rpartition("@")[2] if principal and "@" in principal else ""

    def user_name(self, principal: str, service_realm: str) -> str:
        """The user name rules, limits, logs and metrics see for ``principal``."""
        mapped = self.principal_map.get(principal)
        if mapped is not None:
            return mapped
        name, at, realm = principal.rpartition("@")
        if at and name and realm and realm in (service_realm, self.realm):
            return name
        return principal

    def conversation(self) -> Conversation:
        return Conversation(self)


class Conversation:
    """One client's RFC 1961 exchange; bytes in, bytes out, no I/O.

    ``receive_data()`` buffers what the client sent; ``advance()`` handles
    every complete message it may (context tokens, the protection level,
    data messages up to the SOCKS request) and returns what to send back and
    the plain bytes unwrapped so far.  ``wrap()`` protects what the server
    sends, ``unwrap_message()`` what the client sent, once the level is set;
    ``wrap_datagram()`` and ``unwrap_datagram()`` do the same for UDP.
    """

    __slots__ = ("acceptor", "framer", "context", "state", "level", "principal", "user",
                 "chunk", "_encrypt")

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.framer = codec.GssFramer()
        self.context = acceptor.gssapi.SecurityContext(creds=acceptor.credentials, usage="accept")
        self.state = _CONTEXT
        self.level = -1  # the agreed level, once there is one
        self.principal = ""  # "alice@EXAMPLE.COM", once authenticated
        self.user = ""  # the mapped user name
        self.chunk = 0  # the most plain bytes one MTYP 3 message carries
        self._encrypt = False

    @property
    def established(self) -> bool:
        """The context and the protection level are agreed: the request may come."""
        return self.state >= _WRAPPED

    @property
    def wraps(self) -> bool:
        """Data travels in MTYP 3 messages (levels 1 and 2, not Dante's clear)."""
        return self.state == _WRAPPED

    @property
    def clear(self) -> bool:
        """Dante's level 0 was agreed: from here the bytes are plain SOCKS."""
        return self.state == _CLEAR

    @property
    def level_name(self) -> str:
        return _LEVEL_NAMES.get(self.level, "none")

    def receive_data(self, data: bytes) -> None:
        self.framer.receive_data(data)

    def advance(self) -> tuple[bytes, bytes]:
        """(bytes to send, plain bytes received); raises GssFailure."""
        out: list[bytes] = []
        plain: list[bytes] = []
        while True:
            if self.state == _CLEAR:
                rest = self.framer.trailing_data
                if rest:
                    self.framer = codec.GssFramer()  # empties it
                    plain.append(rest)
                break
            try:
                message = self.framer.next_message()
            except ProtocolError as exc:
                raise GssFailure(f"bad GSSAPI message: {exc}") from None
            if message is _NEED_DATA:
                break
            mtyp = message.mtyp
            if mtyp == _MTYP_ABORT:
                raise GssFailure("the client aborted (RFC 1961 MTYP X'FF')")
            if self.state == _CONTEXT:
                if mtyp != _MTYP_AUTH:
                    raise GssFailure(f"GSSAPI message type {mtyp} during context establishment, "
                                     "expected 1")
                token = self._step(message.token)
                if token:
                    out.append(codec.gss_frame(_MTYP_AUTH, token))
            elif self.state == _PROTECTION:
                if mtyp != _MTYP_PROTECTION:
                    raise GssFailure(f"GSSAPI message type {mtyp} where the protection level "
                                     "(type 2) was expected")
                out.append(self._protection(message.token))
            else:
                if mtyp != _MTYP_DATA:
                    raise GssFailure(f"GSSAPI message type {mtyp} after the protection level, "
                                     "expected 3")
                plain.append(self.unwrap_message(message.token))
        return b"".join(out), b"".join(plain)

    # RFC 1961 §3.4-§3.7: the token exchange.
    def _step(self, token: bytes) -> bytes:
        if not token:
            raise GssFailure("empty context token")
        context = self.context
        try:
            reply = context.step(token)
            # python-gssapi keeps a failure that came with an error token
            # and raises it on the next use of the context: here.  The token
            # is not sent: RFC 1961 §3.8 answers any failure with the abort.
            complete = context.complete
        except self.acceptor.gssapi.exceptions.GSSError as exc:
            raise GssFailure(f"security context failed: {_gss_text(exc)}") from None
        if complete:
            self.state = _PROTECTION
            try:
                self.principal = str(context.initiator_name)
                service = str(context.target_name)
            except self.acceptor.gssapi.exceptions.GSSError as exc:
                raise GssFailure(f"security context has no names: {_gss_text(exc)}") from None
            self.user = self.acceptor.user_name(self.principal, service.rpartition("@")[2])
        return reply or b""

    # RFC 1961 §4.3-§4.4: one octet, wrapped with conf_req FALSE, each way.
    def _protection(self, token: bytes) -> bytes:
        raw = self.acceptor.raw
        try:
            unwrapped = raw.unwrap(self.context, token)
        except self.acceptor.gssapi.exceptions.GSSError as exc:
            raise GssFailure(f"protection level message did not unwrap: {_gss_text(exc)}") from None
        if len(unwrapped.message) != 1:
            raise GssFailure(f"protection level message of {len(unwrapped.message)} octets, "
                             "expected 1")
        asked = unwrapped.message[0]
        if asked > 3:
            raise GssFailure(f"unknown protection level {asked}")
        flags = self.context.actual_flags
        conf = self.acceptor.gssapi.RequirementFlag.confidentiality in flags
        chosen = asked
        if asked == 3:  # selective: the server's choice, the strongest it has
            chosen = 2 if conf else 1
        if chosen < self.acceptor.min_level:
            raise GssFailure(f"{self.user!r} asked for protection {_level_name(asked)}, below "
                             f"the minimum {_level_name(self.acceptor.min_level)}")
        if chosen == 2 and not conf:
            raise GssFailure("confidentiality asked for, but the context does not offer it")
        try:
            answer = raw.wrap(self.context, bytes((chosen,)), False).message
            if chosen:
                self.chunk = raw.wrap_size_limit(self.context, codec.GSS_TOKEN_MAX, chosen == 2)
        except self.acceptor.gssapi.exceptions.GSSError as exc:
            raise GssFailure(f"cannot wrap the protection level: {_gss_text(exc)}") from None
        self.level = chosen
        self._encrypt = chosen == 2
        self.state = _WRAPPED if chosen else _CLEAR
        return codec.gss_frame(_MTYP_PROTECTION, answer)

    # RFC 1961 §5: per-message protection.
    def unwrap_message(self, token: bytes) -> bytes:
        """The plain bytes of one MTYP 3 token from the client; raises GssFailure."""
        try:
            result = self.acceptor.raw.unwrap(self.context, token)
        except self.acceptor.gssapi.exceptions.GSSError as exc:
            raise GssFailure(f"data message did not unwrap: {_gss_text(exc)}") from None
        if self._encrypt and not result.encrypted:
            # Level 2 says conf_req_flag MUST be TRUE: a plain message here
            # is a downgrade, not a choice.
            raise GssFailure("unencrypted data message under confidentiality")
        return result.message

    def wrap(self, data: bytes) -> bytes:
        """``data`` as MTYP 3 messages (as is under clear); raises GssFailure."""
        if self.state != _WRAPPED or not data:
            return data
        wrap = self.acceptor.raw.wrap
        context, encrypt, chunk = self.context, self._encrypt, self.chunk
        try:
            if len(data) <= chunk:
                return codec.gss_frame(_MTYP_DATA, wrap(context, data, encrypt).message)
            frame = codec.gss_frame
            return b"".join(frame(_MTYP_DATA, wrap(context, data[i:i + chunk], encrypt).message)
                            for i in range(0, len(data), chunk))
        except self.acceptor.gssapi.exceptions.GSSError as exc:
            raise GssFailure(f"cannot wrap data: {_gss_text(exc)}") from None

    # RFC 1961 §5 for UDP: one MTYP 3 message per datagram, whole.
    def unwrap_datagram(self, datagram: bytes) -> bytes | None:
        """The plain UDP request in one client datagram, or None to drop it.

        A datagram is one message, nothing before or after it; one that is
        malformed, does not unwrap (another context, garbage, a replay the
        context detects) or is unencrypted under confidentiality is dropped
        alone: UDP has no way to answer, and the association goes on.
        A context with sequence checking (Dante asks for it on TCP only)
        also refuses the datagram after a lost one and a late one:
        python-gssapi raises for GSS_S_GAP_TOKEN, GSS_S_UNSEQ_TOKEN and
        GSS_S_OLD_TOKEN without returning the message, so those are dropped.
        """
        framer = codec.GssFramer()
        framer.receive_data(datagram)
        try:
            message = framer.next_message()
        except ProtocolError as exc:
            log.debug("GSSAPI datagram dropped: %s", exc)
            return None
        if message is _NEED_DATA or message.mtyp != _MTYP_DATA or framer.trailing_data:
            log.debug("GSSAPI datagram dropped: not exactly one message of type 3")
            return None
        try:
            return self.unwrap_message(message.token)
        except GssFailure as exc:
            log.debug("GSSAPI datagram dropped: %s", exc)
            return None

    def wrap_datagram(self, datagram: bytes) -> bytes | None:
        """One reply datagram as one MTYP 3 message, or None when it cannot be."""
        try:
            token = self.acceptor.raw.wrap(self.context, datagram, self._encrypt).message
        except self.acceptor.gssapi.exceptions.GSSError as exc:
            log.debug("GSSAPI reply datagram dropped: cannot wrap: %s", _gss_text(exc))
            return None
        # One datagram, one message: a reply that no longer fits (the
        # token adds up to ~60 octets) cannot be split, so it is dropped.
        if 4 + len(token) > _DATAGRAM_MAX:
            log.debug("GSSAPI reply datagram of %d octets dropped: wrapped it is %d octets, "
                      "over %d", len(datagram), 4 + len(token), _DATAGRAM_MAX)
            return None
        return codec.gss_frame(_MTYP_DATA, token)


def acceptor_from_settings(settings: Settings) -> Acceptor | None:
    """The server's Acceptor, or None when GSSAPI is off; ConfigError if unusable."""
    if not settings.gssapi:
        return None
    return Acceptor(settings.gssapi_keytab, settings.gssapi_principal,
                    settings.gssapi_min_protection, settings.gssapi_principal_map)
