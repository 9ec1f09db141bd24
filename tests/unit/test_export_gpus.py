"""Device planning for 0, 1, 4 and 8 GPUs (device count mocked) and the instance groups it produces."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.repository import (
    ONNX_MODEL,
    TOKENIZER_MODEL,
    TORCHSCRIPT_MODEL,
    RepositoryOptions,
    build_configs,
)
from tritonfleet.export.gpus import DevicePlan, plan_devices


@pytest.mark.parametrize("gpu_count", [1, 4, 8])
def test_auto_uses_every_detected_gpu(gpu_count):
    plan = plan_devices("auto", instances_per_gpu=2, device_count=lambda: gpu_count)
    assert plan.kind == "KIND_GPU"
    assert plan.gpus == tuple(range(gpu_count))
    assert plan.total_instances == 2 * gpu_count
    assert plan.tokenizer_instances == gpu_count


def test_auto_without_gpus_falls_back_to_cpu():
    plan = plan_devices("auto", cpu_instances=3, device_count=lambda: 0)
    assert plan == DevicePlan("KIND_CPU", cpu_instances=3)
    assert plan.total_instances == 3 and plan.tokenizer_instances == 1


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
    plan = plan_devices("auto", instances_per_gpu=2, device_count=lambda: gpu_count)
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
