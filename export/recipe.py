"""The export recipe: everything the generic exporters, parity check and config builders need to know about a model.

Adding another PyTorch model means one file that implements `ModelRecipe` (see `export.esm2.recipe`): how to build
the eager module, example inputs for tracing, parity cases, and the named inputs/outputs with their dynamic axes.
This module imports numpy only, so config generation never needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

# numpy dtype name -> Triton DataType enum name (model_config.proto).
TRITON_DTYPES: dict[str, str] = {
    "bool": "TYPE_BOOL",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "object": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """A named model input or output.

    Attributes:
        name: the tensor name of the contract (docs/design.md), e.g. "INPUT_IDS".
        dtype: numpy dtype name ("int64", "float32", "float16", "object" for BYTES).
        axes: every axis including the leading batch axis; a str is a dynamic axis (its ONNX symbolic name),
            an int a fixed size.
    """

    name: str
    dtype: str
    axes: tuple[str | int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in TRITON_DTYPES:
            raise ValueError(f"{self.name}: unsupported dtype {self.dtype!r}")
        if not self.axes or not isinstance(self.axes[0], str):
            raise ValueError(f"{self.name}: the first axis must be the dynamic batch axis")

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]

    @property
    def triton_dims(self) -> list[int]:
        """Dims for a config with max_batch_size > 0: the batch axis left out, dynamic axes as -1."""
        return [-1 if isinstance(axis, str) else axis for axis in self.axes[1:]]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {index: axis for index, axis in enumerate(self.axes) if isinstance(axis, str)}


@dataclass(frozen=True)
class ParityCase:
    """One set of inputs (numpy, in input order) on which exported and eager outputs must agree."""

    label: str
    inputs: tuple[np.ndarray, ...]


@runtime_checkable
class ModelRecipe(Protocol):
    """What the exporters need from a model.

    `build_module()` returns the eager `torch.nn.Module` in eval mode; its `forward` takes the inputs in the order
    of `inputs` and returns a tuple in the order of `outputs`.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def build_module(self) -> torch.nn.Module: ...

    def example_inputs(self) -> tuple[np.ndarray, ...]:
        """Inputs used to trace/export (every dynamic axis should be > 1 so no size gets specialised)."""
        ...

    def trace_check_inputs(self) -> Sequence[tuple[np.ndarray, ...]]:
        """Further inputs of other shapes that a trace must reproduce."""
        ...

    def parity_cases(self, samples: int) -> list[ParityCase]:
        """`samples` cases of varied batch sizes and lengths (with padding)."""
        ...


def torchscript_name(spec: TensorSpec, index: int) -> str:
    """The LibTorch backend's `<name>__<index>` naming convention (index = position in forward args / outputs)."""
    return f"{spec.name}__{index}"
