"""Device planning for 0, 1, 4 and 8 GPUs (device count mocked) and the instance groups it produces."""

from __future__ import annotations

import dataclasses

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.esm2.pipeline import ONNX_MODEL, TOKENIZER_MODEL, TORCHSCRIPT_MODEL
from tritonfleet.contract.model_config import instance_count
from tritonfleet.contract.serving_plan import (
    MAX_CPU_INSTANCES,
    MIN_QUEUED_INSTANCES,
    BatchingPlan,
    InstancePlan,
    ThreadPlan,
    plan_cpu,
)
from tritonfleet.export.devices import DevicePlan, plan_devices
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.repository import RepositoryOptions, build_configs


@pytest.mark.parametrize("gpu_count", [1, 4, 8])
def test_auto_uses_every_detected_gpu(gpu_count):
    plan = plan_devices("auto", instances_per_gpu=2, device_count=lambda: gpu_count)
    assert plan.kind == "KIND_GPU"
    assert plan.gpus == tuple(range(gpu_count))
    assert plan.total_instances == 2 * gpu_count
    assert plan.tokenizer_instances == gpu_count


def test_auto_without_gpus_falls_back_to_cpu():
    plan = plan_devices("auto", cpu_instances=3, cpu_cores=6, device_count=lambda: 0)
    assert plan == DevicePlan("KIND_CPU", cpu_instances=3, cpu_threads=2, interactive_instances=1)
    assert plan.total_instances == 3 and plan.tokenizer_instances == 1


@pytest.mark.parametrize(
    ("cores", "instances", "threads", "planned"),
    [
        (1, None, None, (2, 1)),  # two single-threaded instances per core (QUEUED_INSTANCES_PER_CORE)
        (1, 1, None, (1, 1)),  # unless one is asked for
        (2, None, None, (4, 1)),
        (3, None, None, (6, 1)),
        (4, None, None, (8, 1)),
        (8, None, None, (8, 1)),  # MAX_CPU_INSTANCES
        (32, None, None, (MAX_CPU_INSTANCES, 32 // MAX_CPU_INSTANCES)),
        (8, 2, None, (2, 4)),
        (8, None, 4, (2, 4)),
        (8, 3, None, (3, 2)),
        (2, 4, None, (4, 1)),  # more instances than cores: asked for, kept, one thread each
        (8, 2, 2, (2, 2)),
    ],
)
def test_cpu_plan_keeps_threads_within_the_cores_unless_asked(cores, instances, threads, planned):
    assert plan_cpu(cores, instances, threads) == planned
    if instances is None or threads is None:
        chosen_instances, chosen_threads = planned
        assert chosen_threads <= cores and chosen_instances * chosen_threads <= max(2 * cores, chosen_instances)


def test_cpu_plans_size_engine_threads_and_gpu_plans_leave_them_to_the_engine():
    assert DevicePlan("KIND_CPU", cpu_instances=2, cpu_threads=3).thread_plan() == ThreadPlan(3, 1)
    assert DevicePlan("KIND_GPU", (0,)).thread_plan() == ThreadPlan()
    assert DevicePlan("KIND_CPU").thread_plan() == ThreadPlan()  # engine default threads: no parameter
    assert DevicePlan("KIND_GPU", (1, 3), instances_per_gpu=2).instance_plan() == InstancePlan("KIND_GPU", 2, (1, 3))
    assert DevicePlan("KIND_CPU", cpu_instances=4).instance_plan() == InstancePlan("KIND_CPU", 4)


def test_the_interactive_reserve_is_single_threaded_with_interactive_queues():
    devices = DevicePlan("KIND_CPU", cpu_instances=2, cpu_threads=1, interactive_instances=1)
    batching = BatchingPlan(max_batch_size=4, preferred_batch_sizes=())
    reserve = devices.interactive_plan(batching, copy_of="net_onnx", token_budget=512)
    assert reserve.instances == InstancePlan("KIND_CPU", 1) and reserve.threads == ThreadPlan(1, 1)
    # one instance: one plain queue (BatchingPlan.for_unordered_model); two: the interactive level by default
    assert reserve.batching.priorities is None and reserve.batching.max_queue_size == 0
    assert reserve.interactive_copy_of == "net_onnx" and reserve.execution_token_budget == 512
    two = dataclasses.replace(devices, interactive_instances=2).interactive_plan(batching, copy_of="net_onnx")
    assert two.batching.priorities.default_level == "interactive"
    assert two.batching.max_queue_size == two.batching.priorities.interactive_queue_size
    with pytest.raises(ValueError, match="reserves no"):
        DevicePlan("KIND_GPU").interactive_plan(batching, copy_of="net_onnx")


def test_bad_cpu_plans_are_rejected():
    for arguments in ((0,), (2, 0), (2, None, 0)):
        with pytest.raises(ValueError, match="--cpu"):
            plan_cpu(*arguments)


def test_none_ignores_gpus_present():
    assert plan_devices("none", device_count=lambda: 8).kind == "KIND_CPU"


def test_explicit_ids_are_kept_without_looking_at_this_machine():
    plan = plan_devices("4,5,6,7", device_count=lambda: 0)
    assert plan.kind == "KIND_GPU" and plan.gpus == (4, 5, 6, 7)


@pytest.mark.parametrize("text", ["0,0", "-1", "a,b", ","])
def test_bad_gpu_lists_are_rejected(text):
    with pytest.raises(ValueError, match="--gpus"):
        plan_devices(text)


@pytest.mark.parametrize("gpu_count", [0, 1, 4, 8])
def test_configs_place_instances_per_plan(gpu_count, tmp_path):
    plan = plan_devices("auto", instances_per_gpu=2, cpu_cores=1, device_count=lambda: gpu_count)
    configs = build_configs(Esm2Recipe(random_init="8M"), RepositoryOptions(output=tmp_path, devices=plan))
    for name in (ONNX_MODEL, TORCHSCRIPT_MODEL):
        (group,) = configs[name].instance_group
        if gpu_count == 0:
            assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 2 and not group.gpus  # one core
        else:
            assert group.kind == mc.ModelInstanceGroup.KIND_GPU
            assert list(group.gpus) == list(range(gpu_count)) and group.count == 2
    (tokenizer_group,) = configs[TOKENIZER_MODEL].instance_group
    assert tokenizer_group.kind == mc.ModelInstanceGroup.KIND_CPU
    assert tokenizer_group.count == max(1, gpu_count)


@pytest.mark.parametrize("gpu_count", [0, 1, 4, 8])
def test_default_plans_give_every_queued_model_a_second_instance(gpu_count, tmp_path):
    # With priority levels or a queue bound, Triton's batcher idles a lone instance between executions
    # (BatchingPlan.for_unordered_model); default plans, a one-core CPU plan included, keep every such model at two
    # instances or more (one-instance models get one plain queue instead).
    plan = plan_devices("auto", cpu_cores=1, device_count=lambda: gpu_count)
    assert plan.total_instances >= 2
    configs = build_configs(Esm2Recipe(random_init="8M"), RepositoryOptions(output=tmp_path, devices=plan))
    queued = {
        name: config
        for name, config in configs.items()
        if config.HasField("dynamic_batching")
        and (config.dynamic_batching.priority_levels or config.dynamic_batching.default_queue_policy.max_queue_size)
    }
    assert ONNX_MODEL in queued and TORCHSCRIPT_MODEL in queued
    for name, config in queued.items():
        assert instance_count(config) >= MIN_QUEUED_INSTANCES, name


def test_an_explicit_single_instance_behind_queues_is_kept_with_a_warning(caplog):
    plan = plan_devices("none", cpu_instances=1, cpu_threads=1)
    with caplog.at_level("WARNING", logger="tritonfleet.export.devices"):
        served = plan.network_plan(BatchingPlan())
    assert served.instances == InstancePlan("KIND_CPU", 1)
    assert "idles it between executions" in caplog.text and "--no-priorities --max-queue-size 0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tritonfleet.export.devices"):
        plan.network_plan(BatchingPlan(max_queue_size=0, priorities=None))  # one plain queue: nothing to warn of
        plan_devices("none", cpu_cores=1).network_plan(BatchingPlan())  # the default one-core plan: two instances
    assert not caplog.text
