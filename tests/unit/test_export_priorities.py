"""Priority levels in the generated configs: every batching model of the ESM-2 pipeline and of `export torch`."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.esm2.pipeline import (
    BLS_MODEL,
    ENSEMBLE_MODEL,
    ONNX_MODEL,
    TOKENIZER_MODEL,
    TORCHSCRIPT_MODEL,
    interactive_network,
)
from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config
from tritonfleet.contract.priorities import PRIORITY_LEVELS
from tritonfleet.contract.serving_plan import BatchingPlan, PriorityPlan
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.__main__ import _batching, build_parser, main
from tritonfleet.export.devices import plan_devices
from tritonfleet.export.esm2.repository import CANONICAL_ARGS
from tritonfleet.export.model_config import network_config

BATCHING_MODELS = (ONNX_MODEL, TORCHSCRIPT_MODEL, BLS_MODEL)
# One CPU instance each on a CPU plan: one plain queue (BatchingPlan.for_unordered_model says why).
ONE_INSTANCE_MODELS = (TOKENIZER_MODEL, interactive_network(ONNX_MODEL))
INTERACTIVE, BULK = PRIORITY_LEVELS["interactive"], PRIORITY_LEVELS["bulk"]


def export_configs(output: Path, *extra: str) -> dict[str, mc.ModelConfig]:
    args = [*CANONICAL_ARGS[: CANONICAL_ARGS.index("--output")], "--output", str(output), "--configs-only", *extra]
    assert main(args) == 0
    return {path.parent.name: read_config(path) for path in sorted(output.glob(f"*/{CONFIG_FILENAME}"))}


def policy_fields(policy: mc.ModelQueuePolicy) -> tuple:
    return (
        policy.timeout_action,
        policy.max_queue_size,
        policy.default_timeout_microseconds,
        policy.allow_timeout_override,
    )


def test_every_batching_model_gets_an_interactive_level_ahead_of_bulk(tmp_path):
    configs = export_configs(tmp_path)
    for name in BATCHING_MODELS:
        batching = configs[name].dynamic_batching
        assert (batching.priority_levels, batching.default_priority_level) == (2, BULK), name
        assert set(batching.priority_queue_policy) == {INTERACTIVE, BULK}
        # interactive: a short queue, a 1 s queue-wait budget, refused (not delayed) past it, shortened by a deadline
        assert policy_fields(batching.priority_queue_policy[INTERACTIVE]) == (mc.ModelQueuePolicy.REJECT, 32, 10**6, 1)
        # bulk: the deep queue, a one-hour ceiling that client deadlines can shorten
        bulk = batching.priority_queue_policy[BULK]
        assert policy_fields(bulk) == (mc.ModelQueuePolicy.REJECT, 256, 3600 * 10**6, 1)
        assert batching.default_queue_policy == bulk
    assert not configs[ENSEMBLE_MODEL].HasField("dynamic_batching")  # ensembles pass the level on to their steps


@pytest.mark.parametrize("extra", [(), ("--interactive-budget-ms", "250", "--max-queue-size", "40")])
def test_one_instance_cpu_models_keep_one_plain_queue(tmp_path, extra):
    configs = export_configs(tmp_path, *extra)
    for name in ONE_INSTANCE_MODELS:
        assert [group.count for group in configs[name].instance_group] == [1], name
        batching = configs[name].dynamic_batching
        assert configs[name].HasField("dynamic_batching"), name  # whatever queued while busy still batches
        assert (batching.priority_levels, dict(batching.priority_queue_policy)) == (0, {}), name
        assert batching.default_queue_policy == mc.ModelQueuePolicy(), name  # no bound, no wait limit


def test_two_tokenizer_instances_keep_the_priority_queues(tmp_path):
    configs = export_configs(tmp_path, "--target", "gpu:0,1")
    batching = configs[TOKENIZER_MODEL].dynamic_batching
    assert [group.count for group in configs[TOKENIZER_MODEL].instance_group] == [2]
    assert batching.priority_levels == 2 and set(batching.priority_queue_policy) == {INTERACTIVE, BULK}


def test_priority_flags_reach_every_batching_model(tmp_path):
    configs = export_configs(
        tmp_path,
        "--interactive-budget-ms", "250",
        "--interactive-queue-size", "8",
        "--bulk-queue-timeout-s", "0",
        "--default-priority", "interactive",
        "--max-queue-size", "40",
    )  # fmt: skip
    for name in BATCHING_MODELS:
        batching = configs[name].dynamic_batching
        assert batching.default_priority_level == INTERACTIVE
        interactive, bulk = batching.priority_queue_policy[INTERACTIVE], batching.priority_queue_policy[BULK]
        assert (interactive.max_queue_size, interactive.default_timeout_microseconds) == (8, 250_000)
        assert (bulk.max_queue_size, bulk.default_timeout_microseconds) == (40, 0)


def test_no_priorities_keeps_one_first_come_queue(tmp_path):
    configs = export_configs(tmp_path, "--no-priorities")
    for name in BATCHING_MODELS:
        batching = configs[name].dynamic_batching
        assert batching.priority_levels == 0 and not batching.priority_queue_policy
        assert policy_fields(batching.default_queue_policy) == (mc.ModelQueuePolicy.REJECT, 256, 0, 0)


@pytest.mark.parametrize(
    "flags", [["--interactive-budget-ms", "0"], ["--interactive-queue-size", "0"], ["--bulk-queue-timeout-s", "-1"]]
)
def test_bad_priority_flags_end_the_export_with_one_line(tmp_path, capsys, flags):
    args = [*CANONICAL_ARGS[: CANONICAL_ARGS.index("--output")], "--output", str(tmp_path), "--configs-only", *flags]
    assert main(args) == 2
    assert "priority options" in capsys.readouterr().err
    assert not list(tmp_path.glob(f"*/{CONFIG_FILENAME}"))


def test_export_torch_shares_the_priority_flags():
    args = build_parser().parse_args(
        ["torch", "--factory", "m:build", "--name", "m", "--output", "x", "--gpus", "none",
         "--interactive-budget-ms", "500", "--default-priority", "interactive"]
    )  # fmt: skip
    batching = _batching(args, plan_devices("none"))
    assert batching.priorities == PriorityPlan(interactive_budget_us=500_000, default_level="interactive")
    config = network_config(
        "m_onnx",
        "onnx",
        [TensorSpec("X", "float32", (4,))],
        [TensorSpec("Y", "float32", (2,))],
        plan_devices("none").network_plan(batching),
        [],
        {},
    )
    assert config.dynamic_batching.priority_levels == 2
    assert config.dynamic_batching.priority_queue_policy[INTERACTIVE].default_timeout_microseconds == 500_000


def test_priorities_survive_batch_limits():
    options = BatchingPlan(priorities=PriorityPlan(interactive_queue_size=3))
    assert options.with_limits(16, 9).priorities == options.priorities
    assert options.limited_to(8).priorities == options.priorities
    with pytest.raises(ValueError, match="default priority"):
        PriorityPlan(default_level="urgent")
