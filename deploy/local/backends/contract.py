"""Model-config facts shared by the Python-based backends (pure Python: importable without Triton)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

# Triton config data types -> numpy, as in Triton's own mapping (TYPE_STRING is BYTES, carried as np.object_).
CONFIG_DTYPES: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
INDEXED_NAME = re.compile(r"^(?P<base>.+)__(?P<index>\d+)$")


class ModelContractError(ValueError):
    """The model config does not match the model file; raised at load time, like the native backends do."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model config declares it (dims exclude the batch dim when batching)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> Any:
        return CONFIG_DTYPES[self.data_type]

    def full_shape(self, max_batch_size: int) -> tuple[int, ...]:
        return ((-1,) + self.dims) if max_batch_size > 0 else self.dims


@dataclass(frozen=True)
class ModelSpec:
    """The parts of a Triton model config (JSON form, as handed to `initialize`) the backends need."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str]
    default_model_filename: str

    @classmethod
    def from_config(cls, config: dict[str, Any], default_filename: str) -> ModelSpec:
        def specs(entries: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(e["name"], e.get("data_type", "TYPE_INVALID"), tuple(int(d) for d in e.get("dims", [])))
                for e in entries
            )

        name = config.get("name", "<unnamed>")
        if not config.get("input") or not config.get("output"):
            raise ModelContractError(
                f"model '{name}': the local runtime needs every input and output declared in config.pbtxt "
                "(configuration auto-complete is not supported by the Python-based backends); "
                "regenerate the config with `python -m export`"
            )
        for spec in specs(config["input"]) + specs(config["output"]):
            if spec.data_type not in CONFIG_DTYPES:
                raise ModelContractError(f"model '{name}': tensor '{spec.name}' has unsupported {spec.data_type}")
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        return cls(
            name=name,
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=specs(config["input"]),
            outputs=specs(config["output"]),
            parameters=parameters,
            default_model_filename=config.get("default_model_filename") or default_filename,
        )

    def int_parameter(self, key: str) -> int | None:
        """An integer `parameters` entry (as the native backends read them), or None when absent or empty."""
        raw = self.parameters.get(key, "").strip()
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError as error:
            raise ModelContractError(
                f"model '{self.name}': parameter '{key}' must be an integer, got '{raw}'"
            ) from error

    def bool_parameter(self, key: str, default: bool) -> bool:
        raw = self.parameters.get(key, "").strip().lower()
        if not raw:
            return default
        if raw in ("true", "1", "yes", "on"):
            return True
        if raw in ("false", "0", "no", "off"):
            return False
        raise ModelContractError(f"model '{self.name}': parameter '{key}' must be true or false, got '{raw}'")


def dims_compatible(model_dims: tuple[int, ...], config_dims: tuple[int, ...], exact: bool) -> bool:
    """Compare shapes as the ONNX Runtime backend does: -1 in the model accepts any configured value for inputs;
    outputs must match exactly (`exact`)."""
    if len(model_dims) != len(config_dims):
        return False
    for model_dim, config_dim in zip(model_dims, config_dims):
        if model_dim == config_dim:
            continue
        if model_dim == -1 and not exact:
            continue
        return False
    return True


def order_by_index_suffix(names: list[str]) -> list[int] | None:
    """For `NAME__<i>` names return each name's index; None when any name lacks the suffix."""
    indices = []
    for name in names:
        match = INDEXED_NAME.match(name)
        if match is None:
            return None
        indices.append(int(match.group("index")))
    return indices
