"""The serving plan, both ways: `apply` writes it into a Triton config, `from_config` reads it back, `export_flags`
names the `tritonfleet export` flags that produce it; one engine format table names the thread parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.engine_formats import ENGINE_FORMATS, engine_format, format_of, format_of_config
from tritonfleet.contract.model_config import model_configs, read_config, render_config
from tritonfleet.contract.serving_plan import (
    BatchingPlan,
    InstancePlan,
    NotReproducibleError,
    PriorityPlan,
    ServingPlan,
    ThreadPlan,
    plan_cpu,
)
from tritonfleet.export.__main__ import main as export_main

pytestmark = pytest.mark.unit
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

CPU = ServingPlan(
    InstancePlan("KIND_CPU", 2),
    ThreadPlan(1, 1),
    BatchingPlan(max_batch_size=1, preferred_batch_sizes=(), max_queue_delay_us=0),
    execution_token_budget=1024,
    cpu_nice=10,
)
GPU_LIST = ServingPlan(
    InstancePlan("KIND_GPU", 2, (0, 3)),
    batching=BatchingPlan(max_batch_size=64, max_queue_size=100, priorities=PriorityPlan(interactive_queue_size=4)),
    execution_token_budget=65536,
)
GPU_ALL = ServingPlan(InstancePlan("KIND_GPU", 1), batching=BatchingPlan(priorities=None))
RESERVE = ServingPlan(
    InstancePlan("KIND_CPU", 1),
    ThreadPlan(1, 1),
    BatchingPlan(1, (), 0, 32, PriorityPlan(default_level="interactive")),
    execution_token_budget=1024,
    interactive_copy_of="esm2_onnx",
)
CACHED_ENSEMBLE = ServingPlan(None, batching=BatchingPlan.fixed(8), execution_token_budget=2048, response_cache=True)
TOKENIZER = ServingPlan(InstancePlan("KIND_CPU", 4), batching=BatchingPlan(8, (4, 8), 500, 16))
PLANS = {
    "cpu": CPU,
    "gpu-list": GPU_LIST,
    "gpu-all": GPU_ALL,
    "interactive-reserve": RESERVE,
    "cached-ensemble": CACHED_ENSEMBLE,
    "python-model": TOKENIZER,
}
PLATFORM_OF = {"cached-ensemble": "ensemble", "python-model": ""}


def blank(name: str, platform: str = "onnxruntime_onnx") -> mc.ModelConfig:
    config = mc.ModelConfig(name=name)
    if platform:
        config.platform = platform
    else:
        config.backend = "python"
    config.parameters["precision"].string_value = "fp32"  # not the plan's: must survive
    return config


@pytest.mark.parametrize("name", PLANS)
def test_a_plan_survives_apply_and_from_config(name):
    plan = PLANS[name]
    config = plan.apply(blank(name, PLATFORM_OF.get(name, "onnxruntime_onnx")))
    assert ServingPlan.from_config(config) == plan
    assert config.parameters["precision"].string_value == "fp32"
    again = mc.ModelConfig()
    again.CopyFrom(config)
    assert plan.apply(again) == config  # applying twice changes nothing


def test_apply_writes_the_config_fields_triton_reads():
    config = CPU.apply(blank("esm2_torchscript", "pytorch_libtorch"))
    assert [(group.kind, group.count, list(group.gpus)) for group in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 2, [])
    ]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["INTRA_OP_THREAD_COUNT"] == "1" and parameters["INTER_OP_THREAD_COUNT"] == "1"
    assert parameters["execution_token_budget"] == "1024" and parameters["cpu_nice"] == "10"
    assert config.max_batch_size == 1 and config.dynamic_batching.priority_levels == 2
    gpu = GPU_LIST.apply(blank("net"))
    assert list(gpu.instance_group[0].gpus) == [0, 3] and "intra_op_thread_count" not in gpu.parameters
    assert list(GPU_ALL.apply(blank("net")).instance_group[0].gpus) == []  # every GPU the server sees
    assert RESERVE.apply(blank("r")).parameters["serves"].string_value.startswith("interactive requests only")
    assert CACHED_ENSEMBLE.apply(blank("e", "ensemble")).response_cache.enable


def test_apply_replaces_what_the_config_said():
    config = CPU.apply(blank("net"))
    plan = dataclasses.replace(
        GPU_ALL, batching=BatchingPlan.fixed(4), execution_token_budget=None, cpu_nice=0
    )  # no threads, no dynamic batching, no cap
    plan.apply(config)
    assert ServingPlan.from_config(config) == plan
    assert not config.HasField("dynamic_batching")
    assert not {"intra_op_thread_count", "inter_op_thread_count", "execution_token_budget", "cpu_nice"} & set(
        config.parameters
    )


def test_a_foreign_serves_note_is_kept():
    config = blank("esm2_onnx_packed")
    config.parameters["serves"].string_value = "EMBEDDING of packed (ragged) batches"
    plan = ServingPlan.from_config(config)
    assert not plan.interactive_only
    assert plan.apply(config).parameters["serves"].string_value == "EMBEDDING of packed (ragged) batches"


def test_every_committed_config_reads_back_into_the_same_text():
    for name, config in model_configs(REPOSITORY):
        again = mc.ModelConfig()
        again.CopyFrom(config)
        assert render_config(ServingPlan.from_config(config).apply(again)) == render_config(config), name
    onnx = ServingPlan.from_config(read_config(REPOSITORY / "esm2_onnx"))
    assert onnx.instances == InstancePlan("KIND_CPU", 4) and onnx.threads == ThreadPlan(1, 1)  # cpu:2, plan_cpu
    assert ServingPlan.from_config(read_config(REPOSITORY / "esm2_onnx_interactive")).interactive_copy_of == "esm2_onnx"


def test_what_a_plan_cannot_hold_is_refused():
    config = blank("net")
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    with pytest.raises(ValueError, match="2 instance groups"):
        ServingPlan.from_config(config)
    config = blank("net")
    config.max_batch_size = 4
    config.dynamic_batching.priority_levels = 3
    with pytest.raises(ValueError, match="priority levels"):
        ServingPlan.from_config(config)
    config = blank("net")
    config.parameters["intra_op_thread_count"].string_value = "two"
    with pytest.raises(ValueError, match="intra_op_thread_count must be an integer"):
        ServingPlan.from_config(config)
    with pytest.raises(ValueError, match="no thread parameters"):
        CPU.apply(blank("tokenizer", ""))
    with pytest.raises(ValueError, match="preferred batch sizes"):
        BatchingPlan(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="without dynamic batching"):
        BatchingPlan(max_batch_size=4, dynamic=False)


def test_replanning_for_cores_follows_the_export_rule():
    for cores in (1, 2, 3, 8, 32):
        replanned = CPU.for_cpu_cores(cores)
        assert (replanned.instances.count, replanned.threads.intra_op) == plan_cpu(cores)
        assert replanned.threads.inter_op == 1 and replanned.batching == CPU.batching
    assert CPU.with_cpu(3, 0).threads == ThreadPlan()  # the engine's default threads: no parameters
    assert CPU.with_instance_count(5).instance_count == 5


def test_export_flags_name_what_the_plan_sets():
    assert CPU.export_flags() == [
        "--cpu-instances", "2", "--cpu-threads", "1", "--preferred-batch-sizes", "", "--max-queue-delay-us", "0",
    ]  # fmt: skip
    assert GPU_LIST.export_flags() == [
        "--target", "gpu:0,3", "--instances-per-gpu", "2", "--preferred-batch-sizes", "8,16,32,64",
        "--max-queue-delay-us", "2000", "--max-queue-size", "100", "--interactive-queue-size", "4",
    ]  # fmt: skip
    assert GPU_ALL.export_flags()[:2] == ["--target", "gpu:all"] and "--no-priorities" in GPU_ALL.export_flags()
    assert "--max-batch-size" in GPU_ALL.export_flags()  # no cap: the flag sets it (and turns the cap off)
    assert RESERVE.export_flags() == ["--interactive-instances", "1"]
    priorities = PriorityPlan(interactive_queue_size=2, interactive_budget_us=1_500_500, bulk_timeout_us=0)
    flags = dataclasses.replace(GPU_ALL, batching=BatchingPlan(priorities=priorities)).export_flags()
    assert flags[flags.index("--interactive-budget-ms") + 1] == "1500.5"
    assert flags[flags.index("--bulk-queue-timeout-s") + 1] == "0"
    for plan, reason in (
        (CPU.with_cpu(2, 0), "intra-op"),
        (CACHED_ENSEMBLE, "instance group"),
        (dataclasses.replace(CPU, batching=BatchingPlan.fixed(1)), "dynamic batching"),
    ):
        with pytest.raises(NotReproducibleError, match=reason):
            plan.export_flags()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"instances": InstancePlan("KIND_CPU", 3)},  # one thread each: the same cap as shipped
        {"cpu_nice": 0},  # no interactive reserve
        {"batching": BatchingPlan(1, (), 250, 40, PriorityPlan(500, 7, 1_000_000, "bulk"))},
        {"batching": BatchingPlan(1, (), 0, 256, None)},
    ],
    ids=["shipped", "3x1", "no-reserve", "queues", "no-priorities"],
)
def test_export_flags_reproduce_the_plan(tmp_path, changes):
    """The canonical CPU export with a plan's flags writes networks with exactly that plan."""
    plan = dataclasses.replace(CPU, **changes)
    output = tmp_path / "repository"
    argv = ["esm2", "--random-init", "8M", "--target", "cpu:2", "--precision", "int8", "--configs-only"]
    assert export_main([*argv, "--output", str(output), *plan.export_flags()]) == 0
    for network in ("esm2_onnx", "esm2_torchscript"):
        assert ServingPlan.from_config(read_config(output / network)) == plan, network
    reserve = output / "esm2_onnx_interactive"
    assert reserve.is_dir() == bool(plan.cpu_nice)


def test_a_gpu_plan_from_flags(tmp_path):
    plan = dataclasses.replace(GPU_LIST, execution_token_budget=None)  # its flags name max_batch_size: no cap
    output = tmp_path / "repository"
    argv = ["esm2", "--random-init", "8M", "--precision", "fp32", "--configs-only", "--output", str(output)]
    assert export_main([*argv, *plan.export_flags()]) == 0
    assert ServingPlan.from_config(read_config(output / "esm2_onnx")) == plan


def test_one_engine_format_table():
    assert set(ENGINE_FORMATS) == {"onnx", "torchscript"}
    onnx, torchscript = engine_format("onnx"), engine_format("torchscript")
    assert onnx.thread_parameters == ("intra_op_thread_count", "inter_op_thread_count")
    assert torchscript.thread_parameters == ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")
    assert format_of("onnxruntime_onnx") is onnx and format_of(backend="onnxruntime") is onnx
    assert format_of("pytorch_libtorch") is torchscript and format_of(backend="pytorch") is torchscript
    assert format_of("ensemble") is None and format_of(backend="python") is None
    assert format_of_config(read_config(REPOSITORY / "esm2_torchscript")) is torchscript
    with pytest.raises(ValueError, match="unknown engine format"):
        engine_format("tensorrt")


def test_the_cpu_plan_study_edits_configs_through_the_plan():
    from tritonfleet.loadtest.cpu_plan import plans

    for plan in plans(2):
        config = read_config(REPOSITORY / "esm2_onnx")
        plan.apply(config)
        served = ServingPlan.from_config(config)
        assert served.instance_count == plan.instances and served.threads.intra_op == plan.threads
        assert served.batching.preferred_batch_sizes == plan.preferred_batch_sizes
        assert served.batching.max_batch_size >= max(plan.preferred_batch_sizes, default=1)  # Triton loads it
        assert served.execution_token_budget == 1024 and served.cpu_nice == 10  # the rest stays as exported


def test_an_unordered_model_on_one_cpu_instance_gets_one_plain_queue():
    shipped = BatchingPlan(max_batch_size=1, preferred_batch_sizes=(), max_queue_delay_us=0)
    assert shipped.for_unordered_model("KIND_CPU", 1) == dataclasses.replace(shipped, max_queue_size=0, priorities=None)
    assert shipped.for_unordered_model("KIND_CPU", 2) == shipped
    assert shipped.for_unordered_model("KIND_GPU", 1) == shipped  # GPU plans keep their queues
    assert BatchingPlan.fixed(1).for_unordered_model("KIND_CPU", 1) == BatchingPlan.fixed(1)
    assert shipped.has_queue_policy and not BatchingPlan.fixed(1).has_queue_policy
    assert not dataclasses.replace(shipped, max_queue_size=0, priorities=None).has_queue_policy
