"""Benchmark pieces that need no server: device selection, the CPU TorchScript path, batching-off configs, ratios."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.model_config import read_config
from tritonfleet.loadtest.bench.engines import TorchScriptEngine, bucketed_batches, measure_engine
from tritonfleet.loadtest.bench.load import closed_loop
from tritonfleet.loadtest.bench.report import BenchReport, ScenarioResult, compute_ratios, render_markdown
from tritonfleet.loadtest.bench.scenarios import write_batching_off_repository
from tritonfleet.loadtest.devices import precisions_for, select_devices
from tritonfleet.loadtest.handwritten_service import RoundRobin
from tritonfleet.loadtest.workload import generate_sequences


def test_device_selection() -> None:
    assert select_devices("auto", cuda_devices=0) == ["cpu"]
    assert select_devices("auto", cuda_devices=2) == ["cuda:0", "cuda:1"]
    assert select_devices("cpu", cuda_devices=4) == ["cpu"]
    assert select_devices("cuda", cuda_devices=1) == ["cuda:0"]
    assert select_devices("cuda:1,cuda:0", cuda_devices=2) == ["cuda:1", "cuda:0"]
    with pytest.raises(ValueError, match="no CUDA device"):
        select_devices("cuda", cuda_devices=0)
    with pytest.raises(ValueError, match="only 1 CUDA"):
        select_devices("cuda:1", cuda_devices=1)
    with pytest.raises(ValueError, match="unknown device"):
        select_devices("tpu")


def test_fp16_only_on_cuda() -> None:
    assert precisions_for("cpu") == ("fp32",)
    assert precisions_for("cuda:0") == ("fp32", "fp16")


class _TinyEmbedder(torch.nn.Module):
    """Same signature as the exported model: (ids, mask) -> (embedding [N, D], residue embeddings [N, T, D])."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(esm_tokenizer.VOCAB_SIZE, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.embedding(input_ids) * attention_mask.unsqueeze(-1)
        return hidden.mean(dim=1), hidden


def test_torchscript_engine_runs_on_cpu(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    ids, mask = esm_tokenizer.encode_batch(["MKTAYIAK"])
    torch.jit.trace(_TinyEmbedder().eval(), (torch.from_numpy(ids), torch.from_numpy(mask))).save(str(path))
    engine = TorchScriptEngine(path, select_devices("cpu")[0], precisions_for("cpu")[-1])
    sequences = generate_sequences(12, "short")
    result = measure_engine(engine, sequences, batch_size=4)
    assert result.group == "a" and result.device == "cpu" and result.precision == "fp32"
    assert result.sequences_per_s > 0 and result.requests >= 3
    assert engine(ids, mask).shape == (1, 8)


def test_bucketed_batches_never_mix_buckets() -> None:
    sequences = generate_sequences(100, "swissprot")
    batches = bucketed_batches(sequences, 8)
    assert sorted(s for batch in batches for s in batch) == sorted(sequences)
    for batch in batches:
        assert 1 <= len(batch) <= 8
        assert len({esm_tokenizer.bucket_for(len(s) + 2) for s in batch}) == 1


def test_batching_off_repository_keeps_max_batch_size(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "esm2_onnx" / "1").mkdir(parents=True)
    (source / "esm2_onnx" / "1" / "model.onnx").write_bytes(b"weights")
    (source / "esm2_onnx" / "config.pbtxt").write_text(
        'name: "esm2_onnx"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        'input { name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }\n'
        'output { name: "EMBEDDING" data_type: TYPE_FP32 dims: 320 }\n'
        "dynamic_batching { preferred_batch_size: 8 max_queue_delay_microseconds: 2000 }\n"
    )
    (source / "esm2").mkdir()
    (source / "esm2" / "config.pbtxt").write_text('name: "esm2"\nplatform: "ensemble"\nmax_batch_size: 64\n')
    changed = write_batching_off_repository(source, tmp_path / "variant")
    assert changed == ["esm2_onnx"]
    config = read_config(tmp_path / "variant" / "esm2_onnx")
    assert not config.HasField("dynamic_batching") and config.max_batch_size == 64
    assert (tmp_path / "variant" / "esm2_onnx" / "1").is_symlink()
    assert (tmp_path / "variant" / "esm2_onnx" / "1" / "model.onnx").read_bytes() == b"weights"


def _scenario(group: str, name: str, engine: str, rate: float) -> ScenarioResult:
    return ScenarioResult(group=group, name=name, engine=engine, sequences_per_s=rate)


def test_ratios_and_markdown() -> None:
    scenarios = [
        _scenario("a", "raw onnx in-process", "onnx", 10.0),
        _scenario("a", "raw onnx in-process", "onnx", 20.0),
        _scenario("a", "raw torchscript in-process", "torchscript", 8.0),
        _scenario("b", "Triton, dynamic batching: esm2_onnx", "onnx", 19.0),
        _scenario("b", "Triton, dynamic batching: esm2_torchscript", "torchscript", 6.0),
        _scenario("b", "Triton, dynamic batching: esm2", "onnx", 18.0),
        _scenario("c", "Triton, batching off: esm2_onnx", "onnx", 9.5),
        _scenario("c", "Triton, batching off: esm2_torchscript", "torchscript", 3.0),
        _scenario("c", "Triton, batching off: esm2", "onnx", 9.0),
        _scenario("d", "FastAPI + eager PyTorch: one sequence per request", "eager", 6.0),
        _scenario("d", "FastAPI + eager PyTorch: client batches", "eager", 12.0),
    ]
    ratios = compute_ratios(scenarios)
    assert ratios["b/a onnx"] == pytest.approx(0.95)  # best raw batch size is the ceiling
    assert ratios["b/a torchscript"] == pytest.approx(0.75)
    assert ratios["b/c esm2"] == pytest.approx(2.0)
    assert ratios["b/d ensemble vs FastAPI (same traffic: one sequence per request)"] == pytest.approx(3.0)
    assert ratios["b/d ensemble vs FastAPI with client batches"] == pytest.approx(1.5)
    machine = {"cpu_model": "Test CPU", "usable_cores": 2, "logical_cores": 2, "gpus": [], "python": "3", "os": "x"}
    config = {"model_size": "8M", "length_mix": "short", "sequences": 4, "concurrency": 2, "duration_s": 1.0}
    text = render_markdown(BenchReport(config, machine, scenarios, ratios=ratios, command="python -m loadtest.bench"),
                           [])  # fmt: skip
    assert "Test CPU, 2 usable cores" in text and "`python -m loadtest.bench`" in text
    assert "| b/a onnx | 0.95 | >= 0.95 |" in text


def test_ratio_is_nan_when_a_side_is_missing() -> None:
    assert math.isnan(compute_ratios([_scenario("b", "Triton, dynamic batching: esm2_onnx", "onnx", 1.0)])["b/a onnx"])


def test_closed_loop_counts_sequences_errors_and_rejections() -> None:
    from tritonclient.utils import InferenceServerException

    class FlakySender:
        calls = 0

        def send(self, sequences):
            FlakySender.calls += 1
            if FlakySender.calls % 5 == 0:
                raise InferenceServerException("Exceeds maximum queue size", "503")
            if FlakySender.calls % 7 == 0:
                raise RuntimeError("boom")

        def close(self):
            pass

    result = closed_loop(FlakySender, ["MKT"] * 4, concurrency=2, duration_s=0.3, per_request=2, warmup_s=0.0)
    assert result.sequences == 2 * len(result.latencies_ms) > 0
    assert result.rejections > 0 and result.errors > 0 and result.first_error == "boom"
    assert result.elapsed_s == pytest.approx(0.3)  # the measurement window, not the wall time


def test_round_robin_cycles_replicas() -> None:
    router = RoundRobin(["cuda:0", "cuda:1"])  # any objects do; the service passes Replica instances
    assert [router.next() for _ in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(ValueError):
        RoundRobin([])
