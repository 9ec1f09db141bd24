"""Named tensors and their data types, the one conversion point between numpy, Triton's API and config names.

Conversions go through tritonclient's own tables (`np_to_triton_dtype`, `triton_to_np_dtype`): numpy `float32`
<-> API `FP32` <-> config `TYPE_FP32`; numpy `object` (bytes) <-> API `BYTES` <-> config `TYPE_STRING`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

# A tensor axis: an int >= 0 is a fixed size, -1 a dynamic size; a str is a dynamic size with a name (axes sharing a
# name have equal sizes, e.g. the token axis of INPUT_IDS, ATTENTION_MASK and RESIDUE_EMBEDDINGS).
Axis = int | str
BATCH_AXIS = "batch"


def numpy_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype from a numpy/torch-style name or dtype ("float32", np.int64, "object" for BYTES)."""
    return np.dtype(object if dtype in ("object", "bytes", np.object_) else dtype)


def api_dtype(dtype: Any) -> str:
    """Triton's API data type of a numpy dtype: "FP32", "INT64", "BYTES", ..."""
    name = np_to_triton_dtype(numpy_dtype(dtype))
    if name is None:
        raise ValueError(f"Triton has no data type for numpy {numpy_dtype(dtype)}")
    return name


def config_data_type(dtype: Any) -> str:
    """The model-config enum name of a numpy dtype: "TYPE_FP32", "TYPE_STRING" (BYTES), ..."""
    name = api_dtype(dtype)
    return "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"


def dtype_from_config(data_type: str) -> np.dtype:
    """The numpy dtype of a model-config enum name ("TYPE_FP32" -> float32, "TYPE_STRING" -> object)."""
    if not data_type.startswith("TYPE_"):
        raise ValueError(f"not a model-config data type: {data_type!r}")
    return dtype_from_api(data_type.removeprefix("TYPE_").replace("STRING", "BYTES"))


def dtype_from_api(data_type: str) -> np.dtype:
    """The numpy dtype of an API data type ("FP32" -> float32, "BYTES" -> object)."""
    dtype = triton_to_np_dtype(data_type)
    if dtype is None:
        raise ValueError(f"unknown Triton data type {data_type!r}")
    return np.dtype(dtype)


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a served model.

    Attributes:
        name: the tensor's name as served (TorchScript models carry `__<index>` suffixes).
        dtype: numpy dtype name ("float32", "int64", "object" for BYTES).
        axes: the axes after the batch axis (Triton's `dims` when max_batch_size > 0): an int >= 0 is fixed, -1 or
            a str is dynamic (a str names the axis for ONNX dynamic axes).
    """

    name: str
    dtype: str
    axes: tuple[Axis, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", numpy_dtype(self.dtype).name)
        api_dtype(self.dtype)  # raises for dtypes Triton cannot carry
        for axis in self.axes:
            if not (isinstance(axis, str) or (isinstance(axis, int) and axis >= -1)):
                raise ValueError(f"{self.name}: axis {axis!r} is neither a size, -1 nor a name")

    @property
    def dims(self) -> tuple[int, ...]:
        """Triton's `dims`: dynamic axes as -1."""
        return tuple(-1 if isinstance(axis, str) else axis for axis in self.axes)

    @property
    def api_dtype(self) -> str:
        return api_dtype(self.dtype)

    @property
    def config_data_type(self) -> str:
        return config_data_type(self.dtype)

    @property
    def numpy_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    def full_shape(self, batched: bool) -> tuple[int, ...]:
        """The shape a request carries: a leading -1 batch axis when the model batches."""
        return ((-1,) if batched else ()) + self.dims

    def named_axes(self, batched: bool) -> dict[int, str]:
        """{position: name} of the dynamic axes of the full shape, unnamed ones named `<tensor>_<position>`."""
        axes = ((BATCH_AXIS,) if batched else ()) + self.axes
        return {
            position: axis if isinstance(axis, str) else f"{self.name.lower()}_{position}"
            for position, axis in enumerate(axes)
            if isinstance(axis, str) or axis == -1
        }

    def renamed(self, name: str) -> TensorSpec:
        return TensorSpec(name, self.dtype, self.axes)

    @classmethod
    def from_config(cls, name: str, data_type: str, dims: Sequence[int | str]) -> TensorSpec:
        """From a config entry (protobuf enum name or JSON string, dims as ints or JSON strings)."""
        return cls(name, dtype_from_config(data_type).name, tuple(int(dim) for dim in dims))

    @classmethod
    def from_metadata(cls, entry: dict[str, Any], batched: bool) -> TensorSpec:
        """From an entry of Triton's model metadata ({"name", "datatype", "shape"}; shape includes the batch)."""
        shape = [int(dim) for dim in entry.get("shape", [])]
        return cls(entry["name"], dtype_from_api(entry["datatype"]).name, tuple(shape[1:] if batched else shape))

    def check_array(self, array: np.ndarray, batched: bool) -> None:
        """Raises ValueError naming the tensor when an array's dtype or shape does not fit this spec."""
        if array.dtype != self.numpy_dtype:
            raise ValueError(f"{self.name}: dtype {array.dtype}, expected {self.numpy_dtype}")
        expected = self.full_shape(batched)
        if len(array.shape) != len(expected) or any(want not in (-1, got) for want, got in zip(expected, array.shape)):
            raise ValueError(f"{self.name}: shape {list(array.shape)}, expected {list(expected)} (-1: any size)")
