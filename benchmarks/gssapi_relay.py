"""What GSSAPI (RFC 1961) protection costs, against plain CONNECT on the same server.

    python benchmarks/gssapi_relay.py [--repeat 3] [--duration 3]

(Not named gssapi.py: run as a script, that name would shadow python-gssapi.)

Makes a throwaway Kerberos realm (tests/kerberos.py: its own krb5.conf, a
KDC on 127.0.0.1) and starts one fastsocks (one worker, splice engine where
built) with ``--gssapi-keytab`` and ``--allow-open``, so that no-auth and
GSSAPI clients use the very same process, and a reference fastsocks without
GSSAPI (``--allow-open`` only) for plain connections.  Then, alternating, for
``--repeat`` rounds:

* one bulk stream for ``--duration`` seconds, each way (client → target:
  the server unwraps each MTYP 3 message; target → client: it wraps each
  chunk), for plain no-auth CONNECT (the splice engine), GSSAPI integrity
  (level 1) and GSSAPI confidentiality (level 2): throughput, and server
  CPU-seconds per GiB relayed (/proc/PID/stat, user + system); plain also on
  the reference server ("reference"), to show that enabling GSSAPI leaves
  plain connections as they were;
* 200 sequential handshakes each, plain (both servers) and GSSAPI (Kerberos
  AP-REQ/AP-REP, protection level, wrapped request and reply): server CPU-µs
  per handshake;
* in this process, the time of one acceptor step (gss_accept_sec_context on
  an AP-REQ from the keytab), the figure behind running the exchange on the
  event loop;
* in this process, CPU-s per GiB of GSS_Wrap alone at each level, against
  fastsocks' own ``Conversation.wrap`` (chunking and framing included) on
  the same context: what the crypto costs, and what the relay adds to it.

The client is python-gssapi, wrapping and unwrapping in this process on the
same 2 cores as the server, so GSSAPI throughput is a lower bound set partly
by the client; server CPU per GiB is the figure to compare.  Prints medians
as JSON; benchmarks/RESULTS.md records them with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from kerberos import KerberosRealm  # noqa: E402 - the test suite's realm helper

GIB = 1024 ** 3
CHUNK = 60000  # plain bytes per MTYP 3 message from the client (token < 65,536)
HANDSHAKES = 200


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


class Client:
    """No-auth (level None) or an RFC 1961 client at level 1 or 2."""

    def __init__(self, proxy: tuple[str, int], ccache: Path, level: int | None) -> None:
        import gssapi

        self.gssapi = gssapi
        self.sock = socket.create_connection(proxy, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.level = level
        self.ccache = ccache
        self.ctx = None

    def message(self) -> tuple[int, bytes]:
        head = recv_exact(self.sock, 2)
        if head[1] == 0xFF:
            raise RuntimeError("the server aborted")
        (n,) = struct.unpack("!H", recv_exact(self.sock, 2))
        return head[1], recv_exact(self.sock, n)

    def frame(self, mtyp: int, token: bytes) -> bytes:
        return bytes((1, mtyp)) + struct.pack("!H", len(token)) + token

    def connect(self, target: tuple[str, int]) -> None:
        request = (b"\x05\x01\x00\x01" + socket.inet_aton(target[0])
                   + struct.pack("!H", target[1]))
        if self.level is None:
            self.sock.sendall(b"\x05\x01\x00")
            assert recv_exact(self.sock, 2) == b"\x05\x00"
            self.sock.sendall(request)
            assert recv_exact(self.sock, 10)[1] == 0
            return
        gssapi = self.gssapi
        self.sock.sendall(b"\x05\x01\x01")
        assert recv_exact(self.sock, 2) == b"\x05\x01"
        creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{self.ccache}"})
        flags = (gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.integrity
                 | gssapi.RequirementFlag.confidentiality)
        ctx = gssapi.SecurityContext(name=gssapi.Name("rcmd@127.0.0.1",
                                                      gssapi.NameType.hostbased_service),
                                     creds=creds, usage="initiate", flags=flags)
        token = ctx.step()
        while True:
            self.sock.sendall(self.frame(1, token))
            if ctx.complete:
                break
            _, reply = self.message()
            token = ctx.step(reply)
            if ctx.complete:
                break
        self.sock.sendall(self.frame(2, ctx.wrap(bytes((self.level,)), False).message))
        _, chosen = self.message()
        assert ctx.unwrap(chosen).message[0] == self.level
        self.ctx = ctx
        self.send(request)
        reply = b""
        while len(reply) < 10:
            reply += self.receive()
        assert reply[1] == 0

    def send(self, data: bytes) -> None:
        if self.ctx is None:
            self.sock.sendall(data)
            return
        conf = self.level == 2
        wrap = self.gssapi.raw.wrap
        self.sock.sendall(b"".join(self.frame(3, wrap(self.ctx, data[i:i + CHUNK], conf).message)
                                   for i in range(0, len(data), CHUNK)))

    def receive(self) -> bytes:
        if self.ctx is None:
            return self.sock.recv(262144)
        _, token = self.message()
        return self.gssapi.raw.unwrap(self.ctx, token).message


def sink_and_source() -> tuple[socket.socket, socket.socket, list[int]]:
    """A target that counts what it gets (sink) and one that sends until closed (source)."""
    got = [0]
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(64)
    source = socket.socket()
    source.bind(("127.0.0.1", 0))
    source.listen(64)

    def drain(conn: socket.socket) -> None:
        with conn:
            while True:
                data = conn.recv(262144)
                if not data:
                    return
                got[0] += len(data)

    def pour(conn: socket.socket) -> None:
        block = os.urandom(262144)
        with conn:
            try:
                while True:
                    conn.sendall(block)
            except OSError:
                return

    def serve(listener: socket.socket, handler: object) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, args=(sink, drain), daemon=True).start()
    threading.Thread(target=serve, args=(source, pour), daemon=True).start()
    return sink, source, got


def stream(proxy: tuple[str, int], pid: int, ccache: Path, level: int | None,
           target: tuple[str, int], direction: str, seconds: float,
           sunk: list[int]) -> dict[str, float]:
    client = Client(proxy, ccache, level)
    client.connect(target)
    block = os.urandom(4 * CHUNK)
    moved = 0
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    if direction == "up":
        start_sunk = sunk[0]
        while time.monotonic() - t0 < seconds:
            client.send(block)
        client.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 30
        sent = 0  # what the sink got is the figure: it waits for the relay to finish
        while time.monotonic() < deadline:
            now = sunk[0] - start_sunk
            if now == sent and now > 0:
                break
            sent = now
            time.sleep(0.2)
        moved = sunk[0] - start_sunk
    else:
        while time.monotonic() - t0 < seconds:
            moved += len(client.receive())
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    client.sock.close()
    return {"gbit_s": moved * 8 / wall / 1e9, "cpu_s_per_gib": cpu / (moved / GIB)}


def handshakes(proxy: tuple[str, int], pid: int, ccache: Path, level: int | None,
               target: tuple[str, int]) -> float:
    cpu0 = cpu_seconds(pid)
    for _ in range(HANDSHAKES):
        client = Client(proxy, ccache, level)
        client.connect(target)
        client.sock.close()
    return (cpu_seconds(pid) - cpu0) / HANDSHAKES * 1e6


def acceptor_step_us(realm: KerberosRealm, ccache: Path) -> float:
    import gssapi

    os.environ["KRB5CCNAME"] = f"FILE:{ccache}"
    creds = gssapi.Credentials(usage="accept", store={"keytab": str(realm.keytab)})
    best = []
    for _ in range(50):
        ini = gssapi.SecurityContext(name=gssapi.Name("rcmd@127.0.0.1",
                                                      gssapi.NameType.hostbased_service),
                                     usage="initiate")
        token = ini.step()
        acc = gssapi.SecurityContext(creds=creds, usage="accept")
        t0 = time.perf_counter()
        acc.step(token)
        best.append(time.perf_counter() - t0)
    return statistics.median(best) * 1e6


def start_server(log_path: Path, args: list[str],
                 env: dict[str, str]) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """A one-worker fastsocks on 127.0.0.1 port 0 with ``--allow-open`` plus ``args``."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", "1",
             "--allow-open", "--log-level", "warning", *args],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if f"pid={proc.pid}," in line:
                return proc, ("127.0.0.1", int(line.split()[3].rsplit(":", 1)[1]))
    proc.kill()
    raise SystemExit(f"fastsocks did not listen: {log_path.read_text()}")


def wrap_cost(realm: KerberosRealm, ccache: Path, rounds: int = 60,
              repeat: int = 5) -> dict[str, float]:
    """CPU-s/GiB of raw GSS_Wrap and of Conversation.wrap, per level, 256 KiB at a time.

    The two alternate ``repeat`` times on the same context; medians.
    """
    import gssapi

    from fastsocks.codec import gss_frame
    from fastsocks.control.gssapi import Acceptor

    acceptor = Acceptor(str(realm.keytab), None, "integrity")
    creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})
    flags = (gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.integrity
             | gssapi.RequirementFlag.confidentiality)
    data = os.urandom(262144)
    out: dict[str, float] = {}
    for level, name in ((1, "integrity"), (2, "confidentiality")):
        conv = acceptor.conversation()
        ini = gssapi.SecurityContext(name=gssapi.Name("rcmd@127.0.0.1",
                                                      gssapi.NameType.hostbased_service),
                                     creds=creds, usage="initiate", flags=flags)
        conv.receive_data(gss_frame(1, ini.step()))
        reply, _ = conv.advance()
        ini.step(reply[4:])
        conv.receive_data(gss_frame(2, ini.wrap(bytes((level,)), False).message))
        conv.advance()
        assert conv.level == level
        wrap, ctx, chunk, conf = gssapi.raw.wrap, conv.context, conv.chunk, level == 2
        gib = rounds * len(data) / GIB
        raw_runs, ours_runs = [], []
        for _ in range(repeat):
            t0 = time.process_time()
            for _ in range(rounds):
                for i in range(0, len(data), chunk):
                    wrap(ctx, data[i:i + chunk], conf)
            t1 = time.process_time()
            for _ in range(rounds):
                conv.wrap(data)
            t2 = time.process_time()
            raw_runs.append((t1 - t0) / gib)
            ours_runs.append((t2 - t1) / gib)
        out[f"{name}_gss_wrap_cpu_s_per_gib"] = statistics.median(raw_runs)
        out[f"{name}_conversation_wrap_cpu_s_per_gib"] = statistics.median(ours_runs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fastsocks-gssapi-bench-") as tmp:
        realm = KerberosRealm.create(Path(tmp) / "realm")
        try:
            os.environ.update({k: v for k, v in realm.env().items()
                               if k in ("KRB5_CONFIG", "KRB5RCACHEDIR")})
            ccache = realm.kinit("alice", realm.add_user("alice"), Path(tmp) / "alice.ccache")
            gss = start_server(Path(tmp) / "server.log",
                               ["--gssapi-keytab", str(realm.keytab)], realm.env())
            reference = start_server(Path(tmp) / "reference.log", [], {})
            try:
                sink, source, sunk = sink_and_source()
                results: dict[str, list[float]] = {}
                runs = {"reference": (reference, None), "plain": (gss, None),
                        "integrity": (gss, 1), "confidentiality": (gss, 2)}
                for _ in range(args.repeat):
                    for name, ((proc, proxy), level) in runs.items():
                        for direction, target in (("up", sink.getsockname()),
                                                  ("down", source.getsockname())):
                            r = stream(proxy, proc.pid, ccache, level, target, direction,
                                       args.duration, sunk)
                            for key, value in r.items():
                                results.setdefault(f"{name}_{direction}_{key}", []).append(value)
                    for name, ((proc, proxy), level) in (("reference", runs["reference"]),
                                                         ("plain", runs["plain"]),
                                                         ("gssapi", runs["integrity"])):
                        results.setdefault(f"{name}_cpu_us_per_handshake", []).append(
                            handshakes(proxy, proc.pid, ccache, level, sink.getsockname()))
                results["acceptor_step_us"] = [acceptor_step_us(realm, ccache)]
                for key, value in wrap_cost(realm, ccache).items():
                    results[key] = [value]
            finally:
                for proc, _ in (gss, reference):
                    proc.terminate()
                    proc.wait(10)
        finally:
            realm.close()
    medians = {k: round(statistics.median(v), 3) for k, v in results.items()}
    for name in ("plain", "integrity", "confidentiality"):
        for direction in ("up", "down"):
            medians[f"{name}_{direction}_throughput_vs_reference"] = round(
                medians[f"{name}_{direction}_gbit_s"] / medians[f"reference_{direction}_gbit_s"],
                3)
    print(json.dumps({"repeat": args.repeat, "duration_s": args.duration, "medians": medians,
                      "runs": {k: [round(x, 3) for x in v] for k, v in results.items()}},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
