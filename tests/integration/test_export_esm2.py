"""A full ESM-2 export (8M random weights) through the export core: ONNX graph vs config, parity of ONNX/TorchScript
vs eager on shapes the export never saw, device portability.

One export per module (dynamo ONNX exporter + TorchScript trace) takes ~30-60 s on a busy 2-core machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.esm2.pipeline import ONNX_MODEL, TORCHSCRIPT_MODEL
from tritonfleet.contract.esm2_tokens import encode_batch, random_proteins
from tritonfleet.contract.model_config import read_config
from tritonfleet.contract.tensors import dtype_from_config
from tritonfleet.export.esm2.model import build_esm2
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.repository import ONNX_FILENAME, TORCHSCRIPT_FILENAME, RepositoryOptions, export_repository
from tritonfleet.export.network import MODEL_VERSION
from tritonfleet.export.onnx_export import onnx_runner, onnx_signature
from tritonfleet.export.parity import eager_runner
from tritonfleet.export.torchscript import device_constants, torchscript_runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    output = tmp_path_factory.mktemp("esm2_export")
    recipe = Esm2Recipe(random_init="8M")
    report = export_repository(recipe, RepositoryOptions(output=output, parity_samples=2))
    return output, recipe, report


@pytest.fixture(scope="module")
def eager():
    return eager_runner(build_esm2(random_init="8M"))


def fresh_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Shapes the export never saw: a 1-residue protein, a padded mixed batch, a long single protein."""
    rng = np.random.default_rng(7)
    return [
        encode_batch(["M"]),
        encode_batch(random_proteins(6, rng, 1, 180)),
        encode_batch(random_proteins(1, rng, 400, 500)),
    ]


def test_export_reports_parity_within_tolerance(exported):
    _, recipe, report = exported
    assert set(report.parity) == {"onnx", "torchscript"}
    assert all(diff <= 1e-4 for diff in report.parity.values())
    assert report.signature == recipe.signature


def test_ids_mask_and_residue_rows_share_one_sequence_axis(exported):
    output, _, _ = exported
    signature = onnx_signature(output / ONNX_MODEL / MODEL_VERSION / ONNX_FILENAME)
    batch_axes = {axes[0] for _, axes in signature.values()}
    sequence_axes = {signature[name][1][1] for name in ("INPUT_IDS", "ATTENTION_MASK", "RESIDUE_EMBEDDINGS")}
    assert len(batch_axes) == 1 and len(sequence_axes) == 1
    assert batch_axes != sequence_axes and all(isinstance(axis, str) for axis in batch_axes | sequence_axes)


def test_onnx_graph_matches_the_config(exported):
    output, _, _ = exported
    config = read_config(output / ONNX_MODEL)
    signature = onnx_signature(output / ONNX_MODEL / MODEL_VERSION / ONNX_FILENAME)
    declared = list(config.input) + list(config.output)
    assert sorted(signature) == sorted(tensor.name for tensor in declared)
    for tensor in declared:
        dtype, axes = signature[tensor.name]
        assert dtype == dtype_from_config(mc.DataType.Name(tensor.data_type)).name, tensor.name
        assert isinstance(axes[0], str), f"{tensor.name}: batch axis must be dynamic"
        assert len(axes) == len(tensor.dims) + 1, f"{tensor.name}: config dims must leave out the batch axis"
        for axis, dim in zip(axes[1:], tensor.dims):
            assert (dim == -1) == isinstance(axis, str) and (dim == -1 or dim == axis), tensor.name


@pytest.mark.parametrize("variant", ["onnx", "torchscript"])
def test_exported_models_match_eager_on_new_shapes(exported, eager, variant):
    output, _, _ = exported
    if variant == "onnx":
        run = onnx_runner(output / ONNX_MODEL / MODEL_VERSION / ONNX_FILENAME)
    else:
        run = torchscript_runner(output / TORCHSCRIPT_MODEL / MODEL_VERSION / TORCHSCRIPT_FILENAME)
    for input_ids, attention_mask in fresh_cases():
        want_embedding, want_residues = eager(input_ids, attention_mask)
        got_embedding, got_residues = run(input_ids, attention_mask)
        assert got_embedding.shape == want_embedding.shape and got_residues.shape == want_residues.shape
        assert np.max(np.abs(got_embedding - want_embedding)) <= 1e-4
        assert np.max(np.abs(got_residues - want_residues)) <= 1e-4


def test_padding_and_batch_mates_do_not_change_an_embedding(exported):
    output, _, _ = exported
    run = onnx_runner(output / ONNX_MODEL / MODEL_VERSION / ONNX_FILENAME)
    proteins = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY" * 5, "W"]
    batch_embedding, batch_residues = run(*encode_batch(proteins))
    for row, protein in enumerate(proteins):
        alone_embedding, alone_residues = run(*encode_batch([protein], buckets=None))
        np.testing.assert_allclose(batch_embedding[row], alone_embedding[0], atol=1e-4)
        width = alone_residues.shape[1]
        np.testing.assert_allclose(batch_residues[row, :width], alone_residues[0], atol=1e-4)
        assert not np.any(batch_residues[row, width:]), "padding rows must be zero"


def test_torchscript_has_no_device_constants(exported):
    output, _, _ = exported
    module = torch.jit.load(str(output / TORCHSCRIPT_MODEL / MODEL_VERSION / TORCHSCRIPT_FILENAME))
    assert device_constants(module) == []


@pytest.mark.gpu
def test_cpu_traced_torchscript_runs_on_cuda(exported, eager):
    output, _, _ = exported
    module = torch.jit.load(str(output / TORCHSCRIPT_MODEL / MODEL_VERSION / TORCHSCRIPT_FILENAME), map_location="cuda")
    input_ids, attention_mask = encode_batch(["MKTAYIAKQR", "ACDEFGHIK" * 20])
    with torch.no_grad():
        embedding, _ = module(torch.from_numpy(input_ids).cuda(), torch.from_numpy(attention_mask).cuda())
    assert embedding.device.type == "cuda"
    np.testing.assert_allclose(embedding.cpu().numpy(), eager(input_ids, attention_mask)[0], atol=1e-3)
