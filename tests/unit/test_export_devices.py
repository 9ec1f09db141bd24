"""Device planning for 0, 1, 4 and 8 GPUs (device count mocked) and the instance groups it produces."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.export.devices import MAX_CPU_INSTANCES, DevicePlan, plan_cpu, plan_devices
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.repository import (
    ONNX_MODEL,
    TOKENIZER_MODEL,
    TORCHSCRIPT_MODEL,
    RepositoryOptions,
    build_configs,
)


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
        (1, None, None, (1, 1)),
        (2, None, None, (2, 1)),
        (8, None, None, (8, 1)),
        (32, None, None, (MAX_CPU_INSTANCES, 32 // MAX_CPU_INSTANCES)),
        (8, 2, None, (2, 4)),
        (8, None, 4, (2, 4)),
        (8, 3, None, (3, 2)),
        (2, 4, None, (4, 1)),  # more instances than cores: asked for, kept, one thread each
        (8, 2, 2, (2, 2)),
    ],
)
def test_cpu_plan_never_oversubscribes_unless_asked(cores, instances, threads, planned):
    assert plan_cpu(cores, instances, threads) == planned
    if instances is None or threads is None:
        chosen_instances, chosen_threads = planned
        assert chosen_instances * chosen_threads <= max(cores, chosen_instances)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_thread_parameters_use_the_native_backends_keys(fmt):
    parameters = DevicePlan("KIND_CPU", cpu_instances=2, cpu_threads=1).engine_parameters(fmt)
    expected = {"onnx": {"intra_op_thread_count", "inter_op_thread_count"}}
    assert set(parameters) == expected.get(fmt, {"INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"})
    assert DevicePlan("KIND_GPU", (0,)).engine_parameters(fmt) == {}
    assert DevicePlan("KIND_CPU").engine_parameters(fmt) == {}  # engine default threads: no parameter


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
            assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1 and not group.gpus
        else:
            assert group.kind == mc.ModelInstanceGroup.KIND_GPU
            assert list(group.gpus) == list(range(gpu_count)) and group.count == 2
    (tokenizer_group,) = configs[TOKENIZER_MODEL].instance_group
    assert tokenizer_group.kind == mc.ModelInstanceGroup.KIND_CPU
    assert tokenizer_group.count == max(1, gpu_count)
