#!/usr/bin/env python3
"""UDP ASSOCIATE: fastsocks' two datagram paths side by side, direct and Dante as references.

    python benchmarks/udp_paths.py [--repeat N] [--duration S] [--json PATH] [--servers LIST]

This is ``benchmarks/run.py --only udp`` with one more server,
``fastsocks-py``: fastsocks with ``--relay protocol``, which keeps UDP
ASSOCIATE on the asyncio datagram endpoints (the Python path, the only one
before ``fastsocks/_datagram.pyx``), while ``fastsocks`` (``--relay auto``)
runs the C path (recvmmsg/sendmmsg batches, UDP GSO).  Both run one worker,
fresh for every round, in the same invocation as the direct reference, so the
rows compare like with like.

``forwarder`` is no SOCKS server but the floor under every UDP row: a bare
forwarder in C (``benchmarks/udp_forwarder.c``, built here with ``cc -O2``)
that moves each datagram on to the echo or the sink and each reply back, one
outbound socket per client as an association has, with nothing else to do
(no §7 header, no checks, one batched front socket for all clients).  The
generator sends to it directly.  Its CPU per round trip is what the kernel's
UDP path costs a relaying process on this machine.

Default servers: fastsocks,fastsocks-py,forwarder,dante.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py)


def start_fastsocks_py(echo: tuple[str, int]) -> run.Server:
    tmp = tempfile.TemporaryDirectory(prefix="fastsocks-py-bench-")
    server = run.Server("fastsocks-py", tmp=tmp, log_path=Path(tmp.name) / "fastsocks.log")
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    with open(server.log_path, "wb") as log:  # type: ignore[arg-type]
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", "1",
             "--relay", "protocol", "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def parse(text: str) -> None:
        match = run._LISTENING.search(text)
        if match:
            server.address = (match.group(2).strip("[]"), int(match.group(3)))
            server.info = f"{match.group(1)} {match.group(4).strip()} (UDP: Python path)"

    try:
        run._wait_ready(server, echo, parse)
    except BaseException:
        server.stop()
        raise
    return server


FORWARDER_SOURCE = Path(__file__).resolve().parent / "udp_forwarder.c"


def start_forwarder(echo: tuple[str, int]) -> run.Server:
    """benchmarks/udp_forwarder.c, built into a temporary directory, in front of
    the UDP echo and the UDP sink (``echo`` is the TCP echo, not used)."""
    targets = [run.UDP_TARGETS["echo"], run.UDP_TARGETS["sink"]]
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build benchmarks/udp_forwarder.c")
    tmp = tempfile.TemporaryDirectory(prefix="udp-forwarder-bench-")
    binary = Path(tmp.name) / "udp_forwarder"
    server = run.Server("forwarder", tmp=tmp, log_path=Path(tmp.name) / "forwarder.log")
    try:
        subprocess.run([cc, "-O2", "-o", str(binary), str(FORWARDER_SOURCE)], check=True,
                       capture_output=True, timeout=60)
        with open(server.log_path, "wb") as log:  # type: ignore[arg-type]
            server.proc = subprocess.Popen(
                [str(binary), *(f"0:{port}" for _, port in targets)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        assert server.proc.stdout is not None
        ready, _, _ = select.select([server.proc.stdout], [], [], run.START_TIMEOUT)
        words = server.proc.stdout.readline().split() if ready else []
        if len(words) != 1 + len(targets) or words[0] != b"ready":
            raise RuntimeError(f"the forwarder did not start; log:\n{server.log_tail()}")
        server.udp_fronts = {t: ("127.0.0.1", int(w)) for t, w in zip(targets, words[1:])}
        server.info = "bare UDP forwarder in C (benchmarks/udp_forwarder.c), no SOCKS"
    except BaseException:
        server.stop()
        raise
    return server


def main(argv: list[str]) -> int:
    run.SERVERS = (*run.SERVERS, "fastsocks-py", "forwarder")
    run.STARTERS["fastsocks-py"] = start_fastsocks_py
    run.STARTERS["forwarder"] = start_forwarder
    if not any(a == "--servers" or a.startswith("--servers=") for a in argv):
        argv = ["--servers", "fastsocks,fastsocks-py,forwarder,dante", *argv]
    return run.main(["--only", "udp", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
