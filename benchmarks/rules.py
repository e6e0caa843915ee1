"""What access rules cost a connection, from none to a 100 000-network deny list.

    python benchmarks/rules.py [--repeat 3] [--duration 3]

In one invocation:

* **a judgement** (timeit, µs per judgement of a CONNECT: to an IP literal,
  ``Policy.check_request``; to a name, its two passes, ``check_request``
  before the lookup and ``check_address`` for the one address it resolved
  to; the calls a session makes per request): rule sets of growing
  size (``SETS``: many small rules, or one rule of many networks), each judged with the tables this build uses (``fastsocks.tables``:
  Cython, or the twin under ``FASTSOCKS_NO_EXTENSIONS=1``), with the twin in
  a child process, and, the reference, with the same rules judged one by
  one in Python (``Rule.match``) and their ranges looked up by a plain scan
  of the list: what every judgement did before the tables (measured here,
  not remembered);
* **compiling** the rules as ``fastsocks`` does on start and reload
  (``compile_rule`` + ``Policy``), seconds;
* **a handshake** end to end (``fastsocks bench --mode handshake``, c=64,
  one worker, alternating), CONNECT to the echo's IP literal and to
  ``localhost`` (``--target-name``; in the DNS cache after the first): a
  server without rules against one whose config has 500 small deny rules
  and one that denies 10 000 networks (none of them the target's), each
  allowing the rest: rate, server CPU per handshake, and the ratios.

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

# Rule sets: a count of small rules ("rules"), or one deny of many networks ("nets").
SETS = ("0 rules", "20 rules", "500 rules", "1000 nets", "10000 nets", "100000 nets")
# End to end: a server with each of these configs, and one without rules.
HANDSHAKE_SETS = ("500 rules", "10000 nets")
TARGET = "93.184.216.34"  # judged; a public address, in no list below
NAME = "www.example.com"  # judged as a name that resolved to TARGET
KEEP_OUT = (f"{TARGET}/32", "127.0.0.0/8")  # nor is the loopback target of the handshakes


def networks(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        net = ipaddress.ip_network((rng.getrandbits(32), rng.choice((16, 20, 24, 28, 32))), strict=False)
        if not any(net.overlaps(ipaddress.ip_network(kept)) for kept in KEEP_OUT):
            out.add(str(net))
    return sorted(out)


def rule_specs(name: str) -> list[dict[str, Any]]:
    """``N rules``: N small deny rules (three networks, two port ranges each,
    all of them tried, as a per-tenant rule set is); ``N nets``: one deny of
    N networks.  Both end in an allow for everything else."""
    count, kind = name.split()
    if kind == "rules":
        specs = [{"action": "deny", "dst": networks(3, seed), "ports": [25, "6000-6100"]}
                 for seed in range(int(count))]
    else:
        specs = [{"action": "deny", "dst": networks(int(count))}]
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
    of an IP literal and of a name (its two passes, with one address), and
    compile seconds, by size."""
    from fastsocks import tables
    from fastsocks.constants import Command
    from fastsocks.control.rulebook import Policy
    from fastsocks.control.rules import compile_rule

    class Reference(Policy):
        """Rule by rule in Python (``Rule.match``), as every judgement ran before the C loop."""
        __slots__ = ()

        def decide(self, *args: Any, by_rule: bool = True) -> Any:
            return Policy.decide(self, *args, by_rule=True)

    out: dict[str, Any] = {"implementation": "reference_rule_by_rule" if scan else tables.IMPLEMENTATION}
    for size in SETS:
        specs = rule_specs(size)
        started = time.perf_counter()
        errors: list[tuple[str, str]] = []
        rules = [compile_rule(i, spec, {}, errors) for i, spec in enumerate(specs)]
        policy = (Reference if scan else Policy)(rules, {}, ssrf=True)
        compiled = time.perf_counter() - started
        assert not errors, errors
        subject = policy.subject("192.0.2.7", None)
        if scan:
            for rule in rules:
                rule.dst = ScanRangeSet(rule.dst)
                if rule.ports is not None:
                    rule.ports = ScanSpans(rule.ports.pairs)

        def literal() -> Any:
            return policy.check_request(Command.CONNECT, subject, TARGET, 443)

        def name() -> Any:
            policy.check_request(Command.CONNECT, subject, NAME, 443)
            return policy.check_address(Command.CONNECT, subject, NAME, TARGET, 443)

        for case in (literal, name):  # allowed by the last rule: every list was searched
            assert case() is rules[-1], (case, case())
        number = 200_000 if size.startswith(("0 ", "20 ")) else 20_000
        out[size] = {"compile_s": round(compiled, 3)}
        for case in (literal, name):
            times = timeit.repeat(case, number=number, repeat=repeat)
            out[size][f"us_{case.__name__}"] = round(min(times) / number * 1e6, 3)
    return out


def write_config(path: str, name: str) -> None:
    """``rule_specs(name)`` as a fastsocks TOML config."""
    with open(path, "w") as f:
        for spec in rule_specs(name):
            f.write(f'[[rules]]\naction = "{spec["action"]}"\n')
            for key in ("dst", "ports"):
                if key in spec:
                    f.write(f"{key} = {json.dumps(spec[key])}\n")
            f.write("\n")


def handshakes(repeat: int, duration: float) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers: list[tuple[str, list[str]]] = [("no_rules", [])]
        for name in HANDSHAKE_SETS:
            config = os.path.join(tmp, name.replace(" ", "_") + ".toml")
            write_config(config, name)
            servers.append((name.replace(" ", "_"), ["--config", config]))
        for _ in range(repeat):
            for name, extra in servers:
                proc, port = start(1, *extra)
                try:
                    for target, how in (("literal", ()), ("name", ("--target-name", "localhost"))):
                        h = bench(port, proc.pid, "--mode", "handshake", "--concurrency", "64",
                                  "--duration", str(duration), *how)
                        rows.setdefault(f"per_s_{target}_{name}", []).append(h["per_s"])
                        rows.setdefault(f"server_cpu_us_{target}_{name}", []).append(
                            h["server_cpu_us_per_handshake"])
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
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
        size: {
            **{f"{case}_{r['implementation']}": r[size][case]
               for case in ("us_literal", "us_name") for r in (here, twin, scan)},
            "compile_s": here[size]["compile_s"],
        }
        for size in SETS
    }
    rows = handshakes(args.repeat, args.duration)
    medians = {key: round(statistics.median(values), 1) for key, values in rows.items()}
    for name in HANDSHAKE_SETS:
        for target in ("literal", "name"):
            key, plain = f"{target}_{name.replace(' ', '_')}", f"{target}_no_rules"
            medians[f"cpu_ratio_{key}_over_no_rules"] = round(
                medians[f"server_cpu_us_{key}"] / medians[f"server_cpu_us_{plain}"], 3)
            medians[f"rate_ratio_{key}_over_no_rules"] = round(
                medians[f"per_s_{key}"] / medians[f"per_s_{plain}"], 3)
    print(json.dumps({"repeat": args.repeat, "duration": args.duration, "judgement": judgement,
                      "handshake_c64": medians, "all": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
