"""`python -m export torch` without exporting: factory loading, one-line errors with exit status 2, and the configs
and warmup files written for a signature (the full exports run in tests/integration/test_export_generic.py)."""

from __future__ import annotations

import math
import re
import textwrap

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.model_config import ServedModel, read_config
from tritonfleet.contract.serving_plan import BatchingPlan
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.__main__ import main
from tritonfleet.export.devices import plan_devices
from tritonfleet.export.factory import call_factory, load_factory
from tritonfleet.export.generic import TorchExportOptions, model_names, write_models
from tritonfleet.export.model_config import WARMUP_DIRNAME
from tritonfleet.export.network import ExportReport, Network
from tritonfleet.export.signature import ExportError, Signature

FACTORIES = """
import torch

class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2

def build():
    return Double(), [torch.ones(2, 3), torch.ones(4, 3)]

def just_a_module():
    return Double()

def not_a_module():
    return "model", [torch.ones(2, 3)]

def no_samples():
    return Double(), []

def broken():
    raise RuntimeError("weights missing")

NOT_CALLABLE = 3
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "user_factories.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "imports_missing.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_factories"


def test_a_factory_loads_and_returns_module_and_samples(factories):
    module, samples = call_factory(load_factory(f"{factories}:build"), f"{factories}:build")
    assert type(module).__name__ == "Double" and len(samples) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("user_factories", "must look like MODULE:CALLABLE"),
        ("no_such_module:build", "module 'no_such_module' not found"),
        ("imports_missing:build", "importing 'imports_missing' failed: .*a_package_that_is_not_installed"),
        ("user_factories:missing", "'user_factories' has no attribute 'missing' \\(it has: .*build"),
        ("user_factories:NOT_CALLABLE", "is a int, not a callable"),
    ],
)
def test_factories_that_cannot_be_loaded(factories, spec, message):
    with pytest.raises(ExportError, match=message):
        load_factory(spec)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("just_a_module", r"must return \(module, samples\), got Double"),
        ("not_a_module", "the module is a str, not an nn.Module"),
        ("no_samples", "samples must be a non-empty list"),
        ("broken", r"raised RuntimeError: weights missing"),
    ],
)
def test_factories_that_return_the_wrong_thing(factories, name, message):
    spec = f"{factories}:{name}"
    with pytest.raises(ExportError, match=message):
        call_factory(load_factory(spec), spec)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--factory", "no_such_module:build"], "module 'no_such_module' not found"),
        (["--factory", "user_factories:build", "--input-names", "A,B"], r"--input-names gives 2 name\(s\)"),
        (["--factory", "user_factories:build", "--formats", "onnx,tflite"], "--formats takes onnx and/or torchscript"),
        (["--factory", "user_factories:build", "--gpus", "0,0"], "--gpus needs unique"),
        (["--factory", "user_factories:build", "--max-batch-size", "0"], "max_batch_size must be >= 1"),
        (["--factory", "user_factories:build", "--name", "a/b"], "--name 'a/b'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_status_2(factories, tmp_path, capsys, extra, message):
    arguments = ["torch", "--name", "m", "--output", str(tmp_path / "repository"), "--gpus", "none", *extra]
    assert main(arguments) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("python -m export torch: error: ")
    assert re.search(message, error_lines[0]), error_lines[0]
    assert not (tmp_path / "repository").exists()


def test_cli_requires_factory_name_and_output(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["torch", "--output", "x"])
    assert raised.value.code == 2
    assert "--factory" in capsys.readouterr().err


POOLER = Signature(
    inputs=(TensorSpec("IDS", "int64", ("ids_1",)), TensorSpec("MASK", "int64", ("ids_1",))),
    outputs=(TensorSpec("POOLED", "float32", (16,)), TensorSpec("TOKENS", "float32", ("ids_1", 16))),
)


def written_models(tmp_path, batch: int = 3, **options) -> dict[str, mc.ModelConfig]:
    samples = (
        (np.arange(batch * 5).reshape(batch, 5), np.ones((batch, 5), np.int64)),
        (np.zeros((2, 9), np.int64), np.ones((2, 9), np.int64)),
    )
    export_options = TorchExportOptions(name="pooler", output=tmp_path, **options)
    models = model_names(export_options.name, export_options.formats)
    write_models(Network(None, samples, POOLER), export_options, models, ExportReport(tmp_path))
    return {model: read_config(tmp_path / model) for model in models.values()}


def test_one_model_per_format_with_the_signature_and_backend_names(tmp_path):
    configs = written_models(tmp_path)
    assert sorted(configs) == ["pooler_onnx", "pooler_torchscript"]
    onnx = ServedModel.from_config(configs["pooler_onnx"])
    torchscript = ServedModel.from_config(configs["pooler_torchscript"])
    assert (onnx.platform, torchscript.platform) == ("onnxruntime_onnx", "pytorch_libtorch")
    assert [(spec.name, spec.dtype, spec.dims) for spec in onnx.inputs] == [
        ("IDS", "int64", (-1,)),
        ("MASK", "int64", (-1,)),
    ]
    assert [(spec.name, spec.dims) for spec in onnx.outputs] == [("POOLED", (16,)), ("TOKENS", (-1, 16))]
    assert [spec.name for spec in torchscript.inputs + torchscript.outputs] == [
        "IDS__0",
        "MASK__1",
        "POOLED__0",
        "TOKENS__1",
    ]


def test_batching_queue_and_devices_reach_the_configs(tmp_path):
    configs = written_models(
        tmp_path,
        devices=plan_devices("0,1", instances_per_gpu=2),
        batching=BatchingPlan(max_batch_size=16, preferred_batch_sizes=(4, 16), max_queue_size=5),
    )
    for config in configs.values():
        assert config.max_batch_size == 16
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size == 5 and policy.timeout_action == mc.ModelQueuePolicy.REJECT
        (group,) = config.instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0, 1] and group.count == 2


def test_warmup_is_the_first_sample_row_repeated_within_the_max_batch(tmp_path):
    configs = written_models(tmp_path, batch=40, batching=BatchingPlan(max_batch_size=8, preferred_batch_sizes=()))
    for model, config in configs.items():
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 8  # the sample's batch of 40, capped at max_batch_size
        served_inputs = [tensor.name for tensor in config.input]
        assert sorted(warmup.inputs) == sorted(served_inputs)
        for entry in warmup.inputs.values():
            assert list(entry.dims) == [5]
            data = (tmp_path / model / WARMUP_DIRNAME / entry.input_data_file).read_bytes()
            assert len(data) == math.prod(entry.dims) * 8
        ids_file = warmup.inputs[served_inputs[0]].input_data_file
        ids = np.frombuffer((tmp_path / model / WARMUP_DIRNAME / ids_file).read_bytes(), "<i8")
        np.testing.assert_array_equal(ids, np.arange(5))


def test_options_are_checked():
    with pytest.raises(ExportError, match="--formats"):
        TorchExportOptions(name="m", output=None, formats=("onnx", "onnx"))
    with pytest.raises(ExportError, match="--parity-samples"):
        TorchExportOptions(name="m", output=None, parity_samples=-1)


def test_declared_roles_reach_the_configs_and_the_load_tools(tmp_path):
    from tritonfleet.contract.pipeline import Role, roles_of
    from tritonfleet.loadtest.workload import ModelTarget, prepare_request

    configs = written_models(
        tmp_path,
        input_roles=(Role.TOKEN_IDS, Role.ATTENTION_MASK),
        output_roles=(Role.EMBEDDING, Role.RESIDUE_EMBEDDINGS),
    )
    assert configs["pooler_torchscript"].parameters["tensor_roles"].string_value == (
        "IDS__0=TOKEN_IDS,MASK__1=ATTENTION_MASK,POOLED__0=EMBEDDING,TOKENS__1=RESIDUE_EMBEDDINGS"
    )
    roles = roles_of(ServedModel.from_config(configs["pooler_onnx"]))
    assert (roles.input(Role.ATTENTION_MASK), roles.output(Role.EMBEDDING)) == ("MASK", "POOLED")
    target = ModelTarget.from_config(configs["pooler_torchscript"])
    assert (target.ids_input, target.mask_input, target.embedding_output) == ("IDS__0", "MASK__1", "POOLED__0")
    request = prepare_request(target, ["MKTAYIAKQR"])
    assert sorted(request.inputs) == ["IDS__0", "MASK__1"]


def test_without_declared_roles_nothing_is_guessed_from_the_names(tmp_path):
    from tritonfleet.loadtest.workload import ModelTarget

    configs = written_models(tmp_path)
    assert "tensor_roles" not in configs["pooler_onnx"].parameters
    with pytest.raises(KeyError, match="no installed pipeline declares"):
        _ = ModelTarget.from_config(configs["pooler_onnx"]).mask_input


def test_roles_must_fit_the_signature(tmp_path):
    from tritonfleet.contract.pipeline import Role

    with pytest.raises(ExportError, match="--input-roles gives 1 role"):
        written_models(tmp_path, input_roles=(Role.TOKEN_IDS,))
    with pytest.raises(SystemExit):
        main(["torch", "--factory", "m:f", "--name", "m", "--output", str(tmp_path), "--input-roles", "IDS,MASKY"])
