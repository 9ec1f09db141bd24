"""The shared contract: dtype conversions, tensor specs, config read/write and the served-model view of a config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.model_config import (
    CONFIG_FILENAME,
    ServedModel,
    config_from_json,
    config_to_json,
    instance_count,
    model_configs,
    read_config,
    render_config,
    write_config,
)
from tritonfleet.contract.tensors import (
    TensorSpec,
    api_dtype,
    config_data_type,
    dtype_from_api,
    dtype_from_config,
    numpy_dtype,
)

COMMITTED_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

# numpy dtype -> (Triton API name, model-config enum name), written out from Triton's docs (model_configuration.md,
# "Datatypes"), independently of the module under test.
TRITON_DATATYPES = {
    "bool": ("BOOL", "TYPE_BOOL"),
    "uint8": ("UINT8", "TYPE_UINT8"),
    "uint16": ("UINT16", "TYPE_UINT16"),
    "uint32": ("UINT32", "TYPE_UINT32"),
    "uint64": ("UINT64", "TYPE_UINT64"),
    "int8": ("INT8", "TYPE_INT8"),
    "int16": ("INT16", "TYPE_INT16"),
    "int32": ("INT32", "TYPE_INT32"),
    "int64": ("INT64", "TYPE_INT64"),
    "float16": ("FP16", "TYPE_FP16"),
    "float32": ("FP32", "TYPE_FP32"),
    "float64": ("FP64", "TYPE_FP64"),
    "object": ("BYTES", "TYPE_STRING"),
}


@pytest.mark.parametrize("numpy_name", sorted(TRITON_DATATYPES))
def test_dtype_conversions_both_ways(numpy_name):
    api_name, config_name = TRITON_DATATYPES[numpy_name]
    assert api_dtype(numpy_name) == api_name
    assert config_data_type(np.dtype(numpy_name)) == config_name
    assert mc.DataType.Name(mc.DataType.Value(config_name)) == config_name  # a real enum value of the proto
    assert dtype_from_api(api_name) == np.dtype(numpy_name)
    assert dtype_from_config(config_name) == np.dtype(numpy_name)


def test_bytes_are_numpy_objects_and_config_strings():
    assert numpy_dtype("bytes") == numpy_dtype(np.object_) == np.dtype(object)
    assert api_dtype(object) == "BYTES" and config_data_type("object") == "TYPE_STRING"
    assert TensorSpec("SEQUENCE", "object", (1,)).config_data_type == "TYPE_STRING"


@pytest.mark.parametrize(
    ("call", "argument"),
    [(api_dtype, "complex64"), (dtype_from_api, "FP8"), (dtype_from_config, "FP32"), (dtype_from_config, "TYPE_X")],
)
def test_unknown_dtypes_are_rejected(call, argument):
    with pytest.raises(ValueError):
        call(argument)


def test_tensor_spec_dims_and_named_axes():
    spec = TensorSpec("RESIDUE_EMBEDDINGS", np.float32, ("sequence", 320))
    assert spec.dtype == "float32" and spec.api_dtype == "FP32"
    assert spec.dims == (-1, 320)
    assert spec.full_shape(batched=True) == (-1, -1, 320)
    assert spec.named_axes(batched=True) == {0: "batch", 1: "sequence"}
    assert TensorSpec("X", "int64", (-1, 4)).named_axes(batched=False) == {0: "x_0"}


def test_tensor_spec_rejects_bad_axes_and_dtypes():
    with pytest.raises(ValueError, match="axis"):
        TensorSpec("X", "float32", (-2,))
    with pytest.raises(ValueError, match="no data type"):
        TensorSpec("X", "complex64", (2,))


def test_tensor_spec_checks_arrays():
    spec = TensorSpec("IDS", "int64", (-1,))
    spec.check_array(np.zeros((3, 7), dtype=np.int64), batched=True)
    with pytest.raises(ValueError, match="IDS: dtype int32"):
        spec.check_array(np.zeros((3, 7), dtype=np.int32), batched=True)
    with pytest.raises(ValueError, match=r"IDS: shape \[3\]"):
        spec.check_array(np.zeros(3, dtype=np.int64), batched=True)


def test_tensor_spec_from_config_and_metadata():
    assert TensorSpec.from_config("EMBEDDING", "TYPE_FP32", ["320"]) == TensorSpec("EMBEDDING", "float32", (320,))
    metadata = {"name": "SEQUENCE", "datatype": "BYTES", "shape": [-1, 1]}
    assert TensorSpec.from_metadata(metadata, batched=True) == TensorSpec("SEQUENCE", "object", (1,))
    assert TensorSpec.from_metadata(metadata, batched=False).dims == (-1, 1)


def test_config_round_trip_text_proto_json():
    path = COMMITTED_REPOSITORY / "esm2_onnx" / CONFIG_FILENAME
    text = path.read_text(encoding="utf-8")
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    config = read_config(path.parent)
    assert config == read_config(path)
    assert render_config(config, header) == text
    as_json = config_to_json(config)
    assert config_from_json(as_json) == config
    assert config_from_json(json.dumps(as_json)) == config
    assert config_from_json({"config": as_json}) == config  # the gRPC `as_json` answer wraps it


def test_write_config_is_readable_and_leaves_no_temporary(tmp_path):
    config = mc.ModelConfig(name="tiny", backend="python", max_batch_size=4)
    path = write_config(config, tmp_path / "tiny", header="# made by a test\n")
    assert path == tmp_path / "tiny" / CONFIG_FILENAME
    assert path.read_text().startswith('# made by a test\nname: "tiny"')
    assert read_config(path) == config
    assert [entry.name for entry in path.parent.iterdir()] == [CONFIG_FILENAME]


def test_model_configs_lists_the_committed_repository_in_name_order():
    names = [name for name, _ in model_configs(COMMITTED_REPOSITORY)]
    assert names == sorted(names)
    assert {"esm2", "esm2_bls", "esm2_onnx", "esm2_tokenizer", "esm2_torchscript"} <= set(names)


def test_served_model_from_the_json_a_python_model_receives():
    # `args["model_config"]` of a python model's initialize(): Triton's JSON with every field, dims as numbers,
    # enum names as strings, and fields a newer or older proto may not know.
    model_config = {
        "name": "esm2_tokenizer",
        "platform": "",
        "backend": "python",
        "runtime": "",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 64,
        "input": [
            {
                "name": "SEQUENCE",
                "data_type": "TYPE_STRING",
                "format": "FORMAT_NONE",
                "dims": [1],
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
        ],
        "output": [
            {
                "name": "INPUT_IDS",
                "data_type": "TYPE_INT64",
                "dims": [-1],
                "label_filename": "",
                "is_shape_tensor": False,
            },
            {"name": "ATTENTION_MASK", "data_type": "TYPE_INT64", "dims": ["-1"], "is_shape_tensor": False},
        ],
        "instance_group": [
            {"name": "esm2_tokenizer_0", "kind": "KIND_CPU", "count": 2, "gpus": [], "secondary_devices": []}
        ],
        "parameters": {"length_buckets": {"string_value": "128,256,1024"}},
        "dynamic_batching": {"preferred_batch_size": [8, 16], "max_queue_delay_microseconds": 500},
        "default_model_filename": "model.py",
        "a_field_from_another_release": {"x": 1},
    }
    model = ServedModel.from_config(config_from_json(json.dumps(model_config)))
    assert (model.name, model.backend, model.platform, model.max_batch_size) == ("esm2_tokenizer", "python", "", 64)
    assert model.batched and model.default_model_filename == "model.py"
    assert model.inputs == (TensorSpec("SEQUENCE", "object", (1,)),)
    assert model.outputs == (TensorSpec("INPUT_IDS", "int64", (-1,)), TensorSpec("ATTENTION_MASK", "int64", (-1,)))
    assert model.parameters == {"length_buckets": "128,256,1024"}
    assert model.output("ATTENTION_MASK").dims == (-1,)
    with pytest.raises(KeyError, match="has no input 'IDS'"):
        model.input("IDS")


def _config(*groups: mc.ModelInstanceGroup, platform: str = "onnxruntime_onnx") -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", platform=platform)
    config.instance_group.extend(groups)
    return config


CPU, GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (_config(mc.ModelInstanceGroup(kind=CPU, count=3)), 3),
        (_config(mc.ModelInstanceGroup(kind=GPU, count=2, gpus=[0, 1, 2, 3])), 8),  # count is per listed GPU
        (_config(mc.ModelInstanceGroup(kind=GPU, count=2, gpus=[4])), 2),
        (_config(mc.ModelInstanceGroup(kind=CPU, count=1), mc.ModelInstanceGroup(kind=GPU, count=1, gpus=[0, 1])), 3),
        (_config(mc.ModelInstanceGroup(kind=CPU)), 1),  # count unset means 1
        (_config(), 1),  # no instance_group: Triton's default of one instance
        (_config(platform="ensemble"), 0),  # ensembles have no instances of their own
    ],
)
def test_instance_count_for_cpu_and_gpu_groups(config, expected):
    assert instance_count(config) == expected
