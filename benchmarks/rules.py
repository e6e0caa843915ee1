"""What access rules cost a connection, from none to a 100 000-network deny list.

    python benchmarks/rules.py [--repeat 3] [--duration 3]

In one invocation:

* **a judgement** (timeit, µs per ``Policy.check_request`` of a CONNECT to an
  IP literal, the call a session makes per request): rule sets of growing
  size, each judged with the tables this build uses (``fastsocks.tables``:
  Cython, or the twin under ``FASTSOCKS_NO_EXTENSIONS=1``), with the twin in
  a child process, and, the reference, with the same rules made to look
  their ranges up by a plain scan of the list (what every lookup did before
  the tables; measured here, not remembered);
* **compiling** the rules as ``fastsocks`` does on start and reload
  (``compile_rule`` + ``Policy``), seconds;
* **a handshake** end to end (``fastsocks bench --mode handshake``, c=64,
  one worker, alternating): a server without rules against one whose config
  denies 10 000 networks (none of them the target's) and allows the rest:
  rate, server CPU per handshake, and the ratio.

The networks are random /16–/32s drawn with a fixed seed, so each run judges
the same lists.  Prints medians as JSON; benchmarks/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Any

from workers import bench, start  # this directory's --workers benchmark

SIZES = (0, 20, 1_000, 10_000, 100_000)
TARGET = "93.184.216.34"  # judged; a public address, in no list below


def networks(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        net = ipaddress.ip_network((rng.getrandbits(32), rng.choice((16, 20, 24, 28, 32))), strict=False)
        if not net.overlaps(ipaddress.ip_network(f"{TARGET}/32")):
            out.add(str(net))
    return sorted(out)


def rule_specs(size: int) -> list[dict[str, Any]]:
    """``size`` == 20: twenty small deny rules; otherwise one deny of ``size`` networks."""
    if size == 20:
        specs = [{"action": "deny", "dst": networks(3, seed), "ports": [25, "6000-6100"]}
                 for seed in range(19)]
    else:
        specs = [{"action": "deny", "dst": networks(size)}] if size else []
    return specs + [{"action": "allow", "dst": ["0.0.0.0/0", "::/0"]}]


class ScanSpans:
    """The reference lookup: each (low, high) tried in turn."""

    def __init__(self, pairs: tuple[tuple[int, int], ...]) -> None:
        self.pairs = pairs

    def has(self, n: int) -> bool:
        for lo, hi in self.pairs:
            if lo <= n <= hi:
                return True
        return False


class ScanRangeSet:
    def __init__(self, table: Any) -> None:
        self.v4 = ScanSpans(table.v4.pairs)
        self.v6 = ScanSpans(table.v6.pairs)

    def contains(self, key: tuple[int, int]) -> bool:
        return (self.v4 if key[0] == 4 else self.v6).has(key[1])


def judge(repeat: int, scan: bool = False) -> dict[str, Any]:
    """This process's tables (or, ``scan``, the reference): µs per judgement
    and compile seconds, by size."""
    from fastsocks import tables
    from fastsocks.constants import Command
    from fastsocks.control.rulebook import Policy
    from fastsocks.control.rules import compile_rule

    out: dict[str, Any] = {"implementation": "plain_scan_reference" if scan else tables.IMPLEMENTATION}
    for size in SIZES:
        specs = rule_specs(size)
        started = time.perf_counter()
        errors: list[tuple[str, str]] = []
        rules = [compile_rule(i, spec, {}, errors) for i, spec in enumerate(specs)]
        policy = Policy(rules, {}, ssrf=True)
        compiled = time.perf_counter() - started
        assert not errors, errors
        for rule in rules if scan else ():
            rule.dst = ScanRangeSet(rule.dst)
            if rule.ports is not None:
                rule.ports = ScanSpans(rule.ports.pairs)
        subject = policy.subject("192.0.2.7", None)
        decided = policy.check_request(Command.CONNECT, subject, TARGET, 443)
        assert decided is rules[-1], decided  # allowed by the last rule: every list was searched
        number = 200_000 if size <= 20 else 50_000
        times = timeit.repeat(lambda: policy.check_request(Command.CONNECT, subject, TARGET, 443),
                              number=number, repeat=repeat)
        out[str(size)] = {"us_per_judgement": round(min(times) / number * 1e6, 3),
                          "compile_s": round(compiled, 3)}
    return out


def handshakes(repeat: int, duration: float) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "rules.toml")
        with open(config, "w") as f:
            f.write('[[rules]]\naction = "deny"\ndst = [\n')
            f.writelines(f'  "{net}",\n' for net in networks(10_000))
            f.write(']\n\n[[rules]]\naction = "allow"\n')
        for _ in range(repeat):
            for name, extra in (("no_rules", []), ("deny_10k", ["--config", config])):
                proc, port = start(1, *extra)
                try:
                    h = bench(port, proc.pid, "--mode", "handshake", "--concurrency", "64",
                              "--duration", str(duration))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
                rows.setdefault(f"per_s_{name}", []).append(h["per_s"])
                rows.setdefault(f"server_cpu_us_{name}", []).append(h["server_cpu_us_per_handshake"])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--judge-only", action="store_true", help=argparse.SUPPRESS)  # the child
    args = p.parse_args()
    if args.judge_only:
        print(json.dumps(judge(args.repeat)))
        return 0
    here = judge(args.repeat)
    child = subprocess.run([sys.executable, __file__, "--judge-only", "--repeat", str(args.repeat)],
                           env=dict(os.environ, FASTSOCKS_NO_EXTENSIONS="1"),
                           capture_output=True, text=True, check=True, timeout=600)
    twin = json.loads(child.stdout)
    scan = judge(args.repeat, scan=True)
    judgement = {
        str(size): {
            **{f"us_{r['implementation']}": r[str(size)]["us_per_judgement"] for r in (here, twin, scan)},
            "compile_s": here[str(size)]["compile_s"],
        }
        for size in SIZES
    }
    rows = handshakes(args.repeat, args.duration)
    medians = {key: round(statistics.median(values), 1) for key, values in rows.items()}
    medians["cpu_ratio_deny_10k_over_no_rules"] = round(
        medians["server_cpu_us_deny_10k"] / medians["server_cpu_us_no_rules"], 3)
    medians["rate_ratio_deny_10k_over_no_rules"] = round(
        medians["per_s_deny_10k"] / medians["per_s_no_rules"], 3)
    print(json.dumps({"repeat": args.repeat, "duration": args.duration, "judgement": judgement,
                      "handshake_c64": medians, "all": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
