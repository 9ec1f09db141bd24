"""Benchmark pieces that need no server: device selection, the raw engines and their thread splits, variants and
repositories, batching-off configs, and the figures against their targets (no timing assertions)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.model_config import read_config
from tritonfleet.loadtest.bench.__main__ import build_parser
from tritonfleet.loadtest.bench.engines import (
    ThreadSplit,
    TorchScriptEngine,
    bucketed_batches,
    encoded_batches,
    measure_engine,
    run_side_by_side,
    thread_splits,
)
from tritonfleet.loadtest.bench.load import closed_loop
from tritonfleet.loadtest.bench.report import render_markdown
from tritonfleet.loadtest.bench.results import (
    ENGINE_GAIN,
    OVERHEAD,
    P1,
    P2_DEFAULT,
    P2_FP32,
    P3,
    SERVING,
    VS_FASTAPI,
    BenchReport,
    OverheadResult,
    ScenarioResult,
    compute_figures,
)
from tritonfleet.loadtest.bench.scenarios import settled_delta
from tritonfleet.loadtest.bench.variants import (
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
    assert "| P1 | esm2_onnx / raw onnx | int8 | 0.95 | >= 0.95 | **met** |" in text
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
