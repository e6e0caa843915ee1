"""``fastsocks bench``: a load generator for SOCKS5 servers (and for fastsocks).

Five modes, each through a SOCKS5 server (``--proxy``) or, without one,
straight to the target, which is the reference a proxy is compared with; one
module each:

``throughput`` (throughput.py)
    ``--streams N`` TCP streams to a sink, sending as fast as they can;
    Gbit/s.
``handshake`` (handshake.py)
    ``--concurrency C`` workers looping connect, SOCKS5 negotiation, CONNECT,
    a 64-byte echo, close; handshakes/s and p50/p99 latency.  With
    ``--target-name NAME`` the CONNECT asks for NAME (ATYP X'03'), so the
    proxy's name path (its DNS cache) is measured.
``idle`` (idle.py)
    ``--connections N`` relayed connections held idle for ``--duration``
    seconds; the server's memory per connection.
``udp-rtt`` (udp_rtt.py)
    ``--concurrency N`` UDP associations, each with one datagram in flight to
    a UDP echo; round trips/s and p50/p99 latency.
``udp-oneway`` (udp_oneway.py)
    One association sending to a UDP sink, unpaced or ``--rate N``;
    datagrams/s sent and received, and where the rest was lost.

Without ``--target`` the tool starts its own sink or echo server on 127.0.0.1
port 0 (targets.py, udp_targets.py): in a thread of this process for the TCP
modes, in a child process for the UDP modes (``--local-target`` chooses;
benchmarks/RESULTS.md has the measurements behind the defaults).  With
``--server-pid PID`` (Linux) it also reads the server's CPU time and memory
from /proc (proc.py: the process and all its descendants) and reports server
CPU-s per GiB, CPU-µs per handshake and KiB per idle connection, CPU-µs per
UDP round trip and per datagram.

SOCKS5 is spoken through the client role of ``fastsocks.net.client``, the
one upstream chaining uses, on the codec's client side; any deviation from
RFC 1928/1929 raises :class:`SocksError` naming the step and, for a failed
request, the reply code.  The result is a dict (measure.py), printed as a
table or JSON (report.py); cli.py is the command line.

Everything is meant for loopback: every loop is bounded in time and in count.
"""

from __future__ import annotations

from ..net.client import SocksError
from .cli import main
from .client import UdpPath, open_connection, parse_udp_reply, udp_header
from .common import (
    BUFFER_SIZE,
    ENGINES,
    IO_TIMEOUT,
    MAX_CONCURRENCY,
    MAX_CONNECTIONS,
    MAX_DURATION,
    MAX_STREAMS,
    MODES,
    PAYLOAD_SIZE,
    UDP_MAX_ASSOCIATIONS,
    UDP_MAX_RATE,
    UDP_MAX_SIZE,
    UDP_ONEWAY_SIZE,
    UDP_RTT_SIZE,
    UDP_RTT_TIMEOUT,
    Config,
)
from .measure import run
from .proc import CLK_TCK, ProcessTree, udp_socket_drops
from .report import format_table
from .targets import TARGET_KINDS, LocalTarget, name_hosts, serve
from .udp_targets import udp_sink_stats

__all__ = [
    "SocksError",
    "Config",
    "open_connection",
    "UdpPath",
    "udp_header",
    "parse_udp_reply",
    "LocalTarget",
    "name_hosts",
    "TARGET_KINDS",
    "serve",
    "udp_sink_stats",
    "udp_socket_drops",
    "ProcessTree",
    "CLK_TCK",
    "run",
    "format_table",
    "main",
    "BUFFER_SIZE",
    "PAYLOAD_SIZE",
    "IO_TIMEOUT",
    "MAX_STREAMS",
    "MAX_CONCURRENCY",
    "MAX_CONNECTIONS",
    "MAX_DURATION",
    "ENGINES",
    "MODES",
    "UDP_RTT_SIZE",
    "UDP_ONEWAY_SIZE",
    "UDP_MAX_SIZE",
    "UDP_RTT_TIMEOUT",
    "UDP_MAX_ASSOCIATIONS",
    "UDP_MAX_RATE",
]
