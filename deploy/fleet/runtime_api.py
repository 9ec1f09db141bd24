"""HAProxy's runtime API (the admin stats socket): drain, weights, addresses, per-server counters.

Every fleet server exists in both backends (`triton_http`, `triton_grpc`) under one name; the calls here act on
both, so a replica is drained, weighted or moved as one.
"""

from __future__ import annotations

import csv
import io
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.deploy.fleet.haproxy import BACKENDS, GRPC_BACKEND, HTTP_BACKEND

SERVER_STATES = ("ready", "drain", "maint")
_TABLE_ENTRY = re.compile(r"key=(\d+) .*?gpc0=(\d+) gpc0_rate\(\d+\)=(\d+) http_req_rate\(\d+\)=(\d+)")


class RuntimeApiError(RuntimeError):
    """HAProxy refused a runtime command (its answer is the message)."""


@dataclass(frozen=True)
class ServerStats:
    """One server of one backend, from `show stat`.

    Attributes:
        status: UP, DOWN, MAINT, DRAIN, "UP 1/2", "DOWN 1/2", NOLB, ...
        current: requests in flight (`scur`); total: requests sent (`stot`); weight: current weight.
        http_5xx: 5xx answers (HAProxy's own 502/504 included); check_status: last health-check status.
    """

    backend: str
    name: str
    server_id: int
    status: str
    current: int
    total: int
    weight: int
    http_5xx: int
    check_status: str
    address: str

    @property
    def up(self) -> bool:
        return self.status.startswith("UP") or self.status == "DRAIN"

    @property
    def in_rotation(self) -> bool:
        """Receives new requests: up, not drained, weight above 0."""
        return self.status.startswith("UP") and self.weight > 0


class RuntimeApi:
    """Commands to one HAProxy over its stats socket (`stats socket ... level admin`)."""

    def __init__(self, socket_path: Path | str, timeout_s: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    def command(self, text: str) -> str:
        """Send one command; returns HAProxy's answer (raises RuntimeApiError on a refusal)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            sock.connect(self.socket_path)
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        answer = b"".join(chunks).decode(errors="replace")
        lowered = answer.lower()
        if any(word in lowered for word in ("unknown command", "no such", "require", "invalid", "not found")):
            raise RuntimeApiError(f"haproxy refused {text!r}: {answer.strip()}")
        return answer

    # -- per replica (both backends) ------------------------------------------------------------------------------
    def set_state(self, server: str, state: str) -> None:
        """ready | drain (no new requests, in-flight ones finish) | maint (out, checks stopped)."""
        if state not in SERVER_STATES:
            raise ValueError(f"state must be one of {SERVER_STATES}, got {state!r}")
        for backend in BACKENDS:
            self.command(f"set server {backend}/{server} state {state}")

    def set_weight(self, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise ValueError(f"weight must be 0..256, got {weight}")
        for backend in BACKENDS:
            self.command(f"set weight {backend}/{server} {weight}")

    def set_address(self, server: str, host: str, http_port: int, grpc_port: int) -> None:
        """Point a slot at a replica (the gRPC server keeps being checked on the replica's HTTP port)."""
        self.command(f"set server {HTTP_BACKEND}/{server} addr {host} port {http_port}")
        self.command(f"set server {GRPC_BACKEND}/{server} addr {host} port {grpc_port}")
        self.command(f"set server {GRPC_BACKEND}/{server} check-port {http_port}")

    def shutdown_sessions(self, backend: str, server: str) -> None:
        """End every request in flight on one server of one backend (the clients see them cut)."""
        self.command(f"shutdown sessions server {backend}/{server}")

    # -- reading --------------------------------------------------------------------------------------------------
    def stats(self) -> list[ServerStats]:
        """Every server of both fleet backends."""
        text = self.command("show stat").lstrip("# ")
        rows = []
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") not in BACKENDS or row.get("svname") in ("BACKEND", "FRONTEND"):
                continue
            rows.append(
                ServerStats(
                    backend=row["pxname"],
                    name=row["svname"],
                    server_id=_int(row.get("sid")),
                    status=row.get("status", ""),
                    current=_int(row.get("scur")),
                    total=_int(row.get("stot")),
                    weight=_int(row.get("weight")),
                    http_5xx=_int(row.get("hrsp_5xx")),
                    check_status=row.get("check_status", ""),
                    address=row.get("addr", ""),
                )
            )
        return rows

    def server_stats(self, server: str) -> dict[str, ServerStats]:
        """`{backend: stats}` of one replica."""
        return {row.backend: row for row in self.stats() if row.name == server}

    def error_counts(self, backend: str = HTTP_BACKEND) -> dict[str, tuple[int, int]]:
        """`{server: (500/502/504 answers, requests)}` over the stick table's window (see haproxy.py)."""
        ids = {row.server_id: row.name for row in self.stats() if row.backend == backend}
        counts = {}
        for match in _TABLE_ENTRY.finditer(self.command(f"show table {backend}")):
            server = ids.get(int(match.group(1)))
            if server is not None:
                counts[server] = (int(match.group(3)), int(match.group(4)))
        return counts


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
