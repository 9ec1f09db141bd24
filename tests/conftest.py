"""Shared fixtures: a real local tritonserver (no mocks) and an exported ESM-2 repository.

Integration tests start servers through `triton_server_factory`; every server binds 127.0.0.1 on free ports and
is stopped at the end of the test (or session, for the shared ESM-2 server).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tritonfleet.deploy.local import LocalTritonServer, ServerOptions

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ESM2_TEST_SIZE = os.environ.get("TRITONFLEET_TEST_ESM2_SIZE", "8M")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/unit are `unit`, under tests/integration `integration`; `gpu` tests skip without CUDA."""
    has_cuda = _cuda_available()
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in path.parts:
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def triton_server_factory() -> Iterator[Callable[..., LocalTritonServer]]:
    """Start real tritonservers: `factory(repository, **ServerOptions fields)`; all are stopped at session end."""
    started: list[LocalTritonServer] = []

    def start(model_repository: Path | str, **options) -> LocalTritonServer:
        for port in ("http_port", "grpc_port", "metrics_port"):
            options.setdefault(port, 0)
        # Triton waits for open HTTP keep-alive connections on shutdown; tests close their clients, this bounds it.
        options.setdefault("exit_timeout_s", 10)
        server = LocalTritonServer(ServerOptions(model_repository=Path(model_repository), **options))
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def esm2_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ESM-2 repository exported once per session with random weights (no downloads here)."""
    output = tmp_path_factory.mktemp("esm2_repository")
    subprocess.run(
        [sys.executable, "-m", "tritonfleet.export", "esm2", "--random-init", ESM2_TEST_SIZE, "--output", str(output)],
        cwd=PROJECT_ROOT,
        check=True,
        timeout=900,
    )
    return output


@pytest.fixture(scope="session")
def esm2_server(esm2_repository: Path, triton_server_factory) -> LocalTritonServer:
    """One real tritonserver serving the exported ESM-2 repository for the whole session."""
    return triton_server_factory(esm2_repository)
