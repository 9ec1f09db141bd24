"""Triton model configs: the one place config.pbtxt is read and written, and the served-model view of a config.

A config is a `tritonclient.grpc.model_config_pb2.ModelConfig` message everywhere: read from `config.pbtxt` with
protobuf's text format, from Triton's JSON answers (`get_model_config`, a python model's `initialize(args)`) with
protobuf's JSON format, and written back with text format (deterministic: maps sorted by key). Only fields Triton
r24.10 (2.51) knows are set by this project: the tritonclient proto is newer than the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.tensors import TensorSpec

CONFIG_FILENAME = "config.pbtxt"
ModelConfig = mc.ModelConfig


def read_config(path: Path | str) -> mc.ModelConfig:
    """Parses `<model_dir>/config.pbtxt` (or the file itself); raises on unknown fields."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def render_config(config: mc.ModelConfig, header: str = "") -> str:
    """The config.pbtxt text: an optional comment header, then protobuf text format."""
    return header + text_format.MessageToString(config)


def write_config(config: mc.ModelConfig, model_dir: Path, header: str = "") -> Path:
    """Writes `<model_dir>/config.pbtxt` atomically (a server polling the repository never sees half a file)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILENAME
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(render_config(config, header), encoding="utf-8")
    os.replace(temporary, path)
    return path


def config_from_json(answer: Mapping[str, Any] | str) -> mc.ModelConfig:
    """A ModelConfig from Triton's JSON form (HTTP `get_model_config`, gRPC `as_json` wrapped in "config", or the
    `model_config` string a python model gets); fields this proto does not know are ignored."""
    data = json.loads(answer) if isinstance(answer, str) else dict(answer)
    data = data.get("config", data)
    return json_format.ParseDict(data, mc.ModelConfig(), ignore_unknown_fields=True)


def config_to_json(config: mc.ModelConfig) -> dict[str, Any]:
    """The JSON form Triton's repository API takes as a load override (`parameters.config`)."""
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def model_configs(repository: Path) -> Iterator[tuple[str, mc.ModelConfig]]:
    """(name, config) of every model directory with a config.pbtxt in a repository, in name order."""
    for path in sorted(Path(repository).glob(f"*/{CONFIG_FILENAME}")):
        yield path.parent.name, read_config(path)


def string_parameters(config: mc.ModelConfig) -> dict[str, str]:
    """The config's `parameters` as {key: string value}."""
    return {key: value.string_value for key, value in config.parameters.items()}


def instance_count(config: mc.ModelConfig) -> int:
    """Model instances the config asks for: per group `count`, times its GPUs for KIND_GPU (ensembles: 0)."""
    if config.platform == "ensemble":
        return 0
    total = 0
    for group in config.instance_group:
        count = group.count or 1
        total += count * len(group.gpus) if group.kind == mc.ModelInstanceGroup.KIND_GPU and group.gpus else count
    return total or 1


@dataclass(frozen=True)
class ServedModel:
    """What the stages need to know about one served model, read from its config (never hard-coded).

    Attributes:
        name: model name.
        platform: e.g. "onnxruntime_onnx", "pytorch_libtorch", "ensemble" ("" for a `backend:` model).
        backend: e.g. "python" ("" when only `platform` is set).
        max_batch_size: 0 for a model without a batch axis.
        inputs: the inputs in config order.
        outputs: the outputs in config order.
        parameters: config `parameters` as strings.
        default_model_filename: the config's `default_model_filename` ("" when unset).
    """

    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    default_model_filename: str = ""

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> ServedModel:
        def specs(entries) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec.from_config(entry.name, mc.DataType.Name(entry.data_type), entry.dims) for entry in entries
            )

        return cls(
            name=config.name,
            platform=config.platform,
            backend=config.backend,
            max_batch_size=config.max_batch_size,
            inputs=specs(config.input),
            outputs=specs(config.output),
            parameters=string_parameters(config),
            default_model_filename=config.default_model_filename,
        )

    def input(self, name: str) -> TensorSpec:
        return _named(self.inputs, name, f"model {self.name!r} has no input")

    def output(self, name: str) -> TensorSpec:
        return _named(self.outputs, name, f"model {self.name!r} has no output")


def _named(specs: tuple[TensorSpec, ...], name: str, message: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"{message} {name!r} (it has {', '.join(spec.name for spec in specs)})")
