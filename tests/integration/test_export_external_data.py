"""The 650M-sized export path without 650M: ESM-2 8M forced over the external-data threshold (weights in
`model.onnx.data` beside `model.onnx`, as protobuf's 2 GB limit makes ESM-2 650M+ do), fp32 and int8 (whose fp32
intermediate has external weights of its own), through parity, the invariance gate, the packed model and the
interactive copy's hard links."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tritonfleet.contract.engines import open_engine
from tritonfleet.contract.esm2_tokens import encode_batch, random_proteins
from tritonfleet.export.esm2 import export_esm2
from tritonfleet.export.parity import INVARIANCE_TOLERANCE

ESM2_TEST_SIZE = os.environ.get("TRITONFLEET_TEST_ESM2_SIZE", "8M")
DATA_FILE = "model.onnx.data"


@pytest.fixture
def over_the_threshold(monkeypatch):
    """Every weight byte counts as 'too large for one protobuf' in the fused graph builder and the int8 quantizer."""
    from tritonfleet.export import quantize
    from tritonfleet.export.esm2 import onnx_graph

    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_THRESHOLD", 0)
    monkeypatch.setattr(quantize, "EXTERNAL_DATA_THRESHOLD", 0)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_export_over_the_threshold_keeps_its_weights_beside_the_model(tmp_path, over_the_threshold, precision):
    report = export_esm2(
        tmp_path, random_init=ESM2_TEST_SIZE, precision=precision, formats=("onnx",), packed=True, parity_samples=2
    )
    version = tmp_path / "esm2_onnx" / "1"
    assert sorted(path.name for path in version.iterdir()) == ["model.onnx", DATA_FILE]  # no fp32 leftovers
    model_bytes, data_bytes = (version / "model.onnx").stat().st_size, (version / DATA_FILE).stat().st_size
    assert data_bytes > 10 * model_bytes, (model_bytes, data_bytes)
    # the quality gates ran on the external-data files
    assert ("onnx" in report.parity) if precision == "fp32" else ("onnx" in report.similarity)
    assert report.batch_invariant["onnx"] and report.invariance["onnx"] <= INVARIANCE_TOLERANCE
    assert report.invariance["onnx_packed"] <= INVARIANCE_TOLERANCE
    assert (tmp_path / "esm2_onnx_packed" / "1" / DATA_FILE).is_file()

    ids, mask = encode_batch(random_proteins(3, np.random.default_rng(7), 5, 200))
    copies = [version, *(path for path in [tmp_path / "esm2_onnx_interactive" / "1"] if path.is_dir())]
    answers = []
    for directory in copies:
        assert (directory / DATA_FILE).is_file()
        with open_engine(directory / "model.onnx", "onnx", threads=1) as engine:
            answers.append(engine.run({"INPUT_IDS": ids, "ATTENTION_MASK": mask}, ["EMBEDDING"])["EMBEDDING"])
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer, answers[0])
