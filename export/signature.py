"""A network's served signature inferred from sample inputs: names, dtypes, which axes are dynamic (numpy only).

The leading axis of every input and output is the batch. Any other axis whose size differs across the samples is
dynamic (`-1` in the config, a named axis in ONNX); dynamic axes that have the same size in every sample share one
name (e.g. the token axis of ids and mask), so an exporter sees one symbolic size for them. Output axes are inferred
the same way from the eager outputs on the samples and take the name of the input axis they follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonfleet.contract.tensors import BATCH_AXIS, Axis, TensorSpec, api_dtype

Sample = tuple[np.ndarray, ...]


class ExportError(Exception):
    """A problem the user can fix; the CLI prints the one-line message and exits with status 2."""


@dataclass(frozen=True)
class Signature:
    """The named inputs and outputs of an exported network, in forward-argument and return order.

    Axes of the specs exclude the batch axis (contract.tensors.TensorSpec); a str axis is dynamic.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def structure(self) -> tuple[Any, ...]:
        """The signature with dynamic axis names replaced by their order of first appearance.

        Two signatures with equal structures have the same tensors, dtypes, fixed sizes and the same axes shared.
        """
        numbering: dict[str, int] = {}

        def canonical(spec: TensorSpec) -> tuple[Any, ...]:
            axes = tuple(
                ("dynamic", numbering.setdefault(axis, len(numbering))) if isinstance(axis, str) else axis
                for axis in spec.axes
            )
            return spec.name, spec.dtype, axes

        return tuple(canonical(spec) for spec in self.inputs), tuple(canonical(spec) for spec in self.outputs)

    def describe(self) -> str:
        def text(spec: TensorSpec) -> str:
            return f"{spec.name} {spec.dtype} [{', '.join(map(str, (BATCH_AXIS, *spec.axes)))}]"

        return f"({', '.join(map(text, self.inputs))}) -> ({', '.join(map(text, self.outputs))})"


def default_names(prefix: str, count: int) -> tuple[str, ...]:
    """Triton's customary names: INPUT0, INPUT1, ... / OUTPUT0, ..."""
    return tuple(f"{prefix}{index}" for index in range(count))


def parse_names(text: str | None) -> tuple[str, ...] | None:
    """`--input-names a,b` -> ("a", "b"); None or "" -> None (default names)."""
    if not text:
        return None
    return tuple(part.strip() for part in text.split(","))


def check_names(names: Sequence[str], count: int, what: str, option: str) -> tuple[str, ...]:
    """Validates user-given tensor names against the number of tensors."""
    names = tuple(names)
    if len(names) != count:
        raise ExportError(f"{option} gives {len(names)} name(s) {list(names)} but the model has {count} {what}(s)")
    for name in names:
        if not name or any(character.isspace() or character == "," for character in name):
            raise ExportError(f"{option}: {name!r} is not a tensor name (non-empty, no spaces or commas)")
        if "__" in name:
            raise ExportError(f"{option}: {name!r} contains '__', which the TorchScript NAME__<index> names reserve")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ExportError(f"{option}: names must be unique, {duplicates} repeat")
    return names


def to_numpy(value: Any, where: str) -> np.ndarray:
    """A torch tensor or numpy array as a numpy array (CPU); anything else is an ExportError naming `where`."""
    if isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch here
        try:
            array = value.detach().cpu().numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            raise ExportError(f"{where}: dtype {value.dtype} has no numpy equivalent; cast it to float32") from None
    else:
        raise ExportError(f"{where} is a {type(value).__name__}; expected a torch tensor (or a numpy array)")
    try:
        api_dtype(array.dtype)
    except ValueError:
        raise ExportError(f"{where}: dtype {array.dtype} has no Triton data type") from None
    if array.dtype == object:
        raise ExportError(f"{where}: object (string) tensors cannot be exported; pass numeric tensors")
    if array.ndim == 0:
        raise ExportError(f"{where} is a scalar; every tensor needs a leading batch axis")
    return np.ascontiguousarray(array)


def as_tensors(value: Any, where: str, item: str) -> Sample:
    """One sample (or one forward result): a tensor or a tuple/list of tensors, as a tuple of numpy arrays.

    `where` and `item` name them in errors: "sample 2", "input" -> "sample 2 input 0: ...".
    """
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not items:
        raise ExportError(f"{where} is empty")
    return tuple(to_numpy(array, f"{where} {item} {index}") for index, array in enumerate(items))


def normalize_samples(samples: Any) -> list[Sample]:
    """The factory's samples as numpy tuples, checked to agree in count, dtype and rank and to share a batch size."""
    if not isinstance(samples, (list, tuple)) or not samples:
        kind = type(samples).__name__
        raise ExportError(f"samples must be a non-empty list of input tuples (or of tensors), got {kind}")
    normalized = [as_tensors(sample, f"sample {index}", "input") for index, sample in enumerate(samples)]
    check_consistent(normalized, "sample", "input")
    return normalized


def check_consistent(groups: Sequence[Sample], group_label: str, tensor_label: str) -> None:
    """Every group (sample / forward result) has the same tensor count, dtypes, ranks and one batch size each."""
    first = groups[0]
    for index, group in enumerate(groups):
        if len(group) != len(first):
            raise ExportError(
                f"{group_label} {index} has {len(group)} {tensor_label}(s), {group_label} 0 has {len(first)}: "
                f"every {group_label} must hold the same {tensor_label}s"
            )
        for position, (array, reference) in enumerate(zip(group, first)):
            if array.dtype != reference.dtype:
                raise ExportError(
                    f"{tensor_label} {position}: {group_label} {index} has dtype {array.dtype}, "
                    f"{group_label} 0 {reference.dtype}; give every {group_label} the same dtypes"
                )
            if array.ndim != reference.ndim:
                raise ExportError(
                    f"{tensor_label} {position}: {group_label} {index} has rank {array.ndim}, "
                    f"{group_label} 0 rank {reference.ndim}; give every {group_label} the same ranks"
                )
        batch_sizes = {array.shape[0] for array in group}
        if len(batch_sizes) > 1:
            raise ExportError(
                f"{group_label} {index}: its {tensor_label}s have leading sizes {sorted(batch_sizes)}; "
                "the leading axis of every tensor is the batch"
            )


def _size_vectors(samples: Sequence[Sample], position: int) -> list[tuple[int, ...]]:
    """Per axis after the batch: the sizes of that axis of tensor `position` across the samples."""
    rank = samples[0][position].ndim
    return [tuple(sample[position].shape[axis] for sample in samples) for axis in range(1, rank)]


def _specs(
    tensors: Sequence[Sample], names: Sequence[str], dynamic: Callable[[tuple[int, ...], str], str]
) -> tuple[TensorSpec, ...]:
    """Specs of the tensors at each position: an axis of one size in every group is fixed, another one is named by
    `dynamic(sizes across the groups, default name "<tensor>_<position>")`."""
    specs = []
    for position, name in enumerate(names):
        axes: list[Axis] = []
        for axis, sizes in enumerate(_size_vectors(tensors, position), start=1):
            axes.append(sizes[0] if len(set(sizes)) == 1 else dynamic(sizes, f"{name.lower()}_{axis}"))
        specs.append(TensorSpec(name, tensors[0][position].dtype.name, tuple(axes)))
    return tuple(specs)


def infer_inputs(samples: Sequence[Sample], names: Sequence[str]) -> tuple[TensorSpec, ...]:
    """Input specs: axes that vary across samples are dynamic; those varying identically share a name.

    A shared axis is named after its first tensor and position (batch = 0), e.g. `input_ids_1`.
    """
    group_names: dict[tuple[int, ...], str] = {}
    return _specs(samples, names, group_names.setdefault)


def infer_outputs(
    inputs: Sequence[TensorSpec], samples: Sequence[Sample], results: Sequence[Sample], names: Sequence[str]
) -> tuple[TensorSpec, ...]:
    """Output specs from the eager results on the samples; an output axis that varies like an input axis takes
    that axis's name, one that varies otherwise (data-dependent) gets its own."""
    check_consistent(results, "forward result", "output")
    for index, (sample, result) in enumerate(zip(samples, results)):
        batch, produced = sample[0].shape[0], result[0].shape[0]
        if batch != produced:
            raise ExportError(
                f"on sample {index} (batch {batch}) the outputs have leading size {produced}: every output must keep "
                "the batch axis (Triton batches requests along it)"
            )
    input_axes: dict[tuple[int, ...], str] = {}
    for position, spec in enumerate(inputs):
        for axis, sizes in zip(spec.axes, _size_vectors(samples, position)):
            if isinstance(axis, str):
                input_axes.setdefault(sizes, axis)
    return _specs(results, names, input_axes.get)


def _dynamic_sizes(spec: TensorSpec, array: np.ndarray) -> dict[str, int]:
    """{axis name: size} of the named dynamic axes of one array (batch excluded)."""
    return {axis: array.shape[index] for index, axis in enumerate(spec.axes, start=1) if isinstance(axis, str)}


def trace_example(inputs: Sequence[TensorSpec], samples: Sequence[Sample]) -> Sample:
    """The inputs to trace or export with: a sample whose dynamic axes are all >= 2 (an exporter specialises a size
    of 1) and pairwise different (equal sizes may be taken for one symbol), its batch resized to a size >= 2 that no
    other dynamic axis has (rows repeated; they are independent requests)."""

    def sizes(sample: Sample) -> dict[str, int]:
        merged: dict[str, int] = {}
        for spec, array in zip(inputs, sample):
            merged.update(_dynamic_sizes(spec, array))
        return merged

    usable = [sample for sample in samples if all(size >= 2 for size in sizes(sample).values())]
    if not usable:
        axes = sorted(sizes(samples[0]))
        raise ExportError(
            f"no sample has every dynamic axis ({', '.join(axes)}) of size >= 2; add one (exporters would fix an "
            "axis of size 1 to 1)"
        )
    distinct = [sample for sample in usable if len(set(sizes(sample).values())) == len(sizes(sample))]
    sample = (distinct or usable)[0]
    taken = set(sizes(sample).values())
    batch = sample[0].shape[0]
    if batch < 2 or batch in taken:
        batch = next(size for size in range(2, len(taken) + 3) if size not in taken)
    rows = np.arange(batch) % sample[0].shape[0]
    return tuple(np.ascontiguousarray(np.take(array, rows, axis=0)) for array in sample)


def infer_signature(
    samples: Sequence[Sample],
    results: Sequence[Sample],
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Signature:
    """The signature of a network from its samples and its eager results on them."""
    inputs_count, outputs_count = len(samples[0]), len(results[0])
    input_names = check_names(
        input_names or default_names("INPUT", inputs_count), inputs_count, "input", "--input-names"
    )
    output_names = check_names(
        output_names or default_names("OUTPUT", outputs_count), outputs_count, "output", "--output-names"
    )
    inputs = infer_inputs(samples, input_names)
    return Signature(inputs, infer_outputs(inputs, samples, results, output_names))
