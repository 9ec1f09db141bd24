"""The serve helper of the studies: a local tritonserver (deploy.local's launcher) on free loopback ports, and free
loopback ports for a study's other servers (Model Analyzer's tritonserver, Prometheus)."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tritonfleet.deploy.local import LocalTritonServer, local_server
from tritonfleet.loadtest.studies.repository import copy_repository

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def serve(repository: Path | str, *, copy: bool = False, **options: Any) -> Iterator[LocalTritonServer]:
    """A ready server for `repository` (from a temporary copy with `copy`, so the server's edits, e.g. a config
    override, never reach the original), stopped on exit; `options` are `ServerOptions` fields."""
    if not copy:
        with local_server(repository, **options) as server:
            yield server
        return
    with tempfile.TemporaryDirectory(prefix="tritonfleet-served-") as folder:
        served = copy_repository(Path(repository), Path(folder) / "repository")
        with local_server(served, **options) as server:
            yield server


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct free loopback ports (all sockets held open together, so no port is picked twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return tuple(sock.getsockname()[1] for sock in sockets)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
