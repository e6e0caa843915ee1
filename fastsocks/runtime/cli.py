"""The ``fastsocks`` command."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import platform
import sys
from typing import Any

from .. import __version__, describe_implementation
from ..config import Settings, cpu_count, load_config, parse_listen
from ..errors import ConfigError
from ..net.address import format_peer
from ..control.limits import parse_rate

__all__ = ["main"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _version_text() -> str:
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return (
        f"fastsocks {__version__}: {describe_implementation()}, event loop {loop}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 (no limit) or more")
    return value


def _rate(text: str) -> int:
    try:
        return parse_rate(text, text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r}: give bytes per second, or a unit as in "
                                         "10MiB, 500kB or 100Mbit") from None


def _per_second(text: str) -> float:
    value = _seconds(text.removesuffix("/s"))
    if value >= 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return value


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastsocks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SOCKS5 proxy server (RFC 1928, RFC 1929 username/password). "
        "With no arguments it serves on 127.0.0.1:1080 without authentication.",
        epilog="Other commands: 'fastsocks users add|remove FILE NAME' manages a users file; "
        "'fastsocks check CONFIG' validates a config file and prints the effective "
        "configuration; 'fastsocks bench --proxy HOST:PORT' measures any SOCKS5 server.",
    )
    p.add_argument("--version", action="version", version=_version_text())
    # Every other flag defaults to None, so that only flags actually given
    # override the config file (see _overrides).
    p.add_argument("--config", metavar="FILE",
                   help="read settings, groups and access rules from this TOML file; flags "
                   "given on the command line override it ('fastsocks check FILE' validates it)")
    p.add_argument("--listen", metavar="HOST:PORT", action="append", type=_listen,
                   help="address to listen on; repeatable; IPv6 as [::1]:1080 "
                   "(default 127.0.0.1:1080)")
    p.add_argument("--users", metavar="FILE",
                   help="require username/password (RFC 1929) checked against FILE: "
                   "'name:hash' lines with bcrypt (htpasswd -B) or argon2id hashes")
    p.add_argument("--gssapi", action="store_true", default=None,
                   help="offer GSSAPI/Kerberos authentication (RFC 1961), preferred over "
                   "username/password; clients that do not offer it then need --users or "
                   "--allow-open; the keytab is KRB5_KTNAME's or the system's")
    p.add_argument("--gssapi-keytab", metavar="FILE",
                   help="the service's keytab (implies --gssapi)")
    p.add_argument("--gssapi-principal", metavar="NAME",
                   help="accept tickets for this service principal only, e.g. "
                   "socks/proxy.example.com@EXAMPLE.COM (implies --gssapi; default: any "
                   "principal in the keytab)")
    p.add_argument("--gssapi-min-protection", choices=("integrity", "confidentiality", "clear"),
                   help="lowest per-message protection accepted (default integrity; clear is "
                   "Dante's extension: Kerberos authentication, unprotected data)")
    p.add_argument("--allow-open", action="store_true", default=None,
                   help="allow listening on a non-loopback address without authentication")
    p.add_argument("--handshake-timeout", metavar="SECONDS", type=_seconds,
                   help="drop a client that has not sent a complete request in time (default 10)")
    p.add_argument("--connect-timeout", metavar="SECONDS", type=_seconds,
                   help="give up connecting to a target after this long; the client gets "
                   "X'04' host unreachable (default 10)")
    p.add_argument("--idle-timeout", metavar="SECONDS", type=_seconds,
                   help="close a relayed connection after this long without traffic in "
                   "either direction; 0 disables (default 300)")
    p.add_argument("--drain-timeout", metavar="SECONDS", type=_seconds,
                   help="on SIGTERM/SIGINT stop accepting and let open connections finish for "
                   "up to this long before closing them; a second signal closes at once "
                   "(default 0: close at once)")
    p.add_argument("--bind-timeout", metavar="SECONDS", type=_seconds,
                   help="BIND: how long to wait for the incoming connection; the client then "
                   "gets X'06' (default 60)")
    p.add_argument("--bind-address", metavar="IP",
                   help="BIND: listen on this address instead of the one the client reached")
    p.add_argument("--udp-public-address", metavar="IP",
                   help="UDP ASSOCIATE: advertise this address to clients (behind NAT)")
    p.add_argument("--no-udp-reassembly", dest="udp_reassembly", action="store_false", default=None,
                   help="UDP ASSOCIATE: drop fragmented datagrams (FRAG != 0) instead of "
                   "reassembling them")
    p.add_argument("--proxy-protocol-from", metavar="CIDR", action="append",
                   help="expect a PROXY protocol header (v1 or v2, e.g. HAProxy's send-proxy-v2) "
                   "on every listener from balancers in CIDR, and take the client's address "
                   "from it; repeatable; connections from elsewhere are refused (default: off)")
    p.add_argument("--proxy-protocol-timeout", metavar="SECONDS", type=_seconds,
                   help="how long a balancer has to send the PROXY header (default 5, at least 3)")
    p.add_argument("--outbound-address", metavar="IP", action="append",
                   help="source address of outgoing connections; repeatable: one IPv4 and one "
                   "IPv6 address, each used for targets of its family (default: the system's "
                   "choice)")
    p.add_argument("--outbound-interface", metavar="NAME",
                   help="bind outgoing connections to this network interface (SO_BINDTODEVICE; "
                   "needs root)")
    p.add_argument("--workers", metavar="N", type=int,
                   help="worker processes, each with its own SO_REUSEPORT listeners and "
                   "relay, supervised by a master that restarts one that dies (default and "
                   "0: one per CPU on Linux, else 1)")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"),
                   help="event loop: uvloop where installed (auto), or force one")
    p.add_argument("--relay", choices=("auto", "splice", "protocol"),
                   help="data plane: the splice(2) engine thread where available (auto; "
                   "Linux with the extension), or the asyncio protocol relay")
    p.add_argument("--log-level", choices=_LOG_LEVELS,
                   help="log verbosity (default info)")
    p.add_argument("--access-log", metavar="PATH|-",
                   help="write one line per connection, when it ends, to PATH (appended), "
                   "or to standard output with '-' (default: none)")
    p.add_argument("--access-log-format", choices=("text", "json"),
                   help="access log lines as space-separated text or as JSON objects "
                   "(default text)")
    limits = p.add_argument_group("limits (0: no limit; see 'Limits' in the README for what a "
                                  "client sees)")
    limits.add_argument("--max-connections", metavar="N", type=_count,
                        help="connections open at once, in all (all workers together)")
    limits.add_argument("--max-connections-per-ip", metavar="N", type=_count,
                        help="connections open at once from one client address")
    limits.add_argument("--max-connections-per-user", metavar="N", type=_count,
                        help="connections open at once by one authenticated user")
    limits.add_argument("--handshake-rate-per-ip", metavar="N", type=_per_second,
                        help="new connections per second from one client address (a sliding "
                        "one-second window)")
    limits.add_argument("--bandwidth-per-connection", metavar="RATE", type=_rate,
                        help="bytes per second each way for one connection: 1048576, 1MiB, "
                        "100Mbit")
    limits.add_argument("--bandwidth-per-user", metavar="RATE", type=_rate,
                        help="bytes per second each way for all of one user's connections "
                        "(in each worker)")
    p.add_argument("--metrics", metavar="HOST:PORT", type=_listen,
                   help="serve Prometheus metrics on http://HOST:PORT/metrics and a health "
                   "check on /healthz; keep it on loopback (default: off)")
    return p


def _users_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastsocks users", description="Manage a users file.")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user or change a password; the password is "
                         "read from a prompt, or from the first line of standard input")
    add.add_argument("file")
    add.add_argument("name")
    add.add_argument("--argon2", action="store_true", help="hash with argon2id instead of bcrypt")
    add.add_argument("--cost", type=int, default=10, choices=range(4, 32), metavar="4..31",
                     help="bcrypt cost factor (default 10)")
    remove = sub.add_parser("remove", help="remove a user")
    remove.add_argument("file")
    remove.add_argument("name")
    return p


def _read_password() -> bytes:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != first:
            raise ConfigError("the passwords do not match")
        return first.encode("utf-8")
    line = sys.stdin.buffer.readline()
    return line.rstrip(b"\r\n")


def _users_main(argv: list[str]) -> int:
    from ..control.auth import remove_user, set_user

    args = _users_parser().parse_args(argv)
    try:
        if args.action == "add":
            existed = set_user(args.file, args.name, _read_password(),
                               "argon2id" if args.argon2 else "bcrypt", args.cost)
            print(f"{'updated' if existed else 'added'} user {args.name!r} in {args.file}",
                  file=sys.stderr)
        else:
            if not remove_user(args.file, args.name):
                print(f"fastsocks users: no user {args.name!r} in {args.file}", file=sys.stderr)
                return 1
            print(f"removed user {args.name!r} from {args.file}", file=sys.stderr)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"fastsocks users: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields set by flags actually given (argparse default None: not given)."""
    given = {
        "listen": args.listen,
        "users_file": args.users,
        "allow_open": args.allow_open,
        "handshake_timeout": args.handshake_timeout,
        "connect_timeout": args.connect_timeout,
        "idle_timeout": args.idle_timeout,
        "drain_timeout": args.drain_timeout,
        "bind_timeout": args.bind_timeout,
        "bind_address": args.bind_address,
        "udp_public_address": args.udp_public_address,
        "udp_reassembly": args.udp_reassembly,
        "loop": args.loop,
        "relay": args.relay,
        "workers": args.workers,
        "log_level": args.log_level,
        "access_log": args.access_log,
        "access_log_format": args.access_log_format,
        "metrics_listen": format_peer(args.metrics) if args.metrics else None,
        "proxy_protocol_from": args.proxy_protocol_from,
        "proxy_protocol_timeout": args.proxy_protocol_timeout,
        "outbound_address": args.outbound_address,
        "outbound_interface": args.outbound_interface,
        "gssapi": (True if args.gssapi or args.gssapi_keytab or args.gssapi_principal
                   else None),
        "gssapi_keytab": args.gssapi_keytab,
        "gssapi_principal": args.gssapi_principal,
        "gssapi_min_protection": args.gssapi_min_protection,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    if overrides.get("workers") == 0:
        overrides["workers"] = cpu_count()
    return overrides


def _settings(args: argparse.Namespace) -> Settings:
    """The config file (if any) with the command line on top; defaults for the rest."""
    overrides = _overrides(args)
    settings = load_config(args.config, overrides) if args.config else Settings(**overrides)
    given = {
        "connections": args.max_connections,
        "connections_per_ip": args.max_connections_per_ip,
        "connections_per_user": args.max_connections_per_user,
        "handshake_rate_per_ip": args.handshake_rate_per_ip,
        "bandwidth_per_connection": args.bandwidth_per_connection,
        "bandwidth_per_user": args.bandwidth_per_user,
    }
    limits = {name: value for name, value in given.items() if value is not None}
    if limits:
        settings.limits = dataclasses.replace(settings.limits, **limits)
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        return _users_main(argv[1:])
    if argv[:1] == ["bench"]:
        from ..bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["check"]:
        from ..config.file import check_main

        return check_main(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    args = _serve_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"fastsocks: error: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .server import run

    def reload() -> Settings:
        # SIGHUP: the same sources again, the command line still on top.
        return _settings(args)

    try:
        return run(settings, reload)
    except ConfigError as exc:
        print(f"fastsocks: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fastsocks: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
