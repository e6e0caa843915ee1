"""The ``fastsocks`` command."""

from __future__ import annotations

import argparse
import getpass
import logging
import platform
import sys

from .. import __version__, describe_implementation
from ..config import Settings, build, check_main, load_config
from ..config.args import add_options, overrides
from ..control.auth import remove_user, set_user
from ..errors import ConfigError

__all__ = ["main"]


def _version_text() -> str:
    try:
        from importlib.metadata import version

        loop = f"uvloop {version('uvloop')}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return (
        f"fastsocks {__version__}: {describe_implementation()}, event loop {loop}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


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
    # Every setting's flag defaults to None, so that only flags actually
    # given override the config file (fastsocks.config.args).
    p.add_argument("--config", metavar="FILE",
                   help="read settings, groups and access rules from this TOML file; flags "
                   "given on the command line override it ('fastsocks check FILE' validates it)")
    add_options(p)  # every setting with a flag, from the table (fastsocks.config)
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


def _settings(args: argparse.Namespace) -> Settings:
    """The config file (if any) with the command line on top; defaults for the rest."""
    given = overrides(args)
    return load_config(args.config, given) if args.config else build(given)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        return _users_main(argv[1:])
    if argv[:1] == ["bench"]:
        from ..bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["check"]:
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
    from .serve import run

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
