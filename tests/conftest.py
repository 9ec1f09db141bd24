"""Shared fixtures: a real local tritonserver (no mocks) and an exported ESM-2 repository.

Integration tests start servers through `triton_server_factory`; every server binds 127.0.0.1 on free ports and
is stopped at the end of the test (or session, for the shared ESM-2 server).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tritonfleet.deploy.local import LocalTritonServer, local_server
from tritonfleet.export.esm2 import export_esm2

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
    """Start real tritonservers: `factory(repository, **ServerOptions fields)` is `local_server` (free loopback
    ports, 10 s shutdown grace; tests close their clients, as Triton waits for open keep-alive connections on
    shutdown); all are stopped at session end, last started first."""
    with contextlib.ExitStack() as servers:

        def start(model_repository: Path | str, **options: Any) -> LocalTritonServer:
            return servers.enter_context(local_server(model_repository, **options))

        yield start


@pytest.fixture(scope="session")
def esm2_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 ESM-2 repository (served outputs must equal eager within 1e-4) exported once per session with random
    weights (no downloads here); the int8/bf16 variants have their own tests (test_export_variants.py)."""
    output = tmp_path_factory.mktemp("esm2_repository")
    # execution_cap=False keeps max_batch_size 64 on CPU: these tests check batched execution (what GPU plans run);
    # the CPU plan's cap of one sequence per execution is tested on its own repository (test_traffic_plan.py).
    export_esm2(output, random_init=ESM2_TEST_SIZE, gpus="auto", precision="fp32", execution_cap=False)
    return output


@pytest.fixture(scope="session")
def esm2_server(esm2_repository: Path, triton_server_factory) -> LocalTritonServer:
    """One real tritonserver serving the exported ESM-2 repository for the whole session."""
    return triton_server_factory(esm2_repository)
