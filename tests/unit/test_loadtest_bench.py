"""Benchmark pieces that need no server: device selection, the raw engines and their thread splits, variants and
repositories, batching-off configs, and the figures against their targets (no timing assertions)."""

from __future__ import annotations

import json
import math
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.model_config import read_config
from tritonfleet.loadtest.bench import engines as bench_engines
from tritonfleet.loadtest.bench import scenarios as bench_scenarios
from tritonfleet.loadtest.bench.__main__ import build_parser
from tritonfleet.loadtest.bench.engines import (
    ThreadSplit,
    TorchScriptEngine,
    bucketed_batches,
    encoded_batches,
    measure_engine,
    raw_ceiling,
    run_side_by_side,
    thread_splits,
)
from tritonfleet.loadtest.bench.load import closed_loop, send_all
from tritonfleet.loadtest.bench.report import render_markdown
from tritonfleet.loadtest.bench.results import (
    ENGINE_GAIN,
    OVERHEAD,
    P1,
    P2_DEFAULT,
    P2_FP32,
    P3,
    RAW_AGAIN,
    SERVING,
    VS_FASTAPI,
    BenchReport,
    OverheadResult,
    ScenarioResult,
    compute_figures,
)
from tritonfleet.loadtest.bench.scenarios import BenchConfig, padding, settled_delta
from tritonfleet.loadtest.bench.variants import (
    Variant,
    loadable_models,
    network_plan,
    repository_devices,
    repository_precision,
    resolve_variants,
    served_networks,
    write_batching_off_repository,
)
from tritonfleet.loadtest.devices import precisions_for, select_devices
from tritonfleet.loadtest.handwritten_service import RoundRobin
from tritonfleet.loadtest.workload import PreparedRequest, generate_sequences, token_length_waste


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
    sequences = generate_sequences(12, "short")
    threads_before = torch.get_num_threads()  # the engines set torch's process-wide thread count
    try:
        for split in thread_splits(2):
            # the precision is the variant's label (the file is whatever the export wrote): it must reach the row
            result = measure_engine(lambda threads: TorchScriptEngine(path, "cpu", "int8", threads), sequences,
                                    batch_size=4, split=split, warmup_s=0.0)  # fmt: skip
            assert result.group == "a" and result.device == "cpu" and result.precision == "int8"
            assert result.threads == split.label and result.batch_size == 4
            assert result.sequences_per_s > 0 and result.requests == len(bucketed_batches(sequences, 4))
    finally:
        torch.set_num_threads(threads_before)
    engine = TorchScriptEngine(path, select_devices("cpu")[0], precisions_for("cpu")[-1])
    assert engine(ids, mask).shape == (1, 8)


def test_thread_splits_spend_the_same_budget() -> None:
    assert thread_splits(1) == (ThreadSplit(1, 1),)
    assert thread_splits(2) == (ThreadSplit(1, 2), ThreadSplit(2, 1))
    assert all(split.engines * split.threads == 8 for split in thread_splits(8))
    assert [split.label for split in thread_splits(2)] == ["1 engine x 2 threads", "2 engines x 1 thread"]


class _CountingEngine:
    """Records the batches it ran (thread-safe enough: list.append is atomic under the GIL)."""

    name, device, precision = "fake", "cpu", "fp32"

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def __call__(self, input_ids, attention_mask):
        self.seen.append(id(input_ids))
        return input_ids


def test_one_pass_runs_every_batch_exactly_once_across_engines() -> None:
    sequences = generate_sequences(40, "swissprot")
    batches = encoded_batches(sequences, 4)
    seen: list[int] = []
    run = run_side_by_side([_CountingEngine(seen), _CountingEngine(seen)], batches)
    assert sorted(seen) == sorted(id(ids) for ids, _ in batches)
    assert run.sequences == len(sequences) and len(run.latencies_ms) == len(batches)
    assert sorted(len(ids) for ids, _ in batches) == sorted(
        len(batch) for batch in bucketed_batches(sequences, 4)
    )  # the shuffled order keeps every batch
    seen.clear()
    timed = run_side_by_side([_CountingEngine(seen)], batches[:3], min_seconds=0.05)
    assert timed.elapsed_s >= 0.05 and len(seen) % 3 == 0 and len(seen) >= 3  # whole passes only
    assert timed.sequences == sum(len(ids) for ids, _ in batches[:3]) * len(seen) // 3
    with pytest.raises(ValueError):
        run_side_by_side([_CountingEngine([])], [])

    def broken(input_ids, attention_mask):
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):  # an engine's failure reaches the caller
        run_side_by_side([_CountingEngine([]), broken], batches, min_seconds=60.0)


def test_a_run_can_keep_each_batchs_output_and_counts_any_arrays_by_the_first_ones_rows() -> None:
    batches = [(np.full((rows, 1), rows), np.zeros(7), np.zeros(2)) for rows in (3, 1, 2, 5)]

    def first_cell(first, *_rest):
        return first[0]

    run = run_side_by_side([first_cell, first_cell], batches, keep_outputs=True)
    assert [int(output[0]) for output in run.outputs] == [3, 1, 2, 5]  # in batch order, whoever ran them
    assert run.sequences == 11 and run.cpu_s >= 0.0
    assert run_side_by_side([first_cell], batches).outputs == []  # kept only when asked


def test_send_all_fills_each_requests_answer_in_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    import tritonclient.grpc as grpc_client

    class FakeClient:
        """Answers every request with its INPUT_IDS' width, after a pause that reorders concurrent answers."""

        def __init__(self, url: str) -> None:
            assert url == "127.0.0.1:8001"

        def infer(self, model, inputs, outputs):
            (ids,) = inputs
            width = ids.shape()[1]
            time.sleep(0.001 * (width % 3))
            return types.SimpleNamespace(as_numpy=lambda name: np.array([[width]], dtype=np.float32))

        def close(self) -> None:
            pass

    monkeypatch.setattr(grpc_client, "InferenceServerClient", FakeClient)
    requests = [PreparedRequest({"INPUT_IDS": np.zeros((1, width), dtype=np.int64)}, 1, width) for width in range(2, 9)]
    answers: list = [None] * len(requests)
    latencies = send_all("127.0.0.1:8001", "esm2_onnx", requests, 3, "EMBEDDING", answers)
    assert len(latencies) == len(requests)
    assert [int(answer[0, 0]) for answer in answers] == list(range(2, 9))
    assert len(send_all("127.0.0.1:8001", "esm2_onnx", requests, 2, "EMBEDDING")) == len(requests)


def test_padding_waste_is_the_measured_repositorys(tmp_path: Path) -> None:
    sequences = generate_sequences(50, "swissprot")
    (tmp_path / "esm2_tokenizer").mkdir()
    tokenizer = 'name: "esm2_tokenizer"\nbackend: "python"\nmax_batch_size: 1\n'
    buckets = 'parameters {{ key: "length_buckets" value {{ string_value: "{}" }} }}\n'
    (tmp_path / "esm2_tokenizer" / "config.pbtxt").write_text(tokenizer + buckets.format("exact"))
    assert padding(sequences, tmp_path) == {"length_buckets": "exact", "padding_waste": 0.0}  # CPU exports
    (tmp_path / "esm2_tokenizer" / "config.pbtxt").write_text(tokenizer + buckets.format("256,1024"))
    assert padding(sequences, tmp_path) == {
        "length_buckets": "256,1024",
        "padding_waste": token_length_waste(sequences, (256, 1024)),
    }
    assert padding(sequences, tmp_path)["padding_waste"] > token_length_waste(sequences) > 0.0


def test_bucketed_batches_never_mix_buckets() -> None:
    sequences = generate_sequences(100, "swissprot")
    batches = bucketed_batches(sequences, 8)
    assert sorted(s for batch in batches for s in batch) == sorted(sequences)
    for batch in batches:
        assert 1 <= len(batch) <= 8
        assert len({esm_tokenizer.bucket_for(len(s) + 2) for s in batch}) == 1


# -- the raw engines pad as the measured repository's tokenizer pads ------------------------------------------------

EXACT, BUCKETS = (), (64, 256, 1024)  # a CPU export's exact lengths, and buckets as a GPU export has them


def _fake_repository(folder: Path, length_buckets: str) -> Path:
    """A repository of configs only: the tokenizer with `length_buckets`, and an ONNX network file."""
    (folder / "esm2_tokenizer").mkdir(parents=True)
    (folder / "esm2_tokenizer" / "config.pbtxt").write_text(
        'name: "esm2_tokenizer"\nbackend: "python"\nmax_batch_size: 1\n'
        'input { name: "SEQUENCE" data_type: TYPE_STRING dims: 1 }\n'
        'output { name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }\n'
        'output { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: -1 }\n'
        f'parameters {{ key: "length_buckets" value {{ string_value: "{length_buckets}" }} }}\n'
    )
    (folder / "esm2_onnx" / "1").mkdir(parents=True)
    (folder / "esm2_onnx" / "1" / "model.onnx").write_bytes(b"weights")
    (folder / "esm2_onnx" / "config.pbtxt").write_text(
        'name: "esm2_onnx"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
        'input { name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }\n'
        'input { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: -1 }\n'
        'output { name: "EMBEDDING" data_type: TYPE_FP32 dims: 320 }\n'
    )
    return folder


def _widths(batches) -> list[tuple[int, int]]:
    """(padded width, longest sequence's tokens) of each tokenized batch."""
    return [(ids.shape[1], int(mask.sum(axis=1).max())) for ids, mask in batches]


def test_exact_length_batches_are_length_sorted_and_padded_to_their_own_longest() -> None:
    sequences = generate_sequences(100, "swissprot")
    for buckets in (EXACT, None):
        batches = bucketed_batches(sequences, 8, buckets)
        assert sorted(s for batch in batches for s in batch) == sorted(sequences)
        assert [len(batch) for batch in batches] == [8] * 12 + [4]  # full batches: exact lengths group nothing
        lengths = [len(s) for batch in batches for s in batch]
        assert lengths == sorted(lengths)
    exact = encoded_batches(sequences, 8, buckets=EXACT)
    assert all(width == longest for width, longest in _widths(exact))  # no batch pads past its longest sequence
    bucketed = encoded_batches(sequences, 8, buckets=BUCKETS)
    assert all(width in BUCKETS and width >= longest for width, longest in _widths(bucketed))
    assert sum(ids.size for ids, _ in exact) < sum(ids.size for ids, _ in bucketed)


class _ShapeEngine:
    """Records (width, longest sequence's tokens) of every batch it runs, warm-up included."""

    name, device, precision = "fake", "cpu", "fp32"

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def __call__(self, input_ids, attention_mask):
        self.seen.append((input_ids.shape[1], int(attention_mask.sum(axis=1).max())))
        return input_ids


def test_measure_engine_pads_as_the_buckets_it_is_given() -> None:
    sequences = generate_sequences(24, "swissprot")
    for buckets, batch_size in ((EXACT, 4), (EXACT, 1), (BUCKETS, 4)):
        seen: list[tuple[int, int]] = []
        result = measure_engine(lambda _threads, s=seen: _ShapeEngine(s), sequences, batch_size, ThreadSplit(1, 1),
                                warmup_s=0.0, buckets=buckets)  # fmt: skip
        assert result.requests == len(bucketed_batches(sequences, batch_size, buckets))
        if buckets:
            assert all(width in buckets and width >= longest for width, longest in seen)
        else:
            assert all(width == longest for width, longest in seen)
    seen = []
    measure_engine(lambda _threads: _ShapeEngine(seen), sequences, 4, ThreadSplit(1, 1), warmup_s=0.0)
    assert {width for width, _ in seen} <= set(esm_tokenizer.DEFAULT_BUCKETS)  # no buckets given: the defaults


def test_raw_ceiling_pads_each_served_request_as_the_buckets_given(monkeypatch: pytest.MonkeyPatch) -> None:
    sequences = generate_sequences(12, "swissprot")
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(bench_engines, "OnnxEngine", lambda _path, _threads: _ShapeEngine(seen))
    ceiling = raw_ceiling(Path("model.onnx"), sequences, 2, 0.0, EXACT)
    assert list(ceiling) == [split.label for split in thread_splits(2)]
    assert seen and all(width == longest for width, longest in seen)
    assert {width for width, _ in seen} == {len(s) + 2 for s in sequences}  # one sequence per request, as served
    seen.clear()
    raw_ceiling(Path("model.onnx"), sequences, 1, 0.0, BUCKETS)
    assert {width for width, _ in seen} == {esm_tokenizer.bucket_for(len(s) + 2, BUCKETS) for s in sequences}


def test_raw_engine_results_pad_each_variant_as_its_repository_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_export = _fake_repository(tmp_path / "cpu", "exact")
    bucketed = _fake_repository(tmp_path / "bucketed", "64,256,1024")
    asked: list[tuple[int, ...]] = []

    def measure(make_engine, sequences, batch_size, split, min_seconds, warmup_s, buckets):
        asked.append(buckets)
        return ScenarioResult(group="a", name="raw", engine="onnx", sequences_per_s=1.0, threads=split.label)

    monkeypatch.setattr(bench_scenarios, "measure_engine", measure)
    monkeypatch.setattr(bench_scenarios, "usable_cores", lambda: 1)
    config = BenchConfig(batch_sizes=(1,))
    sequences = generate_sequences(4, "short")
    variants = [Variant("int8", cpu_export), Variant("fp32", bucketed)]
    bench_scenarios.raw_engine_results(config, variants, sequences)
    assert asked == [EXACT, EXACT, BUCKETS]  # eager (the default variant's), then each variant's ONNX file
    asked.clear()
    bench_scenarios.raw_engine_results(config, variants[::-1], sequences)
    assert asked == [BUCKETS, BUCKETS, EXACT]


def test_cpu_plan_and_gpu_check_requests_pad_as_the_repository_does(tmp_path: Path) -> None:
    from tritonfleet.loadtest import cpu_plan
    from tritonfleet.loadtest.perf_sweep import repository_input_data

    sequences = generate_sequences(10, "swissprot")
    for length_buckets, buckets in (("exact", EXACT), ("64,256,1024", BUCKETS)):
        repository = _fake_repository(tmp_path / length_buckets, length_buckets)
        expected = [esm_tokenizer.bucket_for(len(s) + 2, buckets) for s in sequences]
        data, padded_to = cpu_plan.padded_workload(repository, sequences, tmp_path / f"{length_buckets}-cpu.json")
        assert padded_to == buckets  # what cpu_plan hands raw_ceiling
        for path in (data, repository_input_data(repository, "esm2_onnx", sequences, tmp_path / "gpu.json")):
            steps = json.loads(path.read_text())["data"]
            assert [step["INPUT_IDS"]["shape"] for step in steps] == [[width] for width in expected]
            assert [sum(step["ATTENTION_MASK"]["content"]) for step in steps] == [len(s) + 2 for s in sequences]


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


def _row(group: str, engine: str, rate: float, precision: str = "int8", model: str = "", **fields) -> ScenarioResult:
    name = f"Triton: {model}" if model else f"{group} {engine}"
    return ScenarioResult(group=group, name=name, engine=engine, sequences_per_s=rate, precision=precision,
                          model=model, **fields)  # fmt: skip


def _bench_rows() -> list[ScenarioResult]:
    """int8 (the default) and fp32 variants, eager, served rows and the FastAPI baseline."""
    return [
        _row("a", "eager", 10.0, "fp32", threads="1 engine x 2 threads", batch_size=1),
        _row("a", "eager", 12.0, "fp32", threads="2 engines x 1 thread", batch_size=1),
        _row("a", "onnx", 20.0, threads="1 engine x 2 threads", batch_size=1),
        _row("a", "onnx", 30.0, threads="2 engines x 1 thread", batch_size=16),
        _row("a", "onnx", 99.0, threads="2 engines x 1 thread", batch_size=1, errors=3),  # errors: never a ceiling
        _row("a", "onnx", 15.0, "fp32", threads="2 engines x 1 thread", batch_size=1),
        _row("a", "torchscript", 18.0, threads="2 engines x 1 thread", batch_size=1),
        _row("a", "onnx", 500.0, "fp32", device="cuda:0", batch_size=1),  # another device: not the CPU ceiling
        _row("b", "onnx", 28.5, model="esm2_onnx", threads="2 instances x 1 thread"),
        _row("b", "torchscript", 9.0, model="esm2_torchscript"),
        _row("b", "onnx", 24.0, model="esm2"),
        _row("b", "onnx", 12.0, "fp32", model="esm2_onnx"),
        _row("b", "onnx", 11.0, "fp32", model="esm2"),
        _row("c", "onnx", 12.0, model="esm2"),
        _row("d", "eager", 10.0, "fp32", batch_size=1),
        _row("d", "eager", 16.0, "fp32", batch_size=8),
    ]


def _by_name(figures, question: str, precision: str) -> dict[str, object]:
    return {f.name: f for f in figures if f.question == question and f.precision == precision}


def test_serving_efficiency_is_served_over_the_same_variants_raw_ceiling() -> None:
    figures = compute_figures(_bench_rows(), [], "int8")
    int8, fp32 = _by_name(figures, SERVING, "int8"), _by_name(figures, SERVING, "fp32")
    # the ceiling is the best error-free CPU row of that engine and precision, over splits and batch sizes
    onnx = int8["esm2_onnx / raw onnx"]
    assert (onnx.numerator, onnx.denominator, onnx.value) == (28.5, 30.0, pytest.approx(0.95))
    assert onnx.target is P1 and onnx.met is True and "2 engines x 1 thread, batch 16" in onnx.basis
    assert int8["esm2 / raw onnx"].value == pytest.approx(0.8) and int8["esm2 / raw onnx"].target is None
    assert int8["esm2_torchscript / raw torchscript"].value == pytest.approx(0.5)
    assert int8["esm2_torchscript / raw torchscript"].target is None  # P1 names esm2_onnx
    assert fp32["esm2_onnx / raw onnx"].value == pytest.approx(0.8)  # fp32 served over fp32 raw, not int8 or CUDA
    assert [f.precision for f in figures if f.question == SERVING][0] == "int8"  # the default variant first


def test_served_over_raw_divides_by_the_mean_of_the_ceiling_before_and_after_the_served_runs() -> None:
    rows = _bench_rows() + [
        _row(RAW_AGAIN, "onnx", 27.0, threads="2 engines x 1 thread", batch_size=16),  # the ceiling again: drifted
        _row(RAW_AGAIN, "onnx", 99.0, threads="1 engine x 2 threads", batch_size=16),  # not the ceiling's split
    ]
    figures = compute_figures(rows, [], "int8")
    onnx = _by_name(figures, SERVING, "int8")["esm2_onnx / raw onnx"]
    assert (onnx.numerator, onnx.denominator, onnx.value) == (28.5, 28.5, pytest.approx(1.0))
    assert "mean of 30.0 before and 27.0 after the served runs" in onnx.basis
    # a repeat never becomes a ceiling of its own, nor changes the engine gain (measured next to eager's)
    gain = _by_name(figures, ENGINE_GAIN, "int8")["raw onnx / raw eager fp32"]
    assert gain.numerator == 30.0
    # without a repeat (fp32 here) the ceiling stands as measured
    assert _by_name(figures, SERVING, "fp32")["esm2_onnx / raw onnx"].denominator == 15.0


def test_engine_gain_is_raw_variant_over_raw_eager_fp32() -> None:
    figures = compute_figures(_bench_rows(), [], "int8")
    gains = {(f.precision, f.name): f.value for f in figures if f.question == ENGINE_GAIN}
    assert gains == {
        ("int8", "raw onnx / raw eager fp32"): pytest.approx(2.5),
        ("int8", "raw torchscript / raw eager fp32"): pytest.approx(1.5),
        ("fp32", "raw onnx / raw eager fp32"): pytest.approx(1.25),
    }


def test_p2_compares_the_entry_point_with_fastapi_at_defaults_and_in_fp32() -> None:
    figures = compute_figures(_bench_rows(), [], "int8")
    p2 = [f for f in figures if f.question == VS_FASTAPI and f.target is not None]
    assert [(f.precision, f.target, f.value) for f in p2] == [
        ("int8", P2_DEFAULT, pytest.approx(2.4)),
        ("fp32", P2_FP32, pytest.approx(1.1)),
    ]
    assert all(f.met for f in p2)
    batched = next(f for f in figures if f.question == VS_FASTAPI and "client batches" in f.name)
    assert batched.value == pytest.approx(1.5) and "8 sequences per request" in batched.basis


def test_missing_sides_give_nan_not_a_verdict() -> None:
    rows = [r for r in _bench_rows() if not (r.group == "b" and r.precision == "fp32") and r.group != "d"]
    figures = compute_figures(rows, [], "int8")
    p2 = [f for f in figures if f.target in (P2_DEFAULT, P2_FP32)]
    assert len(p2) == 2 and all(math.isnan(f.value) and f.met is None for f in p2)
    assert not _by_name(figures, SERVING, "fp32")  # nothing served in fp32: no serving-efficiency row
    assert P1.met(math.nan) is None and P3.met(1.0) is True and P3.met(1.01) is False


def test_p3_comes_from_the_default_variants_overheads() -> None:
    overheads = [
        OverheadResult("esm2", 80.0, 78.0, 2.0, 5.0, 0.8, 50, precision="int8"),
        OverheadResult("esm2_onnx", 80.0, 78.0, 2.0, 5.0, 1.4, 50, precision="int8"),
        OverheadResult("esm2", 90.0, 88.0, 2.0, 5.0, 0.1, 50, precision="fp32"),
    ]
    p3 = [f for f in compute_figures(_bench_rows(), overheads, "int8") if f.question == OVERHEAD]
    assert [(f.name.split()[0], f.value, f.met) for f in p3] == [("esm2", 0.8, True), ("esm2_onnx", 1.4, False)]


def test_markdown_states_each_target_beside_the_measured_value() -> None:
    scenarios = _bench_rows()
    overheads = [OverheadResult("esm2", 80.0, 78.0, 2.0, 5.0, 0.8, 50, precision="int8")]
    machine = {"cpu_model": "Test CPU", "usable_cores": 2, "logical_cores": 2, "gpus": [], "python": "3", "os": "x"}
    config = {"model_size": "8M", "length_mix": "short", "sequences": 4, "concurrency": 2, "duration_s": 1.0,
              "variants_measured": ["int8", "fp32"]}  # fmt: skip
    report = BenchReport(config, machine, scenarios, overheads, compute_figures(scenarios, overheads, "int8"),
                         command="python -m loadtest.bench", default_precision="int8")  # fmt: skip
    text = render_markdown(report, [])
    assert "Test CPU, 2 usable cores" in text and "`python -m loadtest.bench`" in text
    assert "length buckets ?)" in text  # a report from before the buckets were recorded
    config.update(length_buckets="exact", padding_waste=0.0)
    assert "0.0 % padding when padded alone as the repository's tokenizer pads it, length buckets exact)" in (
        render_markdown(report, [])
    )
    assert "| P1 | esm2_onnx / raw onnx | int8 | 0.95 | >= 0.95 | **met** |" in text
    assert "Queue policies" not in text  # no esm2_onnx run without dynamic batching: nothing to compare
    report.scenarios = [*scenarios, _row("c", "onnx", 30.0, model="esm2_onnx")]
    assert "esm2_onnx served 28.5 seq/s with them, 30.0 without dynamic batching (0.95x)" in render_markdown(report, [])
    assert "| P2 | esm2 (shipped defaults) / FastAPI + eager fp32 | int8 | 2.40 | >= 1.5 | **met** |" in text
    assert "| P2 | esm2 fp32 / FastAPI + eager fp32 | fp32 | 1.10 | >= 1 | **met** |" in text
    assert "| P3 | esm2 server-side overhead p50 (ms) | int8 | 0.80 | <= 1 | **met** |" in text
    assert "| int8 | raw onnx | 30.0 | 12.0 | 2.50 |" in text  # engine gain row
    assert "## What limits these figures" in text
    # P2 = serving efficiency x engine gain x the baseline's own efficiency, from the same rows
    assert "(serving efficiency 0.80) x raw onnx / raw eager (engine gain 2.50) x raw eager / FastAPI" in text


def test_variants_resolve_auto_to_the_repository_precision() -> None:
    assert resolve_variants(("auto", "fp32"), "int8") == ["fp32"]
    assert resolve_variants(("auto", "fp32"), "fp32") == []
    assert resolve_variants(("int8", "fp32", "bf16", "fp32"), "int8") == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="unknown variant"):
        resolve_variants(("int4",), "int8")
    assert build_parser().parse_args(["--variants", "int8, fp32,bf16"]).variants == ("int8", "fp32", "bf16")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--variants", "int8,int4"])


def _network(name: str, platform: str, precision: str, instances: int, threads: int, kind: str = "KIND_CPU") -> str:
    thread_key = "intra_op_thread_count" if platform == "onnxruntime_onnx" else "INTRA_OP_THREAD_COUNT"
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: 64\n'
            f"instance_group {{ count: {instances} kind: {kind} }}\n"
            f'parameters {{ key: "precision" value {{ string_value: "{precision}" }} }}\n'
            f'parameters {{ key: "{thread_key}" value {{ string_value: "{threads}" }} }}\n')  # fmt: skip


def test_repository_reading_precision_devices_and_pipelines(tmp_path: Path) -> None:
    for name, text in {
        "esm2_torchscript": _network("esm2_torchscript", "pytorch_libtorch", "bf16", 3, 2),
        "esm2": 'name: "esm2"\nplatform: "ensemble"\nmax_batch_size: 64\nensemble_scheduling {\n'
        '  step { model_name: "esm2_tokenizer" model_version: -1 }\n'
        '  step { model_name: "esm2_torchscript" model_version: -1 }\n}\n',
        "esm2_bls": 'name: "esm2_bls"\nbackend: "python"\nmax_batch_size: 64\n'
        'parameters { key: "target_model" value { string_value: "esm2_torchscript" } }\n',
        "esm2_tokenizer": 'name: "esm2_tokenizer"\nbackend: "python"\nmax_batch_size: 64\n',
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(text)
    assert repository_precision(tmp_path) == "bf16"
    plan = repository_devices(tmp_path)
    assert (plan.kind, plan.cpu_instances, plan.cpu_threads) == ("KIND_CPU", 3, 2)
    assert served_networks(tmp_path) == {"esm2_torchscript": "esm2_torchscript", "esm2": "esm2_torchscript",
                                         "esm2_bls": "esm2_torchscript"}  # fmt: skip
    assert network_plan(read_config(tmp_path / "esm2_torchscript")) == "3 instances x 2 threads"
    # a TorchScript-only export (bf16) keeps the ONNX network's config without its file: not loaded, nor what calls it
    (tmp_path / "esm2_onnx").mkdir()
    (tmp_path / "esm2_onnx" / "config.pbtxt").write_text(_network("esm2_onnx", "onnxruntime_onnx", "bf16", 1, 1))
    (tmp_path / "esm2_torchscript" / "1").mkdir()
    (tmp_path / "esm2_torchscript" / "1" / "model.pt").write_bytes(b"weights")
    assert loadable_models(tmp_path) == ("esm2", "esm2_bls", "esm2_tokenizer", "esm2_torchscript")
    (tmp_path / "esm2_bls" / "config.pbtxt").write_text(
        'name: "esm2_bls"\nbackend: "python"\nparameters { key: "target_model" value { string_value: "esm2_onnx" } }\n'
    )
    assert "esm2_bls" not in loadable_models(tmp_path)


def test_committed_repository_pipelines_call_the_onnx_network() -> None:
    repository = Path(__file__).resolve().parents[2] / "model_repository"
    networks = served_networks(repository)
    assert networks["esm2"] == networks["esm2_bls"] == "esm2_onnx"
    assert repository_devices(repository).kind == "KIND_CPU"


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


class _LateStatistics:
    """A statistics API whose network reports its compute from the third reading on (after its response)."""

    def __init__(self, network_reports_at: int) -> None:
        self.readings, self.network_reports_at = 0, network_reports_at

    def get_inference_statistics(self, model: str = "", as_json: bool = True) -> dict:
        self.readings += 1
        done = int(self.readings >= self.network_reports_at)
        network = {"success": {"count": done}, "compute_infer": {"ns": 4_000_000 * done}}
        return {"model_stats": [
            {"name": "esm2", "inference_stats": {"success": {"count": 1, "ns": 5_000_000}}},
            {"name": "esm2_onnx", "inference_stats": network},
        ]}  # fmt: skip


def test_settled_delta_waits_until_every_model_counted_the_request() -> None:
    late = _LateStatistics(network_reports_at=3)
    delta = settled_delta(late, {}, {"esm2", "esm2_onnx"})
    assert late.readings == 3 and delta["esm2_onnx"]["compute_infer_ns"] == 4_000_000
    never = _LateStatistics(network_reports_at=10**9)
    delta = settled_delta(never, {}, {"esm2", "esm2_onnx"}, timeout_s=0.05)  # bounded: taken as it is
    assert delta["esm2_onnx"]["compute_infer_ns"] == 0 and delta["esm2"]["request_ns"] == 5_000_000


def test_the_served_network_is_sent_token_ids_padded_as_its_repository_pads(tmp_path: Path) -> None:
    from tritonfleet.loadtest.bench.load import TritonGrpcSender
    from tritonfleet.loadtest.workload import buckets_from_repository, repository_targets

    sequences = generate_sequences(6, "swissprot")
    for length_buckets in ("exact", "64,256,1024"):
        repository = _fake_repository(tmp_path / length_buckets, length_buckets)
        buckets = buckets_from_repository(repository)
        sender = TritonGrpcSender("127.0.0.1:1", repository_targets(repository)["esm2_onnx"], buckets)
        sent: list = []

        def infer(model: str, inputs: list, sent: list = sent, **_) -> _Answer:
            sent.append(inputs)
            return _Answer()

        sender.client = types.SimpleNamespace(infer=infer)
        for sequence in sequences:
            sender.send([sequence])
        widths = [next(i.shape()[1] for i in inputs if i.name() == "INPUT_IDS") for inputs in sent]
        assert widths == [esm_tokenizer.bucket_for(len(s) + 2, buckets) for s in sequences], length_buckets


class _Answer:
    def as_numpy(self, name: str) -> np.ndarray:
        return np.zeros((1, 320), dtype=np.float32)
