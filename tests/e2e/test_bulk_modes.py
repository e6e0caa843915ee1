"""``--relay-bulk``: how the splice engine moves a connection's bulk data, seen from outside.

Each direction starts by copying 16 KiB at a time and goes bulk at its first
full read: ``splice`` through a pipe (the engine keeps used pipes in a pool,
so the server holds more pipe descriptors afterwards), ``copy`` through the
engine's 4 MiB buffer (no pipe), ``auto`` copying on loopback.  Every mode
carries every byte both ways, in order, with each half-close passed on; a
reload changes the mode for the directions that go bulk after it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable

import pytest

from builds import HAVE_ENGINE
from launcher import FastsocksProcess

if not HAVE_ENGINE:
    pytest.skip("--relay-bulk is the splice engine's (Linux, compiled build)",
                allow_module_level=True)

MiB = 1 << 20
Start = Callable[..., FastsocksProcess]
BothWays = Callable[[tuple[str, int], int], None]


@pytest.mark.parametrize("mode", ["auto", "splice", "copy"])
def test_each_mode_carries_bulk_both_ways(fastsocks_server: Start, both_ways: BothWays,
                                          mode: str) -> None:
    server = fastsocks_server("--relay-bulk", mode, "--workers", "1")
    pipes = server.fds()["pipe"]
    both_ways(server.address, 24 * MiB)
    if mode == "splice":
        assert server.fds()["pipe"] > pipes, "bulk was not spliced"
    else:  # loopback: auto copies too
        assert server.fds()["pipe"] == pipes, "bulk copying took a pipe"


def test_a_reload_changes_the_mode_for_later_transfers(fastsocks_server: Start,
                                                       both_ways: BothWays,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text('relay_bulk = "copy"\n')
    server = fastsocks_server("--config", str(config), "--workers", "1")
    pipes = server.fds()["pipe"]
    both_ways(server.address, 8 * MiB)
    assert server.fds()["pipe"] == pipes
    config.write_text('relay_bulk = "splice"\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    both_ways(server.address, 8 * MiB)
    assert server.fds()["pipe"] > pipes
    assert "cannot change while running" not in server.log
