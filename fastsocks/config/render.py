"""``fastsocks check``: validate a config file and print the effective configuration.

``render(settings)`` writes every setting of the table, section by section,
as TOML that loads back to the same settings (unset ones as comments that
say what unset means); ``check_main`` is the command: 0 and the effective
configuration, or 2 and every problem, plus warnings for what is legal but
probably not meant.
"""

from __future__ import annotations

import argparse
import sys

from ..control.auth import Users
from ..errors import ConfigError
from .settings import Settings, get
from .table import SECTIONS, SETTINGS, section_of
from .toml import ConfigFileError, load_config

__all__ = ["render", "check_main"]


def render(settings: Settings) -> str:
    """The effective configuration as TOML (loads back to the same settings)."""
    lines: list[str] = []
    if settings.config_file:
        lines.append(f"# effective configuration, from {settings.config_file}")
    for section in SECTIONS:
        if section.header:
            lines += ["", section.header]
        for setting in SETTINGS:
            if section_of(setting) == section.name:
                lines += setting.kind.render(setting.key, get(settings, setting.name), settings,
                                             setting.unset)
    return "\n".join(lines) + "\n"


def check_main(argv: list[str]) -> int:
    """``fastsocks check CONFIG``: 0 and the effective config, or 2 and the errors."""
    parser = argparse.ArgumentParser(
        prog="fastsocks check",
        description="Validate a TOML config file and print the effective configuration.")
    parser.add_argument("config", metavar="CONFIG", help="the TOML config file")
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config)
        known: set[str] | None = None
        if settings.users_file:
            try:
                known = set(Users.load(settings.users_file).hashes)
            except ConfigError as exc:
                raise ConfigFileError([f"{args.config}: users: {exc}"]) from None
    except ConfigFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"fastsocks check: {args.config}: {len(exc.errors)} "
              f"error{'s' if len(exc.errors) != 1 else ''}", file=sys.stderr)
        return 2
    for warning in _warnings(settings, known):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    sys.stdout.write(render(settings))
    return 0


def _warnings(settings: Settings, known: set[str] | None) -> list[str]:
    """Legal but probably not meant: users that cannot match."""
    named = [(f"groups.{group}[{i}]", user) for group, members in settings.groups.items()
             for i, user in enumerate(members)]
    named += [(f"rules[{rule.index}].users[{i}]", user) for rule in settings.rules
              for i, user in enumerate(rule.spec.get("users", ()))]
    if known is None:
        uses = [f"rules[{rule.index}]" for rule in settings.rules
                if "users" in rule.spec or "groups" in rule.spec]
        if uses:
            return [f"{', '.join(uses)}: users and groups never match without authentication "
                    "(no users file is set)"]
        return []
    return [f"{key}: user {user!r} is not in the users file {settings.users_file}"
            for key, user in named if user not in known]
