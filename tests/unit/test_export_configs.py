"""Generated configs: they parse into ModelConfig, obey Triton's rules, and match the committed repository."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.esm2.pipeline import (
    BLS_MODEL,
    EMBEDDING_MODEL,
    ENSEMBLE_MODEL,
    INTERACTIVE_MODEL,
    ONNX_MODEL,
    TOKENIZER_MODEL,
    TORCHSCRIPT_MODEL,
)
from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config
from tritonfleet.contract.serving_plan import QUEUED_INSTANCES_PER_CORE
from tritonfleet.export.__main__ import main
from tritonfleet.export.esm2.repository import CANONICAL_ARGS, CANONICAL_COMMAND
from tritonfleet.export.model_config import WARMUP_DIRNAME
from tritonfleet.export.network import MODEL_VERSION

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_REPOSITORY = PROJECT_ROOT / "model_repository"
ELEMENT_BYTES = {mc.TYPE_INT64: 8, mc.TYPE_FP32: 4, mc.TYPE_FP16: 2}


def export_configs(output: Path, *extra: str) -> dict[str, mc.ModelConfig]:
    """Runs the CLI in --configs-only mode (the same config code path as a full export)."""
    args = [*CANONICAL_ARGS[: CANONICAL_ARGS.index("--output")], "--output", str(output), "--configs-only", *extra]
    assert main(args) == 0
    return {path.parent.name: read_config(path) for path in sorted(output.glob(f"*/{CONFIG_FILENAME}"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, mc.ModelConfig]]:
    output = tmp_path_factory.mktemp("configs")
    return output, export_configs(output)


def tensors(config: mc.ModelConfig, kind: str) -> dict[str, mc.ModelInput]:
    return {tensor.name: tensor for tensor in getattr(config, kind)}


def test_the_contract_models_and_the_entry_models(generated):
    _, configs = generated
    assert set(configs) == {
        ENSEMBLE_MODEL,
        BLS_MODEL,
        TOKENIZER_MODEL,
        ONNX_MODEL,
        TORCHSCRIPT_MODEL,
        EMBEDDING_MODEL,
        INTERACTIVE_MODEL,
        f"{ONNX_MODEL}_interactive",
    }
    assert configs[BLS_MODEL].backend == "python"
    assert list(tensors(configs[BLS_MODEL], "input")) == ["SEQUENCE"]
    assert list(tensors(configs[BLS_MODEL], "output")) == ["EMBEDDING", "RESIDUE_EMBEDDINGS"]
    target = configs[BLS_MODEL].parameters["target_model"].string_value
    assert target in configs and configs[target].max_batch_size == 1  # the CPU plan's execution cap
    assert configs[ONNX_MODEL].platform == "onnxruntime_onnx"
    assert configs[TORCHSCRIPT_MODEL].platform == "pytorch_libtorch"
    assert configs[TOKENIZER_MODEL].backend == "python"
    assert configs[ENSEMBLE_MODEL].platform == "ensemble"
    assert list(tensors(configs[ONNX_MODEL], "input")) == ["INPUT_IDS", "ATTENTION_MASK"]
    assert list(tensors(configs[ONNX_MODEL], "output")) == ["EMBEDDING", "RESIDUE_EMBEDDINGS"]
    assert list(tensors(configs[TORCHSCRIPT_MODEL], "input")) == ["INPUT_IDS__0", "ATTENTION_MASK__1"]
    assert list(tensors(configs[TORCHSCRIPT_MODEL], "output")) == ["EMBEDDING__0", "RESIDUE_EMBEDDINGS__1"]
    assert list(tensors(configs[ENSEMBLE_MODEL], "input")) == ["SEQUENCE"]
    assert list(tensors(configs[ENSEMBLE_MODEL], "output")) == ["EMBEDDING", "RESIDUE_EMBEDDINGS"]


def test_batching_models_leave_the_batch_dim_out_of_dims(generated):
    _, configs = generated
    hidden = int(configs[ONNX_MODEL].parameters["hidden_size"].string_value)
    for name in (ONNX_MODEL, TORCHSCRIPT_MODEL, ENSEMBLE_MODEL, BLS_MODEL):
        config = configs[name]
        assert config.max_batch_size == 1  # the CPU plan's execution cap (tests/unit/test_export_execution_cap.py)
        outputs = list(tensors(config, "output").values())
        assert [list(t.dims) for t in outputs] == [[hidden], [-1, hidden]]
        assert all(t.data_type == mc.TYPE_FP32 for t in outputs)
    for name in (ONNX_MODEL, TORCHSCRIPT_MODEL):
        assert all(list(t.dims) == [-1] and t.data_type == mc.TYPE_INT64 for t in configs[name].input)
    assert [list(t.dims) for t in configs[ENSEMBLE_MODEL].input] == [[1]]
    assert configs[ENSEMBLE_MODEL].input[0].data_type == mc.TYPE_STRING


def test_dynamic_batching_with_a_bounded_rejecting_queue(generated):
    _, configs = generated
    for name in (BLS_MODEL, ONNX_MODEL, TORCHSCRIPT_MODEL):
        batching = configs[name].dynamic_batching
        # CPU plan: no waiting for batch-mates (compute-bound), whatever queued while instances were busy batches
        assert not batching.preferred_batch_size and batching.max_queue_delay_microseconds == 0
        assert batching.default_queue_policy.max_queue_size > 0
        assert batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert configs[name].max_batch_size >= configs[ENSEMBLE_MODEL].max_batch_size


def test_gpu_plans_wait_briefly_for_preferred_batches(tmp_path):
    configs = export_configs(tmp_path, "--gpus", "0,1")
    for name in (ONNX_MODEL, TORCHSCRIPT_MODEL):
        batching = configs[name].dynamic_batching
        assert list(batching.preferred_batch_size) == [8, 16, 32, 64] and batching.max_queue_delay_microseconds > 0
        assert "intra_op_thread_count" not in configs[name].parameters
    assert 0 < configs[TOKENIZER_MODEL].dynamic_batching.max_queue_delay_microseconds < 2000


def test_cpu_plan_fills_the_cores_with_single_threaded_instances(tmp_path):
    configs = export_configs(tmp_path, "--cpu-cores", "4")  # the later --cpu-cores wins over the canonical 2
    for name, threads_key in ((ONNX_MODEL, "intra_op_thread_count"), (TORCHSCRIPT_MODEL, "INTRA_OP_THREAD_COUNT")):
        (group,) = configs[name].instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 4 * QUEUED_INSTANCES_PER_CORE
        assert configs[name].parameters[threads_key].string_value == "1"
    configs = export_configs(tmp_path, "--cpu-cores", "4", "--cpu-instances", "1")
    assert configs[ONNX_MODEL].instance_group[0].count == 1
    assert configs[ONNX_MODEL].parameters["intra_op_thread_count"].string_value == "4"
    assert configs[TORCHSCRIPT_MODEL].parameters["INTER_OP_THREAD_COUNT"].string_value == "1"


def test_ensemble_wiring_is_consistent(generated):
    _, configs = generated
    ensemble = configs[ENSEMBLE_MODEL]
    assert not ensemble.instance_group and not ensemble.model_warmup and not ensemble.HasField("dynamic_batching")
    produced = set(tensors(ensemble, "input"))
    for step in ensemble.ensemble_scheduling.step:
        step_config = configs[step.model_name]
        step_inputs, step_outputs = tensors(step_config, "input"), tensors(step_config, "output")
        assert set(step.input_map) == set(step_inputs), step.model_name
        assert set(step.input_map.values()) <= produced, f"{step.model_name} consumes a tensor nobody produced"
        assert set(step.output_map) <= set(step_outputs)
        produced |= set(step.output_map.values())
    assert set(tensors(ensemble, "output")) <= produced
    tokenizer_outputs = tensors(configs[TOKENIZER_MODEL], "output")
    onnx_inputs = tensors(configs[ONNX_MODEL], "input")
    for name, tensor in tokenizer_outputs.items():
        assert (tensor.data_type, list(tensor.dims)) == (onnx_inputs[name].data_type, list(onnx_inputs[name].dims))


def test_warmup_files_exist_and_have_the_declared_size(generated):
    output, configs = generated
    for name in (TOKENIZER_MODEL, ONNX_MODEL, TORCHSCRIPT_MODEL):
        config = configs[name]
        assert config.model_warmup, name
        for sample in config.model_warmup:
            assert set(sample.inputs) == set(tensors(config, "input"))
            for entry in sample.inputs.values():
                assert all(dim > 0 for dim in entry.dims)
                data = (output / name / WARMUP_DIRNAME / entry.input_data_file).read_bytes()
                if entry.data_type == mc.TYPE_STRING:
                    assert int.from_bytes(data[:4], "little") == len(data) - 4
                else:
                    assert len(data) == math.prod(entry.dims) * ELEMENT_BYTES[entry.data_type]


def test_tokenizer_code_is_copied_and_ensemble_has_a_version_dir(generated):
    output, configs = generated
    buckets = configs[TOKENIZER_MODEL].parameters["length_buckets"].string_value
    assert re.fullmatch(r"\d+(,\d+)*", buckets) or buckets == "exact"
    version_dir = output / TOKENIZER_MODEL / MODEL_VERSION
    assert (version_dir / "model.py").read_text().startswith('"""Served python model `esm2_tokenizer`')
    assert "def encode_batch" in (version_dir / "esm2_tokens.py").read_text()
    bls_dir = output / "esm2_bls" / MODEL_VERSION
    assert {"model.py", "esm2_tokens.py", "esm2_tokenizer_model.py"} <= {path.name for path in bls_dir.iterdir()}
    assert (output / ENSEMBLE_MODEL / MODEL_VERSION).is_dir()


def test_configs_say_the_weights_are_random_and_carry_no_paths_or_times(generated):
    output, configs = generated
    for name, config in configs.items():
        text = (output / name / CONFIG_FILENAME).read_text()
        assert text_format.Parse(text, mc.ModelConfig()) == config
        assert str(output) not in text and "/home/" not in text and "/tmp" not in text
        assert not re.search(r"20\d\d-\d\d-\d\d", text)
        if name != TOKENIZER_MODEL:
            assert "RANDOM WEIGHTS" in config.parameters["weights_source"].string_value


def test_generation_is_deterministic(generated, tmp_path):
    output, _ = generated
    export_configs(tmp_path)
    for path in output.glob(f"*/{CONFIG_FILENAME}"):
        assert (tmp_path / path.parent.name / CONFIG_FILENAME).read_bytes() == path.read_bytes()


def test_committed_configs_equal_a_fresh_canonical_export(generated):
    output, configs = generated
    committed = sorted(path.parent.name for path in COMMITTED_REPOSITORY.glob(f"*/{CONFIG_FILENAME}"))
    assert committed == sorted(configs), f"regenerate with {CANONICAL_COMMAND}"
    for name in committed:
        fresh = (output / name / CONFIG_FILENAME).read_text()
        assert (COMMITTED_REPOSITORY / name / CONFIG_FILENAME).read_text() == fresh, (
            f"model_repository/{name}/config.pbtxt is stale; regenerate with the canonical command"
        )


def test_committed_configs_are_tracked_and_generated_files_ignored():
    files = [
        "model_repository/esm2_onnx/config.pbtxt",
        "model_repository/esm2_onnx/1/model.onnx",
        "model_repository/esm2_onnx/warmup/input_ids_128",
        "model_repository/esm2_tokenizer/1/esm2_tokens.py",
        "model_repository/esm2_bls/1/esm2_tokenizer_model.py",
        "model_repository/esm2_tokenizer/1/model.py",
        "model_repository/esm2_bls/1/model.py",
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *files], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode == 128:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    ignored = set(result.stdout.split())
    assert ignored == set(files[1:-2])  # the served models' own code is committed


def test_cli_options_reach_the_configs(tmp_path):
    configs = export_configs(
        tmp_path,
        "--max-batch-size",
        "32",
        "--max-queue-size",
        "7",
        "--length-buckets",
        "64,256,1024",
        "--ensemble-target",
        "torchscript",
        "--preferred-batch-sizes",
        "4,16,64",
        "--max-queue-delay-us",
        "300",
    )
    assert list(configs[ONNX_MODEL].dynamic_batching.preferred_batch_size) == [4, 16]  # 64 > --max-batch-size
    assert configs[ONNX_MODEL].dynamic_batching.max_queue_delay_microseconds == 300
    assert configs[TOKENIZER_MODEL].dynamic_batching.max_queue_delay_microseconds == 0  # the tokenizer's own
    assert configs[ONNX_MODEL].max_batch_size == 32
    assert configs[BLS_MODEL].dynamic_batching.default_queue_policy.max_queue_size == 7
    assert configs[TOKENIZER_MODEL].dynamic_batching.default_queue_policy.max_queue_size == 0  # one instance: plain
    assert configs[TOKENIZER_MODEL].parameters["length_buckets"].string_value == "64,256,1024"
    assert configs[ENSEMBLE_MODEL].ensemble_scheduling.step[1].model_name == TORCHSCRIPT_MODEL


@pytest.mark.parametrize(
    ("target", "expected"),
    [("cpu:2", "exact"), ("gpu:0", "128,192,256,320,384,480,608,768,1024")],
)
def test_tokenizer_pads_to_exact_lengths_where_each_execution_holds_one_sequence(tmp_path, target, expected):
    """CPU plans cap an execution at one sequence: buckets would batch nothing and only add padded tokens."""
    configs = export_configs(tmp_path, "--target", target)
    one_sequence = configs[ONNX_MODEL].max_batch_size == 1
    assert one_sequence == target.startswith("cpu")
    assert configs[TOKENIZER_MODEL].parameters["length_buckets"].string_value == expected
    assert configs["esm2_bls"].parameters["length_buckets"].string_value == expected


def test_cli_requires_a_weights_source(capsys):
    with pytest.raises(SystemExit):
        main(["esm2", "--output", "x"])
    assert "--checkpoint" in capsys.readouterr().err


def test_module_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tritonfleet.export",
            "esm2",
            "--random-init",
            "8M",
            "--output",
            str(tmp_path),
            "--configs-only",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "RANDOM WEIGHTS" in result.stdout
    assert (tmp_path / ONNX_MODEL / CONFIG_FILENAME).exists()
