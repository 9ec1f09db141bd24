"""The python-backend stub processes of a local tritonserver, and how many a model should have.

Locally every model instance runs in a `triton_python_backend_stub` child of the server (python models and our
Python-based onnxruntime/pytorch backends alike). Its argv names the model file and the instance, so a scan of the
server's children (psutil) says which instances are alive; the served config says how many there should be.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.model_config import instance_count

LOGGER = logging.getLogger(__name__)
STUB_EXECUTABLE = "triton_python_backend_stub"
# Process states that cannot serve a request.
NOT_SERVING_STATUSES = frozenset(
    {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}
)
STUB_IN_ERROR = "Stub process '"

ModelVersion = tuple[str, str]


@dataclass(frozen=True)
class StubProcess:
    """A python-backend stub: one model instance of one model version; `status` is psutil's process status."""

    pid: int
    model: str
    version: str
    instance: str
    status: str

    @property
    def serving(self) -> bool:
        return self.status not in NOT_SERVING_STATUSES


def parse_stub_argv(argv: Sequence[str]) -> tuple[str, str, str] | None:
    """(model, version, instance name) from a stub's argv, or None when it is not a model-instance stub.

    The python backend starts `triton_python_backend_stub <repo>/<model>/<version>/<file> <shm region> <shm size>
    <shm growth> <parent pid> <backend dir> <ipc size> <instance name> <runtime dir>` (stub_launcher.cc).
    """
    if len(argv) < 9 or not argv[0].endswith(STUB_EXECUTABLE):
        return None
    model_file = Path(argv[1])
    if len(model_file.parts) < 3:
        return None
    return model_file.parent.parent.name, model_file.parent.name, argv[8]


def list_stub_processes(server_pid: int) -> list[StubProcess]:
    """The stubs among the children of `server_pid`; processes vanishing meanwhile (and zombies, whose argv is
    gone) are left out, so they count as missing."""
    try:
        children = psutil.Process(server_pid).children()
    except psutil.Error:
        return []
    stubs = []
    for child in children:
        try:
            with child.oneshot():
                parsed = parse_stub_argv(child.cmdline())
                status = child.status()
        except psutil.Error:
            continue
        if parsed is not None:
            stubs.append(StubProcess(child.pid, *parsed, status=status))
    return stubs


def kill_model_stubs(server_pid: int, model: str) -> list[StubProcess]:
    """SIGKILL every stub of `model` (hung or stopped ones cannot be unloaded); returns those it killed."""
    killed = []
    for stub in list_stub_processes(server_pid):
        if stub.model != model:
            continue
        with contextlib.suppress(psutil.Error):
            psutil.Process(stub.pid).kill()
            killed.append(stub)
            LOGGER.warning("killed stub %s (pid %d, %s)", stub.instance, stub.pid, stub.status)
    return killed


def runs_in_stub(config: mc.ModelConfig) -> bool:
    """Whether the model's instances are python-backend stubs (python models and our Python-based backends)."""
    return config.backend == "python" or config.runtime == "model.py"


def expected_instance_count(config: mc.ModelConfig) -> int:
    """Stub processes a loaded version of this served config has (0 for a model that runs in none)."""
    return instance_count(config) if runs_in_stub(config) else 0


def missing_instances(expected: Mapping[ModelVersion, int], stubs: Iterable[StubProcess]) -> dict[ModelVersion, int]:
    """How many instances each model version lacks (only versions with a deficit)."""
    serving: dict[ModelVersion, int] = {}
    for stub in stubs:
        if stub.serving:
            serving[(stub.model, stub.version)] = serving.get((stub.model, stub.version), 0) + 1
    return {key: count - serving.get(key, 0) for key, count in expected.items() if serving.get(key, 0) < count}


def model_named_in_error(message: str) -> str | None:
    """The model of the stub named in "Stub process '<model>_<group>_<instance>' is not healthy", if any."""
    start = message.find(STUB_IN_ERROR)
    if start < 0:
        return None
    instance = message[start + len(STUB_IN_ERROR) :].split("'", 1)[0]
    parts = instance.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else None
