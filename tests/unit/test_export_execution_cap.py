"""The serving plan bounds each execution (issue 18): CPU plans cap the batch so one execution fits half the
interactive budget and add an interactive-only network copy; GPU plans keep large batches; the EMBEDDING-only entry
models get Triton's response cache when cached answers equal computed ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.client.model import ModelSpec, entry_model_name
from tritonfleet.contract.esm2.pipeline import (
    EMBEDDING_MODEL,
    ENSEMBLE_MODEL,
    INTERACTIVE_MODEL,
    ONNX_MODEL,
    TOKENIZER_MODEL,
)
from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config
from tritonfleet.contract.serving_plan import plan_cpu
from tritonfleet.export.__main__ import main
from tritonfleet.export.devices import DevicePlan, plan_devices
from tritonfleet.export.esm2.engine_policy import cache_is_exact
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.sizes import cpu_thread_tokens_per_s
from tritonfleet.export.execution_cap import EXECUTION_BUDGET_SHARE, plan_execution_cap

pytestmark = pytest.mark.unit

CPU = DevicePlan("KIND_CPU", cpu_instances=2, cpu_threads=1, interactive_instances=1)
GPU = DevicePlan("KIND_GPU", gpus=(0,))


def export(output: Path, *args: str) -> dict[str, mc.ModelConfig]:
    assert (
        main(["esm2", "--random-init", "8M", "--precision", "int8", "--configs-only", "--output", str(output), *args])
        == 0
    )
    return {path.parent.name: read_config(path) for path in sorted(output.glob(f"*/{CONFIG_FILENAME}"))}


def parameter(config: mc.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else ""


@pytest.mark.parametrize("tokens_per_s", [50.0, 3_000.0, 10_000.0, 1e6])
@pytest.mark.parametrize("budget_s", [0.1, 1.0, 60.0])
def test_a_cpu_execution_never_exceeds_its_budget_and_never_splits_a_sequence(tokens_per_s, budget_s):
    cap = plan_execution_cap(CPU, tokens_per_s, budget_s, max_tokens=1024)
    assert 1 <= cap.max_batch_size <= 64
    # whatever lengths Triton's batcher merges, an execution holds at most max_batch_size x 1024 tokens
    assert cap.token_budget == cap.max_batch_size * 1024
    if cap.max_batch_size > 1:
        assert cap.max_batch_size * 1024 <= tokens_per_s * budget_s * EXECUTION_BUDGET_SHARE
    assert cap.token_budget >= 1024  # one longest sequence always fits


def test_this_machines_cpu_plan_runs_one_sequence_per_execution_and_gpus_keep_large_batches():
    speed = cpu_thread_tokens_per_s("8M", "int8")
    cpu = plan_execution_cap(CPU, speed, 1.0, 1024)
    assert (cpu.max_batch_size, cpu.token_budget) == (1, 1024)
    assert cpu.execution_s < 1.0 * EXECUTION_BUDGET_SHARE
    gpu = plan_execution_cap(GPU, speed, 1.0, 1024)
    assert gpu.max_batch_size == 64 and gpu.token_budget == 64 * 1024
    big = plan_execution_cap(GPU, cpu_thread_tokens_per_s("650M", "fp32"), 1.0, 1024)
    assert big.max_batch_size == 64 and 1024 <= big.token_budget < 64 * 1024  # requests split by tokens instead


def test_larger_models_are_estimated_slower():
    speeds = [cpu_thread_tokens_per_s(size, "int8") for size in ("8M", "35M", "150M", "650M", "3B")]
    assert speeds == sorted(speeds, reverse=True)


def test_cpu_plans_reserve_an_interactive_instance_and_gpu_plans_do_not():
    assert plan_devices("none", cpu_cores=2).interactive_instances == 1
    assert plan_devices("none", cpu_cores=2, interactive_instances=0).interactive_instances == 0
    assert plan_devices("0,1").interactive_instances == 0
    with pytest.raises(ValueError, match="CPU plan"):
        plan_devices("0", interactive_instances=1)


def test_cpu_repository_caps_every_execution_and_advertises_the_entry_models(tmp_path):
    configs = export(tmp_path, "--target", "cpu:2")
    network, reserve = configs[ONNX_MODEL], configs[f"{ONNX_MODEL}_interactive"]
    for name, config in configs.items():
        if config.max_batch_size:
            assert config.max_batch_size == 1, name
    for name in (ONNX_MODEL, f"{ONNX_MODEL}_interactive", ENSEMBLE_MODEL, EMBEDDING_MODEL, INTERACTIVE_MODEL):
        assert parameter(configs[name], "execution_token_budget") == "1024", name
    # the reserve: one single-threaded instance beyond the cores, only interactive traffic reaches it; one
    # instance, so one plain queue (BatchingPlan.for_unordered_model: Triton's batcher stalls there with queue policies)
    assert [group.count for group in network.instance_group] == [plan_cpu(2)[0]]
    assert [group.count for group in reserve.instance_group] == [1]
    assert parameter(reserve, "intra_op_thread_count") == "1"
    assert reserve.HasField("dynamic_batching") and reserve.dynamic_batching.priority_levels == 0
    assert [step.model_name for step in configs[INTERACTIVE_MODEL].ensemble_scheduling.step] == [
        TOKENIZER_MODEL,
        f"{ONNX_MODEL}_interactive",
    ]
    assert parameter(configs[ENSEMBLE_MODEL], "interactive_embedding_model") == INTERACTIVE_MODEL
    assert parameter(configs[ENSEMBLE_MODEL], "embedding_model") == EMBEDDING_MODEL
    # the local runtime lowers the bulk instances' OS priority, never the reserve's
    assert parameter(network, "cpu_nice") == "10" and parameter(configs["esm2_torchscript"], "cpu_nice") == "10"
    assert parameter(reserve, "cpu_nice") == ""


def test_only_embedding_only_entry_models_are_cached(tmp_path):
    configs = export(tmp_path, "--target", "cpu:2")
    cached = {name for name, config in configs.items() if config.response_cache.enable}
    assert cached == {EMBEDDING_MODEL, INTERACTIVE_MODEL}
    for name in cached:  # Triton's cache key ignores the requested outputs: one output only
        assert [output.name for output in configs[name].output] == ["EMBEDDING"]
        assert len(configs[name].ensemble_scheduling.step[-1].output_map) == 1
    assert [output.name for output in configs[ENSEMBLE_MODEL].output] == ["EMBEDDING", "RESIDUE_EMBEDDINGS"]
    assert parameter(configs[ONNX_MODEL], "batch_invariant") == "true"
    assert parameter(configs["esm2_torchscript"], "precision") == "fp32"  # int8 TorchScript is not invariant
    bf16 = export(tmp_path / "bf16", "--target", "cpu:2", "--precision", "bf16", "--formats", "torchscript")
    assert not any(config.response_cache.enable for config in bf16.values())


def test_gpu_repository_keeps_large_batches_and_has_no_reserve(tmp_path):
    configs = export(tmp_path, "--target", "gpu:0")
    assert configs[ONNX_MODEL].max_batch_size == 64 and configs[ENSEMBLE_MODEL].max_batch_size == 64
    assert INTERACTIVE_MODEL not in configs and f"{ONNX_MODEL}_interactive" not in configs
    assert parameter(configs[ENSEMBLE_MODEL], "interactive_embedding_model") == EMBEDDING_MODEL
    assert int(parameter(configs[ONNX_MODEL], "execution_token_budget")) == 64 * 1024
    assert parameter(configs[ONNX_MODEL], "cpu_nice") == ""


def test_an_explicit_max_batch_size_is_kept_without_a_cap(tmp_path):
    configs = export(tmp_path, "--target", "cpu:2", "--max-batch-size", "8")
    assert configs[ONNX_MODEL].max_batch_size == 8
    assert "execution_token_budget" not in configs[ONNX_MODEL].parameters


def test_cache_only_where_a_cached_answer_equals_a_computed_one():
    def recipe(precision: str) -> Esm2Recipe:
        return Esm2Recipe(random_init="8M", precision=precision)

    assert cache_is_exact(recipe("fp32"), 1, "onnx") and cache_is_exact(recipe("fp16"), 1, "onnx")  # one per run
    assert cache_is_exact(recipe("int8"), 64, "onnx")  # per-row int8: batch invariant (export/quantize.py)
    assert cache_is_exact(recipe("int8"), 64, "torchscript")  # an int8 repository ships TorchScript in fp32
    assert not cache_is_exact(recipe("fp16"), 64, "onnx")
    assert not cache_is_exact(recipe("bf16"), 1, "torchscript") and not cache_is_exact(
        recipe("bf16"), 64, "torchscript"
    )


def spec(parameters: dict[str, str]) -> ModelSpec:
    return ModelSpec("esm2", "", "sequences", {"SEQUENCE": "SEQUENCE"}, {"EMBEDDING": "EMBEDDING"}, 1, 320,
                     parameters=parameters, pipeline="esm2")  # fmt: skip


def test_the_client_routes_by_priority_class_and_output():
    advertised = spec({"interactive_embedding_model": INTERACTIVE_MODEL, "embedding_model": EMBEDDING_MODEL})
    assert entry_model_name(advertised, "interactive", "EMBEDDING") == INTERACTIVE_MODEL
    assert entry_model_name(advertised, "bulk", "EMBEDDING") == EMBEDDING_MODEL
    assert entry_model_name(advertised, "interactive", "RESIDUE_EMBEDDINGS") == "esm2"
    assert entry_model_name(spec({}), "interactive", "EMBEDDING") == "esm2"  # an older repository: no routing
