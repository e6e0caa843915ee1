"""The result of a run as people read it: a two-column markdown table.

``--json`` prints the result dict itself instead.
"""

from __future__ import annotations

import json
from typing import Any

from .common import GiB

__all__ = ["format_table"]

# How each protocol carries --target-name.
_NAME_FORMS = {"socks5": "SOCKS5 ATYP X'03'", "socks4": "SOCKS4a",
               "http": "HTTP CONNECT name:port"}


def format_table(result: dict[str, Any]) -> str:
    """The human-readable result: a two-column table."""
    rows: list[tuple[str, str]] = [
        ("mode", result["mode"]),
        ("proxy", result["proxy"] or "none (direct)"),
        ("target", result["target"] + (f" (local, {result['local_target']})"
                                       if result.get("local_target") else "")),
    ]
    if len(result.get("target_listens") or ()) > 1:
        rows.append(("target listens", ", ".join(result["target_listens"])))
    if result.get("target_name"):
        port = result["target"].rpartition(":")[2]
        rows.append(("asked for", f"{result['target_name']}:{port} (a name: "
                     + _NAME_FORMS.get(result.get("protocol", "socks5"), "") + ")"))
    if result["mode"] == "throughput":
        rows += [
            ("streams", str(result["streams"])),
            ("seconds", f"{result['seconds']:.2f}"),
            ("sent", f"{result['bytes'] / GiB:.2f} GiB"),
            ("throughput", f"{result['gbit_per_s']:.2f} Gbit/s"),
            ("per stream", ", ".join(f"{x:.2f}" for x in result["per_stream_gbit_per_s"])
             + " Gbit/s"),
            ("generator CPU", _opt(result.get("generator_cpu_s_per_gib"), "{:.3f} CPU-s/GiB")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", f"{result['server_cpu_s']:.2f} s = "
                         + _opt(result.get("server_cpu_s_per_gib"), "{:.3f} CPU-s/GiB")))
    elif result["mode"] == "handshake":
        rows += [
            ("concurrency", str(result["concurrency"])),
            ("engine", result["engine"]),
            ("seconds", f"{result['seconds']:.2f}"),
            ("handshakes", str(result["handshakes"])),
            ("rate", f"{result['per_s']:.0f} handshakes/s"),
            ("latency p50", f"{result['p50_ms']:.3f} ms"),
            ("latency p99", f"{result['p99_ms']:.3f} ms"),
            ("generator CPU", _opt(result.get("generator_cpu_us_per_handshake"),
                                   "{:.1f} CPU-µs/handshake")
             + _opt(result.get("generator_cpu_share"), " ({:.0%} of a core")
             + _opt(result.get("generator_cpu_system_share"), ", {:.0%} of it in the kernel)")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", _opt(result.get("server_cpu_us_per_handshake"),
                                            "{:.1f} CPU-µs/handshake")))
    elif result["mode"] == "udp-rtt":
        rows += [
            ("associations", f"{result['concurrency']}, one {result['size']}-byte datagram "
             "in flight on each" + (f"; relay {result['relay']}" if result.get("relay") else "")),
            ("seconds", f"{result['seconds']:.2f}"),
            ("round trips", f"{result['round_trips']} ({result['lost']} lost, "
             f"{result['late']} late)"),
            ("rate", f"{result['per_s']:.0f} round trips/s"),
            ("latency p50", f"{result['p50_us']:.1f} µs"),
            ("latency p99", f"{result['p99_us']:.1f} µs"),
            ("generator CPU", _opt(result.get("generator_cpu_us_per_round_trip"),
                                   "{:.1f} CPU-µs/round trip")
             + _opt(result.get("generator_cpu_share"), " ({:.0%} of a core)")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", _opt(result.get("server_cpu_us_per_round_trip"),
                                            "{:.1f} CPU-µs/round trip")))
    elif result["mode"] == "udp-oneway":
        pace = "unpaced" if result["rate"] is None else f"paced at {result['rate']:g}/s"
        rows += [
            ("datagrams", f"{result['size']} bytes, {pace}"
             + (f"; relay {result['relay']}" if result.get("relay") else "")),
            ("seconds", f"{result['seconds']:.2f}"),
            ("sent", f"{result['sent']} = {result['sent_per_s']:.0f}/s"
             + (f" ({result['send_errors']} send errors)" if result["send_errors"] else "")),
            ("received by sink", "n/a (the target does not report)" if result["received"] is None
             else f"{result['received']} = {result['received_per_s']:.0f}/s"),
            ("loss", _opt(result.get("loss_pct"), "{:.2f} %")
             + ("" if result.get("dropped_at_sink") is None
                else f"; dropped at the sink's socket: {result['dropped_at_sink']}")
             + ("" if result.get("dropped_at_relay") is None
                else f"; at the relay's socket: {result['dropped_at_relay']}")),
            ("generator CPU", _opt(result.get("generator_cpu_us_per_datagram"),
                                   "{:.2f} CPU-µs/datagram")
             + _opt(result.get("generator_cpu_share"), " ({:.0%} of a core)")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", _opt(result.get("server_cpu_us_per_datagram"),
                                            "{:.2f} CPU-µs/datagram received")))
    else:
        rows += [
            ("connections", f"{result['opened']} open of {result['requested']} "
             f"in {result['open_seconds']:.2f} s"),
            ("held", f"{result['held_seconds']:g} s; {result['sampled_alive_after_hold']}/"
             f"{result['sampled']} sampled still echo"),
        ]
        if "server_rss_kib_delta" in result:
            rows.append(("server RSS", f"{result['server_rss_kib_before']} -> "
                         f"{result['server_rss_kib_held']} KiB = "
                         + _opt(result.get("server_kib_per_connection"), "{:.2f} KiB/connection")))
    errors = result.get("errors")
    if errors:
        rows.append(("errors", json.dumps(errors)))
    if result.get("first_error"):
        rows.append(("first error", result["first_error"]))
    if result.get("local_target") == "thread":  # the target's CPU is this process's too
        rows = [("generator+target CPU" if k == "generator CPU" else k, v) for k, v in rows]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':{width}} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {k:{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _opt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)
