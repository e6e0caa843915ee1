"""The TOML configuration file, read by the table.

``load_config(path, overrides)`` reads a file into ``Settings``;
``overrides`` (setting names, the flags actually given on the command line)
win over the file.  Every problem is reported, not just the first, each as
``FILE: dotted.key: what is allowed, got VALUE``; unknown keys are errors,
with the nearest known key as a hint.  Relative paths in the file (users,
log.access, gssapi.keytab) are relative to the file.

Which keys exist, in which section, and what each allows is the table's
(``table.py``; deploy/fastsocks.toml is the commented example).  Top-level
keys are read in the file's order, then the sections in the table's order,
each section's keys in the file's order, so problems are listed in an order
the operator can follow.  Reusable for a reload: it keeps no state.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from ..errors import ConfigError
from ..net.address import format_address
from .kinds import INVALID, Reading, show
from .settings import Settings, exposed_listeners
from .table import BY_NAME, COMPOSITES, DEFAULT_LISTEN, SECTIONS, SETTINGS, Setting, section_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_config", "build", "ConfigFileError", "TOP_LEVEL"]


class ConfigFileError(ConfigError):
    """One or more problems in a config file; ``errors`` lists each line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _members(section: str) -> dict[str, Setting]:
    return {s.toml_name: s for s in SETTINGS if section_of(s) == section}


def _whole(section: str) -> Setting | None:
    """The setting that is a whole section ([metrics], [groups], ...), if this one is."""
    found = [s for s in SETTINGS if s.key == section and s.kind.empty is not None]
    return found[0] if found else None


#: What the top level allows: its own keys, then the sections.
TOP_LEVEL = list(_members("")) + [s.name for s in SECTIONS if s.name]


def _store(reading: Reading, setting: Setting, value: Any) -> None:
    if value is not INVALID:
        reading.values[setting.name] = value


def _section(reading: Reading, name: str, table: Mapping[str, Any]) -> None:
    """The keys of one section, each by its setting's kind; then what relates them."""
    members = _members(name)
    for key, value in table.items():
        dotted = f"{name}.{key}"
        if key not in members:
            reading.unknown(dotted, key, list(members), f"[{name}]")
        else:
            _store(reading, members[key], members[key].kind.load(value, dotted, reading))
    for setting in members.values():
        if setting.switch and table and setting.toml_name not in table:
            reading.values[setting.name] = True  # the section's keys turn it on
        if setting.requires and setting.toml_name in table:
            needed, why = setting.requires
            if needed.rpartition(".")[2] not in table:
                reading.problem(needed, why)


def _read(path: str) -> Reading:
    reading = Reading(os.path.dirname(os.path.abspath(path)))
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError([f"{path}: not valid TOML: {exc}"]) from None

    top = _members("")
    for key, value in doc.items():
        if key in top:
            _store(reading, top[key], top[key].kind.load(value, key, reading))
        elif key not in TOP_LEVEL:
            reading.unknown(key, key, TOP_LEVEL, "the top level")
    for section in SECTIONS:
        if not section.name:
            continue
        whole = _whole(section.name)
        value = doc.get(section.name, {} if whole is None else whole.kind.empty)
        if isinstance(value, dict) or (whole is not None and not isinstance(whole.kind.empty, dict)):
            table = value
        else:
            reading.problem(section.name, f"must be a table (a [{section.name}] section), "
                                          f"got {show(value)}")
            table = {}
        if whole is not None:
            _store(reading, whole, whole.kind.load(table, section.name, reading))
        else:
            _section(reading, section.name, table)
    return reading


def build(values: Mapping[str, Any], config_file: str | None = None) -> Settings:
    """Settings from setting values by name (``limits.X`` too); the rest are defaults."""
    fields: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {name: {} for name in COMPOSITES}
    for name, value in values.items():
        head, _, rest = name.partition(".")
        if rest:
            parts[head][rest] = value
        else:
            fields[name] = value
    for head, make in COMPOSITES.items():
        fields[head] = make(**parts[head])
    return Settings(**fields, config_file=config_file)


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the TOML file at ``path``, with ``overrides`` (setting names) on top.

    Raises ConfigFileError (a ConfigError) listing every problem found.
    """
    filename = os.fspath(path)
    reading = _read(filename)
    overrides = dict(overrides or {})
    values = reading.values
    values.update(overrides)
    if not reading.problems and "listen" not in overrides:
        # The safe-by-default rule, worded for the file when the file decides it.
        exposed = exposed_listeners(values.get("listen", BY_NAME["listen"].make_default()),
                                    values.get("users_file"), values.get("allow_open", False),
                                    values.get("gssapi", False))
        if exposed:
            key = "listen" if "listen" in values else \
                f"listen (default {format_address(*DEFAULT_LISTEN)})"
            reading.problem(key, f"refusing to listen on {', '.join(exposed)} without "
                                 "authentication: anyone who can reach it could use this proxy. "
                                 "Set users = \"FILE\" (create one with 'fastsocks users add FILE "
                                 "NAME'), or allow_open = true to run an open proxy knowingly")
    if reading.problems:
        raise ConfigFileError([f"{filename}: {key}: {message}" for key, message in reading.problems])
    settings = build(values, filename)
    try:
        settings.validate()
    except ConfigError as exc:
        raise ConfigFileError([f"{filename}: {exc}"]) from None
    return settings
