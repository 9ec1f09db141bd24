"""Engine variants of ESM-2 (fused-attention ONNX, int8, bf16): each passes its quality gates at export (cosine and
batch invariance), is served by the local runtime over HTTP and gRPC exactly as the gated file computes it, with a
protein's vectors alone equal to its vectors inside a padded mixed batch (fp32 and int8), and a variant below a gate
is refused with the figures, leaving no model file behind.

Weights: RANDOM (ESM-2 8M architecture, seed 0), built from the config; no checkpoint is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tritonfleet.contract.esm2_tokens import encode_batch, random_proteins
from tritonfleet.contract.model_config import read_config
from tritonfleet.contract.serving_plan import BatchingPlan
from tritonfleet.deploy.local import local_server
from tritonfleet.export import parity
from tritonfleet.export.devices import plan_devices
from tritonfleet.export.esm2 import export_esm2
from tritonfleet.export.esm2.model import build_esm2
from tritonfleet.export.onnx_export import onnx_runner
from tritonfleet.export.parity import INVARIANCE_TOLERANCE, InvarianceGateError, ParityError, min_cosine
from tritonfleet.export.signature import ExportError
from tritonfleet.export.torchscript import torchscript_runner

CLIENTS = {"http": httpclient, "grpc": grpcclient}
# One instance per model keeps the servers light; the variants, not the plan, are under test here. Batches of up to
# 8 (a CPU plan caps executions at 1 sequence): the served batch must give each protein what it gets alone.
ONE_INSTANCE = {
    "devices": plan_devices("none", cpu_instances=1, cpu_threads=1),
    "parity_samples": 2,
    "batching": BatchingPlan(max_batch_size=8, preferred_batch_sizes=(8,)),
}
VARIANTS = {
    "int8": {"precision": "int8"},
    "bf16": {"precision": "bf16", "formats": ("torchscript",)},
    "fused-fp32": {"precision": "fp32", "formats": ("onnx",)},
}
SERVED = {"onnx": ("esm2_onnx", "INPUT_IDS", "ATTENTION_MASK", "EMBEDDING", "RESIDUE_EMBEDDINGS")}
SERVED["torchscript"] = (
    "esm2_torchscript",
    "INPUT_IDS__0",
    "ATTENTION_MASK__1",
    "EMBEDDING__0",
    "RESIDUE_EMBEDDINGS__1",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    return random_proteins(3, np.random.default_rng(7), 20, 250)


@pytest.fixture(scope="module")
def tokens(proteins) -> tuple[np.ndarray, np.ndarray]:
    return encode_batch(proteins)  # a mixed batch padded to its bucket


@pytest.fixture(scope="module")
def eager(tokens) -> tuple[np.ndarray, np.ndarray]:
    module = build_esm2(random_init="8M")
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(array) for array in tokens))
    return tuple(output.numpy() for output in outputs)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory) -> tuple[str, Path]:
    output = tmp_path_factory.mktemp(f"esm2_{request.param}")
    report = export_esm2(output, random_init="8M", **VARIANTS[request.param], **ONE_INSTANCE)
    formats = VARIANTS[request.param].get("formats", ("onnx", "torchscript"))
    assert set(report.precisions) == set(formats)
    if request.param == "int8":  # TorchScript's int8 scales per tensor: it ships fp32 beside the int8 ONNX
        assert report.precisions == {"onnx": "int8", "torchscript": "fp32"}
    for fmt in formats:
        gate = report.similarity if report.precisions[fmt] != "fp32" else report.parity
        assert fmt in gate
        if report.precisions[fmt] in ("fp32", "int8"):  # the invariance gate passed
            assert report.batch_invariant[fmt] and report.invariance[fmt] <= INVARIANCE_TOLERANCE
        else:  # bf16: measured and marked, never invariant
            assert report.batch_invariant[fmt] is False and fmt in report.invariance
    return request.param, output, report


def _infer(module, url: str, model: str, names: tuple[str, ...], tokens) -> tuple[np.ndarray, np.ndarray]:
    _, ids_name, mask_name, pooled_name, residues_name = names
    client = module.InferenceServerClient(url)
    inputs = []
    for name, array in ((ids_name, tokens[0]), (mask_name, tokens[1])):
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput(name) for name in (pooled_name, residues_name)]
    result = client.infer(model, inputs, outputs=outputs)
    client.close()
    return result.as_numpy(pooled_name), result.as_numpy(residues_name)


def test_variant_is_served_as_gated_over_http_and_grpc(variant, proteins, tokens, eager):
    name, repository, report = variant
    formats = VARIANTS[name].get("formats", ("onnx", "torchscript"))
    with local_server(
        repository, load_models=tuple(SERVED[fmt][0] for fmt in formats), model_control_mode="explicit"
    ) as server:
        for fmt in formats:
            model = SERVED[fmt][0]
            path = repository / model / "1" / ("model.onnx" if fmt == "onnx" else "model.pt")
            local = (onnx_runner(path) if fmt == "onnx" else torchscript_runner(path))(*tokens)
            for protocol, module in CLIENTS.items():
                url = server.http_url if protocol == "http" else server.grpc_url
                served = _infer(module, url, model, SERVED[fmt], tokens)
                for got, want, expected in zip(served, local, eager):
                    assert got.dtype == np.float32 and got.shape == expected.shape
                    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)  # the server runs the gated file
                assert min_cosine(eager[0], served[0]) >= parity.MIN_COSINE_POOLED, (name, fmt, protocol)
                assert min_cosine(eager[1], served[1]) >= parity.MIN_COSINE_PER_TOKEN, (name, fmt, protocol)
                if name == "fused-fp32":
                    np.testing.assert_allclose(served[0], eager[0], atol=1e-4)
                # each protein alone (no padding) vs inside the mixed padded batch, served
                worst = 0.0
                for row, protein in enumerate(proteins):
                    alone = _infer(module, url, model, SERVED[fmt], encode_batch([protein], buckets=None))
                    length = len(protein) + 2
                    worst = max(
                        worst,
                        float(np.abs(alone[0][0] - served[0][row]).max()),
                        float(np.abs(alone[1][0] - served[1][row, :length]).max()),
                    )
                print(f"{name} {fmt} {protocol}: served alone vs batched max abs {worst:.2e}")
                if report.batch_invariant[fmt]:
                    assert worst <= INVARIANCE_TOLERANCE, (name, fmt, protocol, worst)


def test_a_variant_below_its_gate_is_refused_and_leaves_no_model(tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "MIN_COSINE_POOLED", 0.9999999)  # a gate no int8 engine can meet
    with pytest.raises(ParityError) as refused:
        export_esm2(tmp_path, random_init="8M", precision="int8", formats=("onnx",), **ONE_INSTANCE)
    assert "REFUSED" in str(refused.value) and "EMBEDDING 0.99" in str(refused.value)
    assert not list(tmp_path.glob("esm2_onnx/1/model.onnx*"))


def test_per_tensor_int8_is_refused_by_the_invariance_gate_and_leaves_no_model(tmp_path, monkeypatch):
    """ONNX Runtime's dynamic quantization (one activation scale over the whole batch, padding included) meets the
    cosine gate but not batch invariance: the export refuses it with the figure."""
    from tritonfleet.export import quantize

    monkeypatch.setattr(quantize, "quantize_onnx_int8", quantize.quantize_onnx_int8_per_tensor)
    with pytest.raises(InvarianceGateError) as refused:
        export_esm2(tmp_path, random_init="8M", precision="int8", formats=("onnx",), **ONE_INSTANCE)
    message = str(refused.value)
    assert "batch invariance int8 onnx" in message and "REFUSED (> 1e-05)" in message and "EMBEDDING " in message
    assert not list(tmp_path.glob("esm2_onnx/1/model.onnx*"))


def test_torchscript_int8_asked_for_explicitly_is_refused_by_the_invariance_gate(tmp_path):
    from tritonfleet.export.network import ExportReport, describe_network, export_network
    from tritonfleet.export.parity import ParityCase

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    batch = torch.randn(6, 16)
    batch[0] *= 3.0  # a louder neighbour changes a per-tensor scale
    network = describe_network(mlp, [batch, torch.randn(2, 16)])
    cases = [ParityCase("batch 6", (batch.numpy(),))]
    report = ExportReport(tmp_path)
    with pytest.raises(InvarianceGateError, match="batch invariance int8 torchscript"):
        export_network(
            network, tmp_path, {"torchscript": "mlp_torchscript"}, report, cases, precision={"torchscript": "int8"}
        )
    report = ExportReport(tmp_path)
    export_network(network, tmp_path, {"onnx": "mlp_onnx"}, report, cases, precision={"onnx": "int8"})
    assert report.batch_invariant == {"onnx": True} and report.precisions == {"onnx": "int8"}


def test_auto_precision_falls_back_to_fp32_when_int8_misses_its_gate(tmp_path, monkeypatch, caplog):
    from tritonfleet.export.esm2 import repository

    monkeypatch.setattr(repository, "default_precision", lambda plan: "int8")  # as on any CPU with VNNI
    monkeypatch.setattr(parity, "MIN_COSINE_POOLED", 0.9999999)  # weights whose int8 engine misses the gate
    with caplog.at_level(logging.WARNING):
        report = export_esm2(tmp_path, random_init="8M", precision="auto", formats=("onnx",), **ONE_INSTANCE)
    assert report.precision == "fp32" and set(report.parity) == {"onnx"} and not report.similarity
    assert "REFUSED" in caplog.text and "exporting fp32 instead" in caplog.text
    assert read_config(tmp_path / "esm2_onnx").parameters["precision"].string_value == "fp32"
    assert (tmp_path / "esm2_onnx" / "1" / "model.onnx").is_file()


def test_bf16_onnx_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(ExportError, match="no bfloat16 arithmetic.*--formats torchscript"):
        export_esm2(tmp_path, random_init="8M", precision="bf16", formats=("onnx",), **ONE_INSTANCE)


def test_any_model_exports_in_int8_and_bf16_through_the_same_gate(tmp_path):
    from tritonfleet.export.generic import TorchExportOptions, export_torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    samples = [torch.randn(4, 16), torch.randn(2, 16)]
    for precision, formats in (("int8", ("onnx", "torchscript")), ("bf16", ("torchscript",))):
        options = TorchExportOptions(name=f"mlp_{precision}", output=tmp_path, formats=formats, precision=precision)
        report = export_torch(mlp, samples, options)
        assert set(report.similarity) == {fmt for fmt in formats if report.precisions[fmt] != "fp32"}
        assert report.batch_invariant == {fmt: report.precisions[fmt] in ("fp32", "int8") for fmt in formats}
        assert all(value >= parity.MIN_COSINE_POOLED for gate in report.similarity.values() for value in gate.values())
