"""The Python-based backends' load-time contract, on top of the shared one (`tritonfleet.contract`).

`initialize` gets the model config as Triton's JSON; `served_model` reads it as a `ServedModel` and enforces what
this runtime needs (declared inputs and outputs with data types numpy can carry). The rest are the native backends'
rules: parameters as strings, how model dims and config dims compare, `NAME__<i>` naming. Importable without Triton.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.model_config import ServedModel
from tritonfleet.contract.tensors import config_data_type, dtype_from_config

INDEXED_NAME = re.compile(r"^(?P<base>.+)__(?P<index>\d+)$")
# ONNX Runtime's element type names where they differ from numpy's ("tensor(float)" is float32).
ORT_ELEMENT_TO_NUMPY = {"float": "float32", "double": "float64", "string": "object"}
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class ModelContractError(ValueError):
    """The model config does not match the model file; raised at load time, like the native backends do."""


def served_model(config: mc.ModelConfig) -> ServedModel:
    """The served model a config describes; ModelContractError for what the Python-based backends cannot serve."""
    name = config.name or "<unnamed>"
    if not config.input or not config.output:
        raise ModelContractError(
            f"model '{name}': the local runtime needs every input and output declared in config.pbtxt "
            "(configuration auto-complete is not supported by the Python-based backends); "
            "regenerate the config with `python -m export`"
        )
    for entry in (*config.input, *config.output):
        data_type = mc.DataType.Name(entry.data_type)
        try:
            dtype_from_config(data_type)
        except (TypeError, ValueError) as error:
            raise ModelContractError(f"model '{name}': tensor '{entry.name}' has unsupported {data_type}") from error
    return ServedModel.from_config(config)


def int_parameter(model: ServedModel, key: str) -> int | None:
    """An integer `parameters` entry (as the native backends read them), or None when absent or empty."""
    raw = model.parameters.get(key, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as error:
        raise ModelContractError(f"model '{model.name}': parameter '{key}' must be an integer, got '{raw}'") from error


def bool_parameter(model: ServedModel, key: str, default: bool) -> bool:
    raw = model.parameters.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ModelContractError(f"model '{model.name}': parameter '{key}' must be true or false, got '{raw}'")


def ort_config_data_type(ort_type: str) -> str:
    """The config data type of an ONNX Runtime type ("tensor(float)" -> "TYPE_FP32"); the ORT type itself when
    Triton has none for it."""
    element = ort_type.removeprefix("tensor(").removesuffix(")")
    try:
        return config_data_type(ORT_ELEMENT_TO_NUMPY.get(element, element))
    except (TypeError, ValueError):
        return ort_type


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


# Config parameter read by our Python-based backends only (Triton's native C++ backends ignore unknown parameters):
# raise the niceness of the instance's stub process by this much, so that the OS scheduler prefers the instances
# without it (the interactive-only network copy) whenever both want a core. Triton never preempts an execution; the
# OS preempts threads.
CPU_NICE_PARAMETER = "cpu_nice"


def apply_cpu_nice(model: ServedModel) -> int | None:
    """Adds `cpu_nice` (0-19) to the niceness of every thread of this process (a stub: one model instance); threads
    created later inherit it. Returns the niceness set, or None when the model has no such parameter."""
    increment = int_parameter(model, CPU_NICE_PARAMETER)
    if not increment:
        return None
    if not 0 < increment < 20:
        raise ModelContractError(
            f"model '{model.name}': parameter '{CPU_NICE_PARAMETER}' must be 0-19, got {increment}"
        )
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    raise_niceness(target)
    return target


def raise_niceness(target: int) -> None:
    """Raises the niceness of every thread of this process (and so of the threads and children it starts later) to
    `target`; never lowers it (that would need privileges)."""
    tasks = Path("/proc/self/task")
    for task in sorted(tasks.iterdir()) if tasks.is_dir() else []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpriority(os.PRIO_PROCESS, int(task.name)) < target:
                os.setpriority(os.PRIO_PROCESS, int(task.name), target)  # Linux: per thread
