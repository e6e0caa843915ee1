"""benchmarks/interleaved.py runs: one short round through real servers.

Speed is not judged here (benchmarks/ measures it); the script must keep
working as the package changes.  microsocks: tests/run.sh installs it.
Loopback only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_interleaved_runs_each_pair_and_sets_fastsocks_over_microsocks(tmp_path: Path) -> None:
    """One round: every (server, ask) pair measured, the ratio table printed."""
    assert shutil.which("microsocks"), "microsocks is required (tests/run.sh installs it)"
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "interleaved.py"), "--rounds", "1", "--duration",
         "0.3", "--time-wait", "200000", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "r.json").read_text())
    assert sorted(rows) == ["fastsocks address", "fastsocks name", "microsocks address",
                            "microsocks name"]
    assert all(r[0]["per_s"] > 0 and r[0]["server_cpu_us_per_handshake"] for r in rows.values())
    assert "| name | " in out.stdout and "| address | " in out.stdout
