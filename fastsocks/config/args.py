"""The ``fastsocks`` flags, made from the table.

``add_options(parser)`` adds one option per setting that has a flag, with
its kind's type or choices and the table's help; ``overrides(args)`` turns
the flags actually given into setting values (every option defaults to
None, so that a flag not given leaves the config file's value alone, and a
flag equal to the built-in default still overrides the file).

The table is in the config file's order; ``--help`` groups the flags the
way an operator looks for them (authentication first, limits and metrics
last), which is ``HELP_ORDER``: an order only, every flag still defined
once in the table (a test checks that the two name the same settings).
"""

from __future__ import annotations

import argparse
from typing import Any

from .table import BY_NAME, SECTIONS, SETTINGS, Setting, section_of

__all__ = ["HELP_ORDER", "add_options", "overrides"]

HELP_ORDER = (
    "listen", "users_file", "gssapi", "gssapi_keytab", "gssapi_principal",
    "gssapi_min_protection", "allow_open", "protocols", "socks4_unauthenticated_from",
    "handshake_timeout", "connect_timeout",
    "idle_timeout", "drain_timeout", "bind_timeout", "bind_address", "udp_public_address",
    "udp_reassembly", "proxy_protocol_from", "proxy_protocol_timeout", "outbound_address",
    "outbound_interface", "dns_resolver", "dns_servers", "workers", "loop", "relay", "relay_bulk",
    "log_level", "access_log", "access_log_format", "limits.connections", "limits.connections_per_ip",
    "limits.connections_per_user", "limits.handshake_rate_per_ip",
    "limits.bandwidth_per_connection", "limits.bandwidth_per_user", "limits.handshakes",
    "limits.handshake_pressure_timeout", "limits.password_checks", "limits.auth_failures_per_ip",
    "metrics_listen",
)


def _dest(setting: Setting) -> str:
    return setting.name.replace(".", "_")


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting with a flag; a section with a title is its own --help group."""
    groups = {section.name: parser.add_argument_group(section.title)
              for section in SECTIONS if section.title}
    for name in HELP_ORDER:
        setting = BY_NAME[name]
        options: dict[str, Any] = {"dest": _dest(setting), "help": setting.help,
                                   **setting.kind.argparse(setting.flags[0])}
        if setting.metavar:
            options["metavar"] = setting.metavar
        groups.get(section_of(setting), parser).add_argument(*setting.flags, **options)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The setting values of the flags actually given, by setting name (``limits.X`` too)."""
    given: dict[str, Any] = {}
    for setting in SETTINGS:
        value = getattr(args, _dest(setting), None) if setting.flags else None
        if value is not None:
            given[setting.name] = setting.kind.from_flag(value)
    for setting in SETTINGS:
        if setting.implies and given.get(setting.name):
            given[setting.implies] = True  # --gssapi-keytab implies --gssapi
    return given
