"""Kinds of setting values: what each allows, and how each source spells it.

A setting's kind is the one place that knows its values.  Every source
asks the same kind:

* the TOML loader: ``convert(value, base)`` turns what the file says into
  the Settings value or raises ``Invalid`` with what is allowed ("must be
  ..., got ..."); ``load`` does that for one key and files the problem
  under the key's dotted name (kinds of lists and tables file one problem
  per item, ``listen[1]``, ``outbound.users.alice``);
* the command line: ``argparse(flag)`` gives the add_argument keywords
  (type, choices, action), ``from_flag`` turns the parsed value into the
  Settings value;
* ``Settings.validate``: ``validated(value, label)`` checks (and may
  normalise) a value set through the API, raising ConfigError worded for
  the command line ("loop 'x': use auto, uvloop or asyncio");
* ``fastsocks check``: ``render(key, value, settings, unset)`` gives the
  lines that load back to the same value.

This module is the base class and the plumbing they share (the reading of
one file, how values are shown and written); the kinds of single values
are in ``scalars.py``, those of lists and tables (listen, metrics,
limits.users, upstreams, rules, ...) in ``structured.py``.  Config errors name the file, the key and the fix: the
file and the key are added by the loader, the fix is written here.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from typing import Any

__all__ = ["Kind", "Invalid", "Reading", "INVALID", "show", "toml_value", "put", "leaf",
           "cpu_count", "default_workers"]

def cpu_count() -> int:
    """The CPUs this process may run on (its affinity: taskset, cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per CPU where SO_REUSEPORT spreads connections (Linux), else one."""
    return cpu_count() if sys.platform.startswith("linux") else 1


class Invalid(Exception):
    """A file value is not allowed; the message says what is ("must be ..., got ...")."""


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


#: What ``Kind.load`` returns when the value was refused (the problem is filed).
INVALID: Any = _Invalid()


class Reading:
    """One config file being read: its directory, the problems found, the values so far."""

    def __init__(self, base: str) -> None:
        self.base = base  # relative paths in the file start here
        self.problems: list[tuple[str, str]] = []  # (dotted key, message), in order
        self.values: dict[str, Any] = {}  # setting name → value, as loaded so far

    def problem(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def unknown(self, key: str, name: str, allowed: list[str], where: str) -> None:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.problem(key, f"unknown key{hint}; {where} allows {', '.join(allowed)}")


def show(value: Any) -> str:
    """A value as the operator wrote it (TOML-ish), for 'got ...'."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def toml_value(value: Any) -> str:
    """A Python value written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def leaf(key: str) -> str:
    """The last part of a dotted key: "connect" for "timeouts.connect"."""
    return key.rpartition(".")[2]


def put(key: str, value: Any, unset: str = "") -> list[str]:
    """``key = value``, or a comment saying it is not set (and what that means)."""
    if value is None:
        return [f"# {key}: not set{(' (' + unset + ')') if unset else ''}"]
    return [f"{key} = {toml_value(value)}"]


class Kind:
    """Plain text: any string in the file; the base of every kind."""

    #: What a whole-section kind gets when the file has no such section.
    empty: Any = None

    def convert(self, value: Any, base: str) -> Any:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, got {show(value)}")
        return value

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        try:
            return self.convert(value, reading.base)
        except Invalid as exc:
            reading.problem(key, str(exc))
            return INVALID

    def argparse(self, flag: str) -> dict[str, Any]:
        return {}

    def from_flag(self, value: Any) -> Any:
        return value

    def validated(self, value: Any, label: str) -> Any:
        return value

    def dump(self, value: Any) -> Any:
        return value

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        """Lines for ``fastsocks check``; ``key`` is the full dotted key."""
        return put(leaf(key), None if value is None else self.dump(value), unset)
