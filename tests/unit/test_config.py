"""The TOML config file: every key, every error, `fastsocks check`, flags over the file."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from fastsocks.runtime import cli
from fastsocks.control.auth import hash_password
from fastsocks.config import (DEFAULT_METRICS_LISTEN, SETTINGS, ConfigFileError, Settings,
                              cpu_count, load_config, render)
from fastsocks.errors import ConfigError
from fastsocks.control.rules import RULE_KEYS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "fastsocks.toml"


def write(tmp_path: Path, text: str, name: str = "fastsocks.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def users_file(directory: Path, *names: str) -> Path:
    path = directory / "users.txt"
    path.write_text("".join(f"{n}:{hash_password(b'pw', 'bcrypt', 4)}\n" for n in names))
    return path


def comparable(settings: Settings) -> dict[str, Any]:
    """Settings as plain data (compiled rules by their spec)."""
    data = dataclasses.asdict(dataclasses.replace(settings, rules=[]))
    data["rules"] = [rule.spec for rule in settings.rules]
    data.pop("config_file")
    return data


# -- every key ---------------------------------------------------------------------------


FULL = """
listen = ["127.0.0.1:1081", "[::1]:1082"]
users = "users.txt"
allow_open = true
workers = 3
loop = "asyncio"
relay = "protocol"
backlog = 128

[timeouts]
handshake = 4
connect = 5.5
idle = 0
bind = 7

[bind]
address = "127.0.0.3"

[udp]
public_address = "2001:db8::7"
reassembly = false

[log]
level = "debug"
access = "logs/access.log"
access_format = "json"

[metrics]
enabled = true
listen = "127.0.0.1:9999"

[groups]
admins = ["alice", "bob"]
empty = []

[[rules]]
action = "deny"
src = ["192.0.2.0/24", "2001:db8::/32"]
dst = ["10.0.0.0/8", "::ffff:172.16.0.0/108"]
ports = [25, "135-139"]
commands = ["connect", "udp"]

[[rules]]
action = "allow"
domain = ["Example.COM.", "*.example.org"]
users = ["carol"]
groups = ["admins"]
commands = ["bind"]
"""


def test_every_key(tmp_path):
    path = write(tmp_path, FULL)
    settings = load_config(path)
    assert settings.config_file == str(path)
    assert settings.listen == [("127.0.0.1", 1081), ("::1", 1082)]
    assert settings.users_file == str(tmp_path / "users.txt")  # relative to the file
    assert settings.allow_open is True
    assert settings.workers == 3
    assert settings.loop == "asyncio"
    assert settings.relay == "protocol"
    assert settings.backlog == 128
    assert (settings.handshake_timeout, settings.connect_timeout, settings.idle_timeout,
            settings.bind_timeout) == (4.0, 5.5, 0.0, 7.0)
    assert settings.bind_address == "127.0.0.3"
    assert settings.udp_public_address == "2001:db8::7"
    assert settings.udp_reassembly is False
    assert settings.log_level == "debug"
    assert settings.access_log == str(tmp_path / "logs" / "access.log")
    assert settings.access_log_format == "json"
    assert settings.metrics_listen == "127.0.0.1:9999"
    assert settings.groups == {"admins": ["alice", "bob"], "empty": []}
    assert [rule.spec for rule in settings.rules] == [
        {"action": "deny", "src": ["192.0.2.0/24", "2001:db8::/32"],
         "dst": ["10.0.0.0/8", "172.16.0.0/12"], "ports": [25, "135-139"],
         "commands": ["connect", "udp"]},
        {"action": "allow", "domain": ["example.com", "*.example.org"], "users": ["carol"],
         "groups": ["admins"], "commands": ["bind"]},
    ]
    assert [rule.index for rule in settings.rules] == [0, 1]
    assert settings.rules[1].allow and not settings.rules[0].allow


def test_empty_file_is_the_defaults(tmp_path):
    settings = load_config(write(tmp_path, "# nothing\n"))
    assert comparable(settings) == comparable(Settings())


def test_workers_zero_is_one_per_cpu(tmp_path):
    assert load_config(write(tmp_path, "workers = 0\n")).workers == cpu_count()


def test_listen_as_one_string(tmp_path):
    assert load_config(write(tmp_path, 'listen = "127.0.0.2:0"\n')).listen == [("127.0.0.2", 0)]


def test_absolute_paths_and_stdout_access_log(tmp_path):
    users = users_file(tmp_path, "alice")
    settings = load_config(write(tmp_path, f'users = "{users}"\n[log]\naccess = "-"\n'))
    assert settings.users_file == str(users)
    assert settings.access_log == "-"


@pytest.mark.parametrize("text, expected", [
    ("[metrics]\nenabled = true\n", DEFAULT_METRICS_LISTEN),
    ('[metrics]\nlisten = "127.0.0.1:9300"\n', "127.0.0.1:9300"),
    ('[metrics]\nenabled = false\nlisten = "127.0.0.1:9300"\n', None),
    ("[metrics]\n", None),
    ("", None),
])
def test_metrics_table(tmp_path, text, expected):
    assert load_config(write(tmp_path, text)).metrics_listen == expected


# -- every error names the file and the key ---------------------------------------------------


ERRORS = [
    # (file content, dotted key, words the message must contain)
    ("listen = []", "listen", ["at least one"]),
    ('listen = ["nope"]', "listen[0]", ["HOST:PORT"]),
    ('listen = ["127.0.0.1:1080", 5]', "listen[1]", ['"HOST:PORT"', "got 5"]),
    ('listen = "::1:1080"', "listen", ["brackets"]),
    ('listen = ["127.0.0.1:99999"]', "listen[0]", ["0 to 65535"]),
    ("users = 7", "users", ["file path", "got 7"]),
    ('users = ""', "users", ["file path"]),
    ('allow_open = "yes"', "allow_open", ["true or false", 'got "yes"']),
    ("workers = -1", "workers", ["0 to 1024", "got -1"]),
    ("workers = 2.5", "workers", ["whole number", "got 2.5"]),
    ('loop = "tokio"', "loop", ['"auto", "uvloop", "asyncio"', 'got "tokio"']),
    ('relay = "fast"', "relay", ['"splice"', 'got "fast"']),
    ('relay_bulk = "zero-copy"', "relay_bulk", ['"auto", "splice", "copy"', 'got "zero-copy"']),
    ("backlog = 0", "backlog", ["1 to 65535"]),
    ("[timeouts]\nconnect = -1", "timeouts.connect",
     ["must be a positive number of seconds, got -1"]),
    ("[timeouts]\nhandshake = 0", "timeouts.handshake", ["positive number of seconds, got 0"]),
    ("[timeouts]\nbind = true", "timeouts.bind", ["positive number of seconds, got true"]),
    ("[timeouts]\nidle = -5", "timeouts.idle", ["0 (never) or a positive number", "got -5"]),
    ("[timeouts]\nidle = nan", "timeouts.idle", ["got nan"]),
    ("[timeouts]\nconnect = inf", "timeouts.connect", ["got inf"]),
    ('[timeouts]\nconnect = "10s"', "timeouts.connect", ['got "10s"']),
    ("[timeouts]\nconect = 3", "timeouts.conect", ["unknown key", "'connect'", "handshake"]),
    ("timeouts = 5", "timeouts", ["[timeouts] section"]),
    ('[bind]\naddress = "example.com"', "bind.address", ["IPv4 or IPv6", 'got "example.com"']),
    ("[bind]\ntimeout = 3", "bind.timeout", ["unknown key", "address"]),
    ('[udp]\npublic_address = "1.2.3"', "udp.public_address", ["IPv4 or IPv6"]),
    ('[udp]\nreassembly = "no"', "udp.reassembly", ["true or false"]),
    ('[log]\nlevel = "loud"', "log.level", ['"debug", "info", "warning", "error"', 'got "loud"']),
    ("[log]\naccess = 1", "log.access", ['"-" for standard output', "got 1"]),
    ('[log]\naccess_format = "xml"', "log.access_format", ['"text", "json"', 'got "xml"']),
    ('[log]\nformat = "json"', "log.format", ["unknown key", "access_format"]),
    ('[metrics]\nlisten = "localhost"', "metrics.listen", ["HOST:PORT"]),
    ('[metrics]\nlisten = 9180', "metrics.listen", ['"HOST:PORT"', "got 9180"]),
    ('[metrics]\nenabled = "on"', "metrics.enabled", ["true or false"]),
    ('[metrics]\nport = 9180', "metrics.port", ["unknown key", "enabled, listen"]),
    ('[groups]\nops = "alice"', "groups.ops", ["list of user names", 'got "alice"']),
    ('[groups]\nops = ["alice", 3]', "groups.ops[1]", ["user name", "got 3"]),
    ('alow_open = true', "alow_open", ["unknown key", "'allow_open'", "the top level"]),
    ('rules = "deny all"', "rules", ["[[rules]]"]),
    ("[[rules]]\nsrc = []", "rules[0].action", ["missing", '"allow" or "deny"']),
    ('[[rules]]\naction = "permit"', "rules[0].action", ['"allow" or "deny"', 'got "permit"']),
    ('[[rules]]\naction = "deny"\nsrc = []', "rules[0].src", ["must not be empty"]),
    ('[[rules]]\naction = "deny"\nsrc = ["banana"]', "rules[0].src[0]", ["CIDR", 'got "banana"']),
    ('[[rules]]\naction = "deny"\ndst = ["10.0.0.1/8"]', "rules[0].dst[0]",
     ["host bits", '"10.0.0.0/8"']),
    ('[[rules]]\naction = "deny"\ndst = [10]', "rules[0].dst[0]", ["CIDR string", "got 10"]),
    ('[[rules]]\naction = "deny"\ndst = {a = 1}', "rules[0].dst", ["list of CIDRs"]),
    ('[[rules]]\naction = "deny"\ndomain = ["a*b.com"]', "rules[0].domain[0]",
     ['"*.example.com"', 'got "a*b.com"']),
    ('[[rules]]\naction = "deny"\ndomain = ["*"]', "rules[0].domain[0]", ['got "*"']),
    ('[[rules]]\naction = "deny"\ndomain = ["10.0.0.1"]', "rules[0].domain[0]",
     ["IP address", "dst"]),
    ('[[rules]]\naction = "deny"\ndomain = ["' + "a" * 64 + '.com"]', "rules[0].domain[0]",
     ["domain name"]),
    ('[[rules]]\naction = "deny"\nports = [70000]', "rules[0].ports[0]", ["0-65535", "got 70000"]),
    ('[[rules]]\naction = "deny"\nports = ["90-80"]', "rules[0].ports[0]", ["backwards", '"80-90"']),
    ('[[rules]]\naction = "deny"\nports = ["http"]', "rules[0].ports[0]", ['"LOW-HIGH"']),
    ('[[rules]]\naction = "deny"\nports = [true]', "rules[0].ports[0]", ["got true"]),
    ('[[rules]]\naction = "deny"\nusers = [""]', "rules[0].users[0]", ["user name"]),
    ('[groups]\nadmins = ["a"]\n[[rules]]\naction = "deny"\ngroups = ["ops"]', "rules[0].groups[0]",
     ["defined in [groups]", "admins", 'got "ops"']),
    ('[[rules]]\naction = "deny"\ncommands = ["associate"]', "rules[0].commands[0]",
     ['"connect", "bind", "udp" or "http"', 'got "associate"']),
    ('[[rules]]\naction = "deny"\ndts = ["1.2.3.4/32"]', "rules[0].dts",
     ["unknown key", "'dst'", "domain"]),
    ('[[rules]]\naction = "allow"\n[[rules]]\naction = "deny"\nports = [-1]', "rules[1].ports[0]",
     ["got -1"]),
    ('listen = ["0.0.0.0:1080"]', "listen", ["without authentication", "users", "allow_open"]),
]


@pytest.mark.parametrize("text, key, words", ERRORS, ids=[e[1] + ":" + str(i) for i, e in enumerate(ERRORS)])
def test_error_names_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    errors = info.value.errors
    assert isinstance(info.value, ConfigError)
    prefix = f"{path}: {key}: "
    matching = [line for line in errors if line.startswith(prefix)]
    assert matching, f"no error starting with {prefix!r}: {errors}"
    for word in words:
        assert word in matching[0], (word, matching[0])


def test_all_errors_are_reported_at_once(tmp_path):
    path = write(tmp_path, '[timeouts]\nconnect = -1\nidle = -1\n[log]\nlevel = "x"\n'
                           '[[rules]]\naction = "deny"\ndst = ["x"]\n')
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    keys = [line.split(": ")[1] for line in info.value.errors]
    assert keys == ["timeouts.connect", "timeouts.idle", "log.level", "rules[0].dst[0]"]


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, 'listen = ["127.0.0.1:1080"]\n[timeouts]\nconnect = = 3\n')
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    [line] = info.value.errors
    assert line.startswith(f"{path}: not valid TOML: ")
    assert "line 3" in line


def test_missing_file(tmp_path):
    with pytest.raises(ConfigFileError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.errors == [f"{tmp_path / 'absent.toml'}: cannot read the config file: "
                                 "No such file or directory"]


def test_exposed_listener_is_fine_with_users_or_allow_open(tmp_path):
    users = users_file(tmp_path, "alice")
    a = load_config(write(tmp_path, f'listen = ["0.0.0.0:0"]\nusers = "{users}"\n', "a.toml"))
    b = load_config(write(tmp_path, 'listen = ["0.0.0.0:0"]\nallow_open = true\n', "b.toml"))
    assert a.listen == b.listen == [("0.0.0.0", 0)]


# -- the command line over the file -----------------------------------------------------------------


def settings_from(argv: list[str]) -> Settings:
    return cli._settings(cli._serve_parser().parse_args(argv))


def test_flags_override_the_file(tmp_path):
    users = users_file(tmp_path, "alice")
    path = write(tmp_path, FULL.replace('users = "users.txt"', f'users = "{users}"'))
    from_file = settings_from(["--config", str(path)])
    assert comparable(from_file) == comparable(load_config(path))
    overridden = settings_from([
        "--config", str(path), "--listen", "127.0.0.9:0", "--connect-timeout", "2",
        "--idle-timeout", "9", "--loop", "uvloop", "--relay", "auto", "--workers", "1",
        "--log-level", "warning", "--no-udp-reassembly", "--bind-address", "127.0.0.4",
        "--access-log-format", "text",
    ])
    assert overridden.listen == [("127.0.0.9", 0)]
    assert overridden.connect_timeout == 2.0 and overridden.idle_timeout == 9.0
    assert (overridden.loop, overridden.relay, overridden.workers) == ("uvloop", "auto", 1)
    assert overridden.log_level == "warning"
    assert overridden.bind_address == "127.0.0.4"
    assert overridden.access_log_format == "text"
    # What no flag named stays as the file says.
    assert overridden.handshake_timeout == 4.0 and overridden.bind_timeout == 7.0
    assert overridden.udp_public_address == "2001:db8::7"
    assert overridden.udp_reassembly is False
    assert overridden.backlog == 128 and overridden.users_file == str(users)
    assert [r.spec for r in overridden.rules] == [r.spec for r in from_file.rules]


def test_flags_without_a_file_and_defaults(tmp_path):
    assert comparable(settings_from([])) == comparable(Settings())
    only = settings_from(["--handshake-timeout", "3", "--allow-open", "--workers", "0"])
    assert only.handshake_timeout == 3.0 and only.allow_open is True
    assert only.workers == cpu_count()
    assert only.connect_timeout == Settings().connect_timeout


def test_flag_turns_a_file_value_back(tmp_path):
    """A flag equal to the built-in default still overrides the file."""
    path = write(tmp_path, '[timeouts]\nconnect = 3\n[udp]\nreassembly = true\n[log]\nlevel = "debug"\n')
    settings = settings_from(["--config", str(path), "--connect-timeout", "10",
                              "--log-level", "info"])
    assert settings.connect_timeout == 10.0 and settings.log_level == "info"


def test_flag_can_satisfy_the_safe_default(tmp_path):
    path = write(tmp_path, 'listen = ["0.0.0.0:0"]\n')
    with pytest.raises(ConfigError):
        settings_from(["--config", str(path)])
    assert settings_from(["--config", str(path), "--allow-open"]).allow_open is True
    with pytest.raises(ConfigError, match="--allow-open"):
        settings_from(["--config", write(tmp_path, "", "empty.toml").as_posix(),
                       "--listen", "0.0.0.0:0"])


def test_serve_with_a_bad_config_exits_2(run_cli, tmp_path):
    path = write(tmp_path, "[timeouts]\nconnect = -1\n")
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"fastsocks: error: {path}: timeouts.connect: must be a positive number of seconds, " \
           "got -1" in err
    assert "Traceback" not in err


def test_serve_with_config_and_flag_precedence(fastsocks_server, socks, tmp_path):
    """The file sets the log level and a short handshake timeout; a flag overrides the first."""
    path = write(tmp_path, '[log]\nlevel = "debug"\n[timeouts]\nhandshake = 0.5\n')
    debug = fastsocks_server("--config", str(path))
    quiet = fastsocks_server("--config", str(path), "--log-level", "info")
    for server in (debug, quiet):
        sock = socks.open(server.address)
        with sock:
            assert socks.read_until_closed(sock, timeout=5) == b""  # cut after 0.5 s
        assert server.stop() == 0
    assert " DEBUG " in debug.log and "handshake timeout" in debug.log
    assert " DEBUG " not in quiet.log


# -- fastsocks check ----------------------------------------------------------------------------------


def test_check_good_file_prints_effective_config(run_cli, tmp_path):
    users_file(tmp_path, "alice", "bob")
    path = write(tmp_path, FULL.replace("workers = 3", "workers = 0"))
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    doc = tomllib.loads(out)  # TOML that parses
    assert doc["workers"] == cpu_count()
    assert doc["users"] == str(tmp_path / "users.txt")
    assert doc["timeouts"]["connect"] == 5.5
    assert doc["rules"][0]["dst"] == ["10.0.0.0/8", "172.16.0.0/12"]
    assert "[[rules]]  # rules[1]" in out
    # It loads back to the same settings.
    again = write(tmp_path, out, "again.toml")
    assert comparable(load_config(again)) == comparable(load_config(path))
    # carol is in a rule but not in the users file: a warning, not an error.
    assert "rules[1].users[0]: user 'carol' is not in the users file" in result.stderr.decode()


def test_check_bad_file_lists_errors(run_cli, tmp_path):
    path = write(tmp_path, '[timeouts]\nconnect = -1\n[[rules]]\naction = "deny"\ndst = ["x"]\n')
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert lines == [
        f"{path}: timeouts.connect: must be a positive number of seconds, got -1",
        f'{path}: rules[0].dst[0]: must be an IP address or a CIDR such as "10.0.0.0/8" or '
        f'"fd00::/8", got "x"',
        f"fastsocks check: {path}: 2 errors",
    ]


def test_check_bad_users_file(run_cli, tmp_path):
    path = write(tmp_path, 'users = "missing.txt"\n')
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert f"{path}: users: {tmp_path / 'missing.txt'}: cannot read users file" in \
        result.stderr.decode()
    (tmp_path / "broken.txt").write_text("no colon here\n")
    path = write(tmp_path, 'users = "broken.txt"\n')
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert f"{path}: users: {tmp_path / 'broken.txt'}:1: expected 'name:hash'" in \
        result.stderr.decode()


def test_check_warns_about_users_without_auth(run_cli, tmp_path):
    path = write(tmp_path, '[[rules]]\naction = "deny"\nusers = ["alice"]\n')
    result = run_cli("check", str(path))
    assert result.returncode == 0
    assert "rules[0]: users and groups never match without authentication" in \
        result.stderr.decode()


def test_check_usage(run_cli):
    result = run_cli("check")
    assert result.returncode == 2
    assert b"CONFIG" in result.stderr


# -- the shipped example ---------------------------------------------------------------------------


def _example_copy(tmp_path: Path, uncomment: bool = False) -> Path:
    text = EXAMPLE.read_text()
    if uncomment:  # "#key = value": an optional key shown with an example value
        text = re.sub(r"^#(\w+ = )", r"\1", text, flags=re.MULTILINE)
    path = write(tmp_path, text)
    users_file(tmp_path, "alice", "bob", "carol")
    return path


@pytest.mark.parametrize("uncomment", [False, True], ids=["as-shipped", "optional-keys-on"])
def test_example_config_passes_check(run_cli, tmp_path, uncomment):
    path = _example_copy(tmp_path, uncomment)
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""  # no warnings either
    settings = load_config(path)
    assert settings.rules and settings.groups
    assert comparable(load_config(write(tmp_path, result.stdout.decode(), "effective.toml"))) == \
        comparable(settings)


def test_example_config_covers_every_key(tmp_path):
    doc = tomllib.loads(_example_copy(tmp_path, uncomment=True).read_text())
    assert set(doc) == {"listen", "users", "allow_open", "workers", "loop", "relay", "relay_bulk",
                        "backlog", "timeouts", "bind", "udp", "log", "metrics", "limits", "groups", "rules",
                        "proxy_protocol", "upstreams", "outbound", "gssapi", "dns", "protocols",
                        "socks4"}
    assert set(doc["dns"]) == {"resolver", "servers", "cache_size", "min_ttl", "max_ttl",
                               "negative_ttl"}
    assert set(doc["proxy_protocol"]) == {"trusted", "listeners", "timeout"}
    assert set(doc["gssapi"]) == {"enabled", "keytab", "principal", "min_protection"}
    assert set(doc["upstreams"]["corp"]) == {"address", "user", "password"}
    assert set(doc["outbound"]) == {"address", "interface", "users"}
    assert set(doc["timeouts"]) == {"handshake", "connect", "idle", "bind", "drain"}
    assert set(doc["bind"]) == {"address"}
    assert set(doc["udp"]) == {"public_address", "reassembly"}
    assert set(doc["log"]) == {"level", "access", "access_format"}
    assert set(doc["metrics"]) == {"enabled", "listen"}
    assert set(doc["limits"]) == {"connections", "connections_per_ip", "connections_per_user",
                                  "handshake_rate_per_ip", "bandwidth_per_connection",
                                  "bandwidth_per_user", "users", "handshakes",
                                  "handshake_pressure", "handshake_pressure_timeout",
                                  "password_checks", "auth_failures_per_ip"}
    assert set(doc["limits"]["users"]["bob"]) == {"connections", "bandwidth"}
    assert set().union(*(rule.keys() for rule in doc["rules"])) == set(RULE_KEYS)


def test_example_config_is_in_the_repository():
    assert EXAMPLE.is_file()
    assert shutil.which("fastsocks"), "the fastsocks console script is not on PATH"


def test_render_of_defaults_loads_back(tmp_path):
    text = render(Settings())
    assert comparable(load_config(write(tmp_path, text))) == comparable(Settings())


# -- the table drives the flags, the loader, check and validate ------------------------------------


def _settings_of_every_kind(tmp_path: Path) -> Settings:
    settings = load_config(_example_copy(tmp_path, uncomment=True))
    settings.gssapi_principal_map = {"bob@EXAMPLE.COM": "robert"}
    settings.listener_protocols = {("::", 1080): ("socks5", "http")}
    settings.metrics_listen = "127.0.0.1:9300"
    return settings


def test_every_flag_comes_from_the_table():
    from fastsocks.config.args import HELP_ORDER

    flagged = [s for s in SETTINGS if s.flags]
    assert sorted(HELP_ORDER) == sorted(s.name for s in flagged)  # an order, nothing more
    parser = cli._serve_parser()
    options = {o for action in parser._actions for o in action.option_strings}
    assert options - {o for s in flagged for o in s.flags} == {"-h", "--help", "--version", "--config"}
    help_text = parser.format_help()
    for setting in flagged:
        assert setting.flags[0] in help_text, setting.name


def test_every_setting_is_rendered_and_loads_back(tmp_path):
    settings = _settings_of_every_kind(tmp_path)
    doc = tomllib.loads(render(settings))
    for setting in SETTINGS:
        node: Any = doc
        for part in setting.key.split("."):
            assert part in node, (setting.name, setting.key)
            node = node[part]
    again = load_config(write(tmp_path, render(settings), "again.toml"))
    assert comparable(again) == comparable(settings)


def test_every_default_is_the_tables():
    from fastsocks.config.settings import get

    for setting in SETTINGS:
        assert get(Settings(), setting.name) == setting.make_default(), setting.name


@pytest.mark.parametrize("key", [s.key for s in SETTINGS if "." in s.key and s.kind.empty is None])
def test_unknown_key_in_every_section_gets_a_suggestion(tmp_path, key):
    section, _, name = key.rpartition(".")
    path = write(tmp_path, f"[{section}]\n{name}x = 1\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert info.value.errors[0].startswith(f"{path}: {key}x: unknown key (did you mean {name!r}?); "
                                           f"[{section}] allows ")


def test_every_choice_names_file_key_and_fix(tmp_path):
    from fastsocks.config.scalars import Choice

    choices = [s for s in SETTINGS if isinstance(s.kind, Choice)]
    assert {s.name for s in choices} >= {"loop", "relay", "log_level", "access_log_format",
                                         "gssapi_min_protection"}
    for setting in choices:
        section, _, name = setting.key.rpartition(".")
        text = (f"[{section}]\n" if section else "") + f'{name} = "bogus"\n'
        path = write(tmp_path, text)
        with pytest.raises(ConfigFileError) as info:
            load_config(path)
        allowed = ", ".join(f'"{c}"' for c in setting.kind.choices)
        assert info.value.errors == [f'{path}: {setting.key}: must be one of {allowed}, got "bogus"']
        # The API is checked against the same list, worded for the command line.
        with pytest.raises(ConfigError, match=re.escape(f"'bogus': {setting.kind.fix}")):
            Settings(**{setting.name: "bogus"}).validate()


def test_reload_keeps_what_the_table_marks_fixed():
    from fastsocks.config import not_reloadable

    assert set(not_reloadable()) == {"listen", "workers", "relay", "loop", "backlog",
                                     "metrics_listen", "access_log", "access_log_format"}


def test_start_up_checks_are_in_validate():
    """What server.run used to check itself (access log format, metrics address)."""
    with pytest.raises(ConfigError, match="access log format 'xml': use text or json"):
        Settings(access_log_format="xml").validate()
    with pytest.raises(ConfigError, match="listen address 'nope'"):
        Settings(metrics_listen="nope").validate()
    with pytest.raises(ConfigError, match="proxy-protocol-timeout 1: the PROXY protocol spec"):
        Settings(proxy_protocol_from=["10.0.0.0/8"], proxy_protocol_timeout=1.0).validate()
    settings = Settings(outbound_address="127.0.0.7")  # type: ignore[arg-type]
    settings.validate()
    assert settings.outbound_address == ["127.0.0.7"]  # normalised to a list


# -- which protocols each listener serves; SOCKS4 where authentication is required ------


def test_protocols_default_by_listener_address():
    from fastsocks.control.record import Protocol

    settings = Settings(listen=[("127.0.0.1", 1080), ("0.0.0.0", 1081)], allow_open=True)
    settings.validate()
    assert settings.protocols is None and settings.listener_protocols == {}
    assert settings.protocols_of(("127.0.0.1", 1080)) == set(Protocol)
    # Off loopback, a new protocol is the operator's choice: SOCKS5 only.
    assert settings.protocols_of(("0.0.0.0", 1081)) == {Protocol.SOCKS5}
    assert settings.protocols_of(None) == {Protocol.SOCKS5}


def test_protocols_from_the_file_and_per_listener(tmp_path):
    from fastsocks.control.record import Protocol

    path = write(tmp_path, 'listen = ["127.0.0.1:1080", "0.0.0.0:1081", "[::1]:1082"]\n'
                           'allow_open = true\nprotocols = ["socks4", "socks5", "socks4"]\n'
                           '[socks4]\nunauthenticated_from = ["10.0.0.0/8", "fd00::/8"]\n'
                           '[listener_protocols]\n"[::1]:1082" = "http"\n')
    settings = load_config(path)
    assert settings.protocols == ("socks4", "socks5")
    assert settings.protocols_of(("0.0.0.0", 1081)) == {Protocol.SOCKS4, Protocol.SOCKS5}
    assert settings.protocols_of(("::1", 1082)) == {Protocol.HTTP}
    assert settings.socks4_open_to("10.9.8.7") and settings.socks4_open_to("fd00::1")
    assert settings.socks4_open_to("::ffff:10.0.0.1")
    assert not settings.socks4_open_to("11.0.0.1") and not settings.socks4_open_to(None)
    assert not Settings().socks4_open_to("10.0.0.1")
    assert comparable(load_config(write(tmp_path, render(settings), "again.toml"))) == \
        comparable(settings)


@pytest.mark.parametrize("text, problem", [
    ('protocols = []\n', 'protocols: must name one or more of "socks5", "socks4", "http", e.g. '
                         '["socks5", "http"]; it must not be empty'),
    ('protocols = ["socks5", "ftp"]\n', 'protocols[1]: must name one or more of "socks5", '
                                        '"socks4", "http", got "ftp"'),
    ('[listener_protocols]\n"nope" = ["socks5"]\n', 'listener_protocols."nope": must be one of '
                                                    'the listen addresses, "HOST:PORT"'),
    ('[listener_protocols]\n"127.0.0.1:1080" = ["http", 4]\n',
     'listener_protocols."127.0.0.1:1080"[1]: must name one or more of'),
    ('[listener_protocols]\n"127.0.0.1:9" = ["http"]\n', 'listener_protocols: 127.0.0.1:9 is '
                                                         'not one of the listen addresses'),
    ('[socks4]\nunauthenticated_from = ["10.0.0.1/8"]\n', 'socks4.unauthenticated_from[0]: must '
                                                         'be a CIDR (a client network)'),
])
def test_protocols_errors_name_file_key_and_fix(tmp_path, text, problem):
    path = write(tmp_path, 'listen = ["127.0.0.1:1080"]\n' + text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert any(line.startswith(f"{path}: {problem}") for line in info.value.errors), \
        info.value.errors


def test_protocols_flags():
    parser = cli._serve_parser()
    args = parser.parse_args(["--protocols", "http, SOCKS4", "--socks4-unauthenticated-from",
                              "192.0.2.0/24"])
    from fastsocks.config.args import overrides

    given = overrides(args)
    assert given["protocols"] == ("http", "socks4")
    assert given["socks4_unauthenticated_from"] == ["192.0.2.0/24"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--protocols", "socks5,gopher"])
    with pytest.raises(ConfigError, match="protocols 'ftp': give one or more of socks5"):
        Settings(protocols="ftp").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="give the client networks as CIDRs"):
        Settings(socks4_unauthenticated_from=["nope"]).validate()
