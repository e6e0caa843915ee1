#!/usr/bin/env python3
"""Where one short connection's server CPU goes, stage by stage (issue 15).

    python benchmarks/profile_handshake.py [--duration 20] [--rounds 3]
                                           [--configs plain,observers] [--json PATH]

For each configuration (``plain``: ``--workers 1``, the default splice engine
on uvloop; ``observers``: the same with ``--access-log FILE --metrics
127.0.0.1:0``) and each round it starts a fresh fastsocks server and an echo
target (``fastsocks bench --serve echo``) and drives the server with
``fastsocks bench --mode handshake --concurrency 64`` (CONNECT to an IP
literal, no auth, 64 B echo, close) three times:

1. **clean**: nothing attached; the server CPU-µs per handshake and the
   per-thread user/kernel split from /proc/PID/task/*/stat;
2. **profile**: ``py-spy record --native --idle -f raw`` (Python and C stacks
   of every thread) and ``perf record -e cpu-clock -g`` (on-CPU samples with
   kernel stacks) attached at once.  perf gives each thread's share of the
   server's CPU, the kernel/user split and the kernel time per system call;
   py-spy's stacks divide each thread's CPU (less its time in epoll_wait, which
   perf measures) among the stages by the functions the samples land in
   (``classify``).  CPU-µs per connection = share × the server CPU-µs per
   handshake that bench reports for this same run;
3. **count**: ``perf stat`` counting system calls per connection (tracepoints
   make every system call slower, so this phase has a run of its own).

Medians over the rounds are printed as markdown.  Needs py-spy (``pip install
py-spy``) and, for the kernel figures, ``perf`` (Debian: linux-perf) with
cpu-clock sampling allowed (root or perf_event_paranoid <= 1); without perf
the per-thread shares come from /proc and the kernel columns are left out.
Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGES = [  # (key, label, where)
    ("accept", "accept (engine)", "_engine.pyx _accept/_take/_negotiated (accept4, peer, the pair)"),
    ("negotiate", "read + parse, X'05 00' (engine)", "_negotiate/_parse/_answer/_login (recv, send)"),
    ("connect", "outbound connect + reply (engine)", "_dial/fastsocks_dial/_connecting/_settle/"
     "_hello (socket, connect, getsockname)"),
    ("reports", "reports to the loop (engine)", "_ask/_tell/_handed/_report/_report_later"),
    ("relay", "relay of the 64 B echo (engine)", "_pump/_service/_client_event (recv, send, splice)"),
    ("close_engine", "close (engine)", "_finish/_unlink_free/_free_pair (shutdown, close)"),
    ("commands", "commands from the loop (engine)", "_commands/_register/_attach"),
    ("scan", "idle scan (engine)", "_scan_idle"),
    ("engine_wait", "engine: epoll_wait", "perf: kernel time in the engine's epoll_wait"),
    ("engine_other", "engine: other", "_engine.pyx outside the above (epoll_ctl, wake-ups)"),
    ("collect", "reports, loop side", "Engine.collect, _whole, _introduce, report_quiet, "
     "handoff.py"),
    ("session", "sessions, loop side", "control/ (a connection the loop hears of: Session, "
     "decide, connect)"),
    ("limits", "limits / handshake admission", "control/limits.py, handshakes.py"),
    ("accesslog", "access log", "observe/accesslog.py"),
    ("metrics", "metrics", "observe/metrics.py, prometheus_client"),
    ("loop_poll", "event loop: epoll_pwait", "uv__io_poll (perf: kernel time in epoll_pwait)"),
    ("loop_other", "event loop: other", "uvloop/libuv outside any stage (the engine's "
     "eventfd read, timers, handle bookkeeping)"),
    ("threads", "other threads", "pycares, libuv workers, metrics exporter"),
]
WAITS = {"epoll_wait", "epoll_pwait", "epoll_pwait2"}
SYSCALLS = ("accept4 read write connect socket setsockopt getsockopt getsockname getpeername "
            "ioctl fcntl dup close shutdown epoll_ctl epoll_wait epoll_pwait io_uring_enter "
            "splice sendto recvfrom futex pipe2").split()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _leafname(func: str) -> str:
    return func.rsplit(".", 1)[-1]


# The engine's functions (Cython's and its C helpers') by stage; the
# innermost frame that names one wins.
ENGINE_STAGES = (
    (("_engine__negotiated", "_engine__take", "_engine__accept", "fastsocks_accept",
      "fastsocks_peer"), "accept"),
    (("_engine__dial", "fastsocks_dial", "_engine__connecting", "_engine__settle",
      "_engine__hello"), "connect"),
    (("_engine__ask", "_engine__tell", "_engine__handed", "_engine__report",
      "_engine__introduce"), "reports"),
    (("_engine__negotiate", "_engine__parse", "_engine__answer", "_engine__login",
      "fastsocks_login"), "negotiate"),
    (("_engine__finish", "_engine__drop_pipe", "_engine__unlink_free", "_engine__free_pair",
      "_engine__drop", "_engine__release"), "close_engine"),
    (("_engine__pump", "_engine__service", "_engine__client_event", "_engine__pipe_"),
     "relay"),
    (("_engine__register", "_engine__commands", "_engine__attach"), "commands"),
    (("_engine__scan_idle",), "scan"),
)


def classify(frames: list[tuple[str, str]]) -> tuple[str, str]:
    """(thread, stage) of one py-spy stack, frames as (function, file) from root to leaf.

    The innermost frame that names a stage wins, so that a metrics call made
    from a report counts as metrics.  Stacks with no fastsocks frame are
    placed by the uvloop/libuv function that made them.
    """
    funcs = [f for f, _ in frames]
    leaf = funcs[-1] if funcs else ""
    if any(f.startswith("_engine__engine_loop") for f in funcs):
        if _leafname(leaf) in WAITS:
            return "engine", "wait"
        for f in reversed(funcs):
            for names, stage in ENGINE_STAGES:
                if f.startswith(names):
                    return "engine", stage
        return "engine", "engine_other"
    if "uv_run" not in funcs:
        idle = _leafname(leaf) in WAITS or "PyThread_acquire_lock_timed" in funcs
        return "other", "wait" if idle else "threads"
    if _leafname(leaf) in WAITS and len(funcs) > 1 and funcs[-2] == "uv__io_poll":
        return "main", "wait"
    for func, path in reversed(frames):
        name = _leafname(func)
        if "observe/metrics.py" in path or "prometheus_client" in path:
            return "main", "metrics"
        if "accesslog.py" in path:
            return "main", "accesslog"
        if path.endswith(("limits.py", "handshakes.py", "sharedcounts.py")):
            return "main", "limits"
        if path.endswith(("handoff.py", "listener.py")) \
                or (path.endswith("_engine.pyx") and name.startswith(("collect", "Engine__whole",
                                                                      "Engine__introduce",
                                                                      "Engine__held"))):
            return "main", "collect"
        if "fastsocks/control/" in path or "fastsocks/net/" in path:
            return "main", "session"
    return "main", "loop_other"


_FRAME = re.compile(r"^(.*) \(([^():]*)(?::\d+)?\)$")


def pyspy_stages(path: str) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Samples per (thread, stage) of a py-spy raw file, and those whose leaf is in libc."""
    counts: dict[tuple[str, str], int] = collections.Counter()
    in_libc: dict[tuple[str, str], int] = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            frames = []
            for text in stack.split(";"):
                m = _FRAME.match(text)
                frames.append((m.group(1), m.group(2)) if m else (text, ""))
            key = classify(frames)
            counts[key] += int(n)
            if frames and frames[-1][1].startswith("libc"):  # a system call's wrapper
                in_libc[key] += int(n)
    return counts, in_libc


_KSYS = re.compile(r"^(?:__x64_sys_|__do_sys_|__se_sys_|ksys_|__sys_)([a-z0-9_]+)")


def _syscall_name(chain: list[str]) -> str:
    """The system call a kernel sample (leaf first) was made in, or what else it was.

    Newer kernels inline most ``__x64_sys_*`` wrappers, so the user-space
    libc wrapper the chain ends in names the call when no kernel frame does.
    """
    user = None
    if not any("do_syscall_64" in c for c in chain):
        return "(not in a system call: irq, fault)"
    for frame in chain:
        addr, _, sym = frame.partition(" ")
        if int(addr, 16) < 0xffff800000000000:
            user = sym.split("+")[0]
            break
        m = _KSYS.match(sym)
        if m:
            return m.group(1).removesuffix("_file")
    if user and user != "[unknown]":
        name = re.sub(r"^(?:__GI_)?_*(?:libc_)?_*", "", user).split("_nocancel")[0]
        return {"fcntl64": "fcntl", "syscall": "syscall() (libuv: close, io_uring)"}.get(
            name, name)
    return "(a system call, unnamed)"


def perf_samples(path: str, main_tid: int, engine_tid: int | None) -> dict[str, Any]:
    """On-CPU samples per thread role, kernel vs user, and kernel samples per system call."""
    text = subprocess.run(["perf", "script", "-i", path, "-F", "tid,ip,sym"],
                          capture_output=True, text=True, timeout=300).stdout
    threads: dict[str, int] = collections.Counter()
    kernel: dict[str, int] = collections.Counter()
    syscalls: dict[str, int] = collections.Counter()
    waits: dict[str, int] = collections.Counter()
    total = 0

    def flush(tid: int, chain: list[str]) -> None:
        nonlocal total
        if tid < 0 or not chain:
            return
        role = "main" if tid == main_tid else "engine" if tid == engine_tid else "other"
        total += 1
        threads[role] += 1
        addr, _, _ = chain[0].partition(" ")
        if int(addr, 16) < 0xffff800000000000:
            return
        kernel[role] += 1
        call = _syscall_name(chain)
        syscalls[call] += 1
        if call in WAITS:
            waits[role] += 1

    tid, chain = -1, []
    for line in text.splitlines():
        if line.startswith("\t"):
            chain.append(line.strip())
        elif line.strip():
            flush(tid, chain)
            tid, chain = int(line.split()[0]), []
    flush(tid, chain)
    return {"total": total, "threads": dict(threads), "kernel": dict(kernel),
            "syscalls": dict(syscalls), "waits": dict(waits)}


def task_times(pid: int) -> dict[int, tuple[int, int]]:
    """(utime, stime) clock ticks of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            out[int(tid)] = (int(fields[11]), int(fields[12]))
        except (OSError, IndexError, ValueError):
            continue
    return out


def busy_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return sum(v[:3]) + v[5] + v[6]  # user, nice, system, irq, softirq


def children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


class Fastsocks:
    """A fastsocks server process on 127.0.0.1 port 0, one worker."""

    def __init__(self, extra: list[str], workdir: str) -> None:
        self.logpath = os.path.join(workdir, "server.log")
        self.logfile = open(self.logpath, "w")
        self.proc = subprocess.Popen([PY, "-m", "fastsocks", "--listen", "127.0.0.1:0",
                                      "--workers", "1", *extra],
                                     stdout=self.logfile, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(self.logpath) as f:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+) \(", f.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"fastsocks did not start in 20 s; see {self.logpath}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"fastsocks exited at start; see {self.logpath}")
        self.pid = self.proc.pid
        self.engine_tid = self._engine_tid()

    def _engine_tid(self) -> int | None:
        """The splice engine's thread id, from a py-spy dump (its thread's name)."""
        dump = subprocess.run(["py-spy", "dump", "--pid", str(self.pid)], capture_output=True,
                              text=True, timeout=60).stdout
        m = re.search(r'Thread (\d+) \([^)]*\): "fastsocks-relay"', dump)
        return int(m.group(1)) if m else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.logfile.close()


def bench(port: int, target: str, pid: int, duration: float) -> dict[str, Any]:
    out = subprocess.run([PY, "-m", "fastsocks.bench", "--proxy", f"127.0.0.1:{port}",
                          "--target", target, "--mode", "handshake", "--concurrency", "64",
                          "--duration", str(duration), "--server-pid", str(pid), "--json"],
                         capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"fastsocks bench failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def one_round(config: str, args: argparse.Namespace, target: str, workdir: str,
              have_perf: bool) -> dict[str, Any]:
    extra = []
    if config == "observers":
        extra = ["--access-log", os.path.join(workdir, "access.log"),
                 "--metrics", "127.0.0.1:0"]
    server = Fastsocks(extra, workdir)
    try:
        res: dict[str, Any] = {"config": config, "engine_tid": server.engine_tid}
        bench(server.port, target, server.pid, 1.0)  # warm-up
        # 1. clean
        t0, busy0, ch0, w0 = task_times(server.pid), busy_ticks(), children_cpu(), time.monotonic()
        b = bench(server.port, target, server.pid, args.clean_duration)
        t1, wall = task_times(server.pid), time.monotonic() - w0
        others = (busy_ticks() - busy0) / CLK_TCK - (children_cpu() - ch0) - b["server_cpu_s"]
        split: collections.Counter[str] = collections.Counter()
        for tid, (u1, s1) in t1.items():
            u0, s0 = t0.get(tid, (0, 0))
            role = "main" if tid == server.pid else \
                "engine" if tid == server.engine_tid else "other"
            split[role + "_user"] += u1 - u0
            split[role + "_sys"] += s1 - s0
        res["clean"] = {"per_s": b["per_s"], "cpu_us": b["server_cpu_us_per_handshake"],
                        "p50_ms": b["p50_ms"], "split_ticks": dict(split),
                        "other_load_cores": max(0.0, others) / wall}
        # 2. profile: py-spy and perf attached, the same bench run
        raw, pdata = os.path.join(workdir, "pyspy.txt"), os.path.join(workdir, "perf.data")
        span = str(int(args.duration) + 2)
        spy = subprocess.Popen(["py-spy", "record", "--native", "--idle", "--rate",
                                str(args.rate), "-f", "raw", "-o", raw, "-d", span,
                                "--pid", str(server.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g",
                                 "-p", str(server.pid), "-o", pdata, "--", "sleep", span],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) \
            if have_perf else None
        time.sleep(1.0)  # attached before the load starts
        busy0, ch0, w0 = busy_ticks(), children_cpu(), time.monotonic()
        b = bench(server.port, target, server.pid, args.duration)
        spy.wait(120)
        if perf is not None:
            perf.wait(120)
        wall = time.monotonic() - w0
        others = (busy_ticks() - busy0) / CLK_TCK - (children_cpu() - ch0) - b["server_cpu_s"]
        counts, in_libc = pyspy_stages(raw)
        res["profile"] = {"per_s": b["per_s"], "cpu_us": b["server_cpu_us_per_handshake"],
                          "handshakes": b["handshakes"], "other_load_cores": max(0.0, others)
                          / wall, "pyspy": {f"{k[0]}/{k[1]}": v for k, v in counts.items()},
                          "pyspy_libc": {f"{k[0]}/{k[1]}": v for k, v in in_libc.items()}}
        if perf is not None:
            res["profile"]["perf"] = perf_samples(pdata, server.pid, server.engine_tid)
        # 3. system calls per connection
        if have_perf:
            events = ["task-clock", "context-switches", "raw_syscalls:sys_enter"] + \
                [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
            statfile = os.path.join(workdir, "perfstat.csv")
            stat = subprocess.Popen(["perf", "stat", "-x", ",", "-o", statfile, "-e",
                                     ",".join(events), "-p", str(server.pid), "--", "sleep",
                                     str(int(args.count_duration) + 2)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            b = bench(server.port, target, server.pid, args.count_duration)
            stat.wait(120)
            calls = {}
            with open(statfile) as f:
                for row in f:
                    parts = row.strip().split(",")
                    if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                        name = parts[2].replace("syscalls:sys_enter_", "")
                        calls["all" if name == "raw_syscalls:sys_enter" else name] = \
                            float(parts[0])
            res["count"] = {"handshakes": b["handshakes"],
                            "per_conn": {k: v / b["handshakes"] for k, v in calls.items()}}
        return res
    finally:
        server.stop()


def stage_shares(p: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Share of the server's CPU per stage, and the part of it py-spy saw in libc (syscalls)."""
    spy = {tuple(k.split("/")): v for k, v in p["pyspy"].items()}
    libc = {tuple(k.split("/")): v for k, v in p["pyspy_libc"].items()}
    perf = p.get("perf")
    shares: dict[str, float] = {}
    sys_part: dict[str, float] = {}
    for role in ("main", "engine", "other"):
        busy = {k: v for k, v in spy.items() if k[0] == role and k[1] != "wait"}
        n = sum(busy.values())
        if perf:
            cpu = perf["threads"].get(role, 0) / perf["total"]
            wait = perf["waits"].get(role, 0) / perf["total"]
        else:  # no perf: the thread's py-spy samples, waits left out (not measured)
            allbusy = sum(v for k, v in spy.items() if k[1] != "wait")
            cpu, wait = n / allbusy if allbusy else 0.0, 0.0
        if role == "main":
            shares["loop_poll"] = wait
        elif role == "engine":
            shares["engine_wait"] = wait
        for (_, stage), v in busy.items():
            shares[stage] = shares.get(stage, 0.0) + (cpu - wait) * v / n
            sys_part[stage] = sys_part.get(stage, 0.0) + (cpu - wait) * libc.get(
                (role, stage), 0) / n
    return shares, sys_part


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(config: str, rounds: list[dict[str, Any]]) -> str:
    per = [stage_shares(r["profile"]) for r in rounds]
    cpu = med([r["profile"]["cpu_us"] for r in rounds])
    lines = [f"#### {config}: {len(rounds)} rounds, medians", "",
             f"- clean runs (nothing attached): {med([r['clean']['per_s'] for r in rounds]):,.0f}"
             f" handshakes/s, **{med([r['clean']['cpu_us'] for r in rounds]):.0f} server CPU-µs"
             f" per connection** (rounds: "
             + ", ".join(f"{r['clean']['cpu_us']:.0f}" for r in rounds) + "); other processes' "
             f"load {med([r['clean']['other_load_cores'] for r in rounds]):.2f} cores",
             f"- profiled runs (py-spy + perf attached): "
             f"{med([r['profile']['per_s'] for r in rounds]):,.0f} handshakes/s, **{cpu:.0f} "
             "server CPU-µs per connection** (rounds: "
             + ", ".join(f"{r['profile']['cpu_us']:.0f}" for r in rounds) + "); other load "
             f"{med([r['profile']['other_load_cores'] for r in rounds]):.2f} cores"]
    sp = [r["clean"]["split_ticks"] for r in rounds]
    for role in ("main", "engine", "other"):
        tot = [s.get(role + "_user", 0) + s.get(role + "_sys", 0) for s in sp]
        allt = [sum(s.values()) for s in sp]
        ksh = [s.get(role + "_sys", 0) / t if t else 0 for s, t in zip(sp, tot)]
        lines.append(f"- /proc, clean runs: {role} thread "
                     f"{med([t / a for t, a in zip(tot, allt) if a]):.0%} of the server's CPU, "
                     f"{med(ksh):.0%} of it kernel time")
    if all("perf" in r["profile"] for r in rounds):
        ks = [sum(r["profile"]["perf"]["kernel"].values()) / r["profile"]["perf"]["total"]
              for r in rounds]
        lines.append(f"- perf, profiled runs: {med(ks):.0%} of the server's CPU in the kernel")
    clean = med([r["clean"]["cpu_us"] for r in rounds])
    lines += ["", "| stage | where (functions) | share of server CPU | CPU-µs per connection "
              "(profiled run) | of it in system calls | CPU-µs per connection at the clean "
              "runs' total |", "|---|---|---|---|---|---|"]
    for key, label, where in STAGES:
        s = med([p[0].get(key, 0.0) for p in per])
        # The epoll waits are kernel time by construction (perf's figure).
        k = s if key in ("loop_poll", "engine_wait") else med([p[1].get(key, 0.0) for p in per])
        lines.append(f"| {label} | {where} | {s:.1%} | {s * cpu:.1f} | {k * cpu:.1f} | "
                     f"{s * clean:.1f} |")
    lines.append(f"| **total** (medians of each row need not add up) | | 100 % | {cpu:.0f} | "
                 f"| {clean:.0f} |")
    if all("perf" in r["profile"] for r in rounds):
        names: collections.Counter[str] = collections.Counter()
        for r in rounds:
            names.update(r["profile"]["perf"]["syscalls"])
        lines += ["", "Kernel time by system call (perf, profiled runs) and calls per "
                  "connection (perf stat, count runs):", "",
                  "| system call | share of server CPU | CPU-µs per connection | calls per "
                  "connection |", "|---|---|---|---|"]
        for name, _ in names.most_common(16):
            s = med([r["profile"]["perf"]["syscalls"].get(name, 0)
                     / r["profile"]["perf"]["total"] for r in rounds])
            c = med([r.get("count", {}).get("per_conn", {}).get(name, float("nan"))
                     for r in rounds])
            lines.append(f"| {name} | {s:.1%} | {s * cpu:.1f} | "
                         f"{'–' if c != c else f'{c:.2f}'} |")
        total_calls = med([r.get("count", {}).get("per_conn", {}).get("all",
                                                                      float("nan"))
                           for r in rounds])
        cs = med([r.get("count", {}).get("per_conn", {}).get("context-switches",
                                                             float("nan")) for r in rounds])
        lines.append(f"| all system calls | | | {total_calls:.1f} (context switches: "
                     f"{cs:.2f}) |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="s of profiled load per round")
    p.add_argument("--clean-duration", type=float, default=8.0)
    p.add_argument("--count-duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--configs", default="plain,observers")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if not 1 <= args.rounds <= 10 or not 1 <= args.duration <= 120:
        p.error("--rounds 1..10, --duration 1..120")
    if shutil.which("py-spy") is None:
        p.error("py-spy not found: pip install py-spy")
    have_perf = shutil.which("perf") is not None and subprocess.run(
        ["perf", "stat", "-e", "task-clock", "true"], capture_output=True).returncode == 0
    if not have_perf:
        log("perf not usable: per-thread shares from py-spy alone, no kernel figures")
    workdir = tempfile.mkdtemp(prefix="fastsocks-profile-")
    echo = subprocess.Popen([PY, "-m", "fastsocks.bench", "--serve", "echo"],
                            stdout=subprocess.PIPE, text=True)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        line = echo.stdout.readline() if echo.stdout else ""
        m = re.search(r"listening on (\S+)", line)
        if not m:
            raise RuntimeError(f"echo target did not start: {line!r}")
        target = m.group(1)
        for rnd in range(args.rounds):
            for config in args.configs.split(","):
                log(f"round {rnd + 1}/{args.rounds}: {config}")
                r = one_round(config, args, target, workdir, have_perf)
                log(f"  clean {r['clean']['cpu_us']:.0f} µs/conn, profiled "
                    f"{r['profile']['cpu_us']:.0f} µs/conn, other load "
                    f"{r['profile']['other_load_cores']:.2f} cores")
                results.setdefault(config, []).append(r)
    finally:
        echo.terminate()
        echo.wait(10)
    cmd = "python benchmarks/profile_handshake.py " + " ".join(sys.argv[1:])
    print(f"`{cmd.strip()}`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs\n")
    for config, rounds in results.items():
        print(report(config, rounds) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
