"""Exceptions shared by both codec implementations and the control plane."""

from __future__ import annotations

__all__ = ["ProtocolError", "ConfigError"]


class ProtocolError(Exception):
    """Malformed or unsupported SOCKS input.

    The only exception either codec lets escape.  ``reply_code`` is the SOCKS5
    reply (RFC 1928 §6) the server should send before closing, when the
    conversation has reached a point where a reply can be sent at all;
    ``ServerCodec.send_error()`` turns it into the right bytes for the phase.
    """

    def __init__(self, message: str, reply_code: int = 0x01) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class ConfigError(Exception):
    """A configuration or users-file error, worded for the operator."""
