"""Settings: one table, and the command line, the config file and ``check`` made from it.

The modules, each for one thing (the table is the only place a setting is
defined; the others are generated from it):

* ``table.py``: the table of settings (name, kind, default, TOML key, flag,
  help, reloadable) and the sections of the config file;
* ``kinds.py`` (the interface), ``scalars.py``, ``structured.py``: what
  values each kind allows and how the file, the command line, ``validate``
  and ``check`` spell them;
* ``settings.py``: the Settings object, its defaults and ``validate``;
* ``toml.py``: the TOML loader (``load_config``);
* ``render.py``: ``fastsocks check`` and the effective configuration;
* ``args.py``: the ``fastsocks`` flags.

Dependencies go one way: config uses control (rules, limits, auth) and net;
nothing there imports config.
"""

from __future__ import annotations

from ..net.address import is_loopback_host, parse_listen
from .kinds import cpu_count, default_workers
from .scalars import MIN_PROXY_PROTOCOL_TIMEOUT
from .render import check_main, render
from .settings import Settings
from .structured import DEFAULT_METRICS_LISTEN
from .table import DEFAULT_LISTEN, SETTINGS, Setting, not_reloadable
from .toml import ConfigFileError, build, load_config

__all__ = ["Settings", "load_config", "build", "render", "check_main", "ConfigFileError",
           "DEFAULT_LISTEN", "DEFAULT_METRICS_LISTEN", "MIN_PROXY_PROTOCOL_TIMEOUT", "SETTINGS",
           "Setting", "not_reloadable", "cpu_count", "default_workers", "parse_listen",
           "is_loopback_host"]
