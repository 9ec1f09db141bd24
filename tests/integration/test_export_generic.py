"""Any PyTorch model end to end: exported with `python -m export torch` (and the API), served by a real local
tritonserver, answering over HTTP and gRPC what eager PyTorch answers.

Two models defined outside the package: `examples/my_model.py` (token ids + mask with a dynamic length axis ->
pooled features; the README's example, exported through the CLI as a user would) and an MLP with one input
(exported through `export_torch`).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from tritonfleet.contract.serving_plan import BatchingPlan
from tritonfleet.deploy.local import local_server
from tritonfleet.export.devices import plan_devices
from tritonfleet.export.generic import TorchExportOptions, export_torch
from tritonfleet.export.parity import ParityError
from tritonfleet.export.signature import ExportError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"http": httpclient, "grpc": grpcclient}
TOLERANCE = 1e-4

pytestmark = pytest.mark.slow


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def pooler_eager() -> torch.nn.Module:
    """The example's module as its factory builds it (seeded, so the weights are the exported ones)."""
    spec = importlib.util.spec_from_file_location("my_model", PROJECT_ROOT / "examples" / "my_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.build()[0]


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    torch.manual_seed(3)
    return Mlp().eval()


@pytest.fixture(scope="module")
def repository(tmp_path_factory, mlp) -> Path:
    output = tmp_path_factory.mktemp("generic_repository")
    command = [
        sys.executable,
        "-m",
        "export",
        "torch",
        "--factory",
        "examples.my_model:build",
        "--name",
        "pooler",
        "--input-names",
        "IDS,MASK",
        "--output-names",
        "EMBEDDING",
        "--gpus",
        "none",
        "--output",
        str(output),
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity onnx" in result.stdout and "parity torchscript" in result.stdout
    samples = [torch.randn(2, 8), torch.randn(5, 8)]
    report = export_torch(
        mlp,
        samples,
        TorchExportOptions(
            name="mlp",
            output=output,
            devices=plan_devices("none"),
            batching=BatchingPlan(max_batch_size=16, preferred_batch_sizes=(16,), max_queue_delay_us=1000),
        ),
    )
    assert set(report.parity) == {"onnx", "torchscript"}
    return output


@pytest.fixture(scope="module")
def server(repository):
    with local_server(repository) as running:
        yield running


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    return grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


def infer(server, protocol: str, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    module = CLIENTS[protocol]
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    client = client_for(server, protocol)
    try:
        return client.infer(model, tensors, outputs=[module.InferRequestedOutput(output)]).as_numpy(output)
    finally:
        client.close()


def token_batch(batch: int, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 100, size=(batch, tokens), dtype=np.int64)
    mask = np.ones((batch, tokens), np.int64)
    mask[-1, tokens // 3 :] = 0
    return ids, mask


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("model", "names"),
    [("pooler_onnx", ("IDS", "MASK", "EMBEDDING")), ("pooler_torchscript", ("IDS__0", "MASK__1", "EMBEDDING__0"))],
    ids=["onnx", "torchscript"],
)
def test_two_input_model_with_a_dynamic_length_matches_eager(server, protocol, model, names):
    eager = pooler_eager()
    for batch, tokens in ((1, 3), (4, 9), (2, 40)):  # lengths the samples never had
        ids, mask = token_batch(batch, tokens, seed=tokens)
        served = infer(server, protocol, model, dict(zip(names, (ids, mask))), names[2])
        with torch.no_grad():
            expected = eager(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert served.shape == expected.shape == (batch, 16)
        np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("model", "names"),
    [("mlp_onnx", ("INPUT0", "OUTPUT0")), ("mlp_torchscript", ("INPUT0__0", "OUTPUT0__0"))],
    ids=["onnx", "torchscript"],
)
def test_single_input_mlp_matches_eager(server, mlp, protocol, model, names):
    features = np.random.default_rng(5).standard_normal((7, 8)).astype(np.float32)
    served = infer(server, protocol, model, {names[0]: features}, names[1])
    with torch.no_grad():
        expected = mlp(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=TOLERANCE)


def test_served_configs_carry_the_inferred_dynamic_axes(server):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        pooler = client.get_model_config("pooler_onnx")
        mlp = client.get_model_config("mlp_onnx")
    finally:
        client.close()
    assert [(tensor["name"], tensor["dims"]) for tensor in pooler["input"]] == [("IDS", [-1]), ("MASK", [-1])]
    assert [(tensor["name"], tensor["dims"]) for tensor in pooler["output"]] == [("EMBEDDING", [16])]
    assert (
        pooler["max_batch_size"] == 64 and pooler["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    )
    assert [(tensor["name"], tensor["dims"]) for tensor in mlp["input"]] == [("INPUT0", [8])]
    assert mlp["max_batch_size"] == 16


class DataDependentBranch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 3


class Noisy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_a_model_that_cannot_be_exported_is_named_and_leaves_nothing(tmp_path):
    samples = [torch.ones(2, 4), -torch.ones(3, 4)]
    with pytest.raises(ExportError, match=r"^onnx export failed \(dynamo torch.onnx exporter\): \w+") as raised:
        export_torch(DataDependentBranch(), samples, TorchExportOptions(name="branch", output=tmp_path))
    assert "\n" not in str(raised.value)
    with pytest.raises(ExportError, match=r"^torchscript export failed \(torch.jit.trace\): TracingCheckError"):
        export_torch(
            DataDependentBranch(), samples, TorchExportOptions(name="branch", output=tmp_path, formats=("torchscript",))
        )
    assert list(tmp_path.iterdir()) == []


def test_a_parity_failure_gives_the_figures_and_leaves_nothing(tmp_path):
    samples = [torch.ones(2, 4), torch.ones(3, 4)]
    options = TorchExportOptions(name="noisy", output=tmp_path, formats=("torchscript",))
    with pytest.raises(ParityError, match=r"parity torchscript: max abs diff OUTPUT0 \d\.\d+e[+-]\d+ .* FAIL"):
        export_torch(Noisy(), samples, options)
    assert list(tmp_path.iterdir()) == []
