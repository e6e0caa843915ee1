#!/usr/bin/env python3
"""UDP ASSOCIATE: fastsocks' two datagram paths side by side, direct and Dante as references.

    python benchmarks/udp_paths.py [--repeat N] [--duration S] [--json PATH] [--servers LIST]

This is ``benchmarks/run.py --only udp`` with one more server,
``fastsocks-py``: fastsocks with ``--relay protocol``, which keeps UDP
ASSOCIATE on the asyncio datagram endpoints (the Python path, the only one
before ``fastsocks/_datagram.pyx``), while ``fastsocks`` (``--relay auto``)
runs the C path (recvmmsg/sendmmsg batches, UDP GSO).  Both run one worker,
fresh for every round, in the same invocation as the direct reference, so the
rows compare like with like.  Default servers: fastsocks,fastsocks-py,dante.
"""

from __future__ import annotations

import os
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


def main(argv: list[str]) -> int:
    run.SERVERS = (*run.SERVERS, "fastsocks-py")
    run.STARTERS["fastsocks-py"] = start_fastsocks_py
    if not any(a == "--servers" or a.startswith("--servers=") for a in argv):
        argv = ["--servers", "fastsocks,fastsocks-py,dante", *argv]
    return run.main(["--only", "udp", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
