"""One engine call per execute(): concatenate requests on dim 0, split outputs back (pure numpy, unit-tested).

Ragged batching (an input with `allow_ragged_batch: true`): Triton's native backends flatten each request's ragged
input and concatenate them into one 1-D tensor, and build the config's `batch_input` tensors (e.g.
BATCH_ACCUMULATED_ELEMENT_COUNT: where each request's elements end) from the requests (`core`/`backend`
BackendInputCollector); the Python runtime hands our backends the requests as they came, so `RaggedLayout` does it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.tensors import dtype_from_config

Tensors = dict[str, np.ndarray]
Engine = Callable[[Tensors], Tensors]


@dataclass
class RequestResult:
    """Outputs for one request, or the exception that made it fail."""

    outputs: Tensors | None = None
    error: BaseException | None = None


def shape_key(tensors: Tensors) -> tuple:
    """Requests can share one engine call only if every input has the same non-batch shape and dtype."""
    return tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in tensors.items()))


@dataclass(frozen=True)
class BatchInputSpec:
    """One config `batch_input`: a tensor built from the whole batch of requests, fed to the model as `target`."""

    kind: str  # BatchInput.Kind name, e.g. "BATCH_ACCUMULATED_ELEMENT_COUNT"
    target: str
    dtype: np.dtype
    source: str

    def build(self, requests: Sequence[Tensors]) -> np.ndarray:
        """The batch input of these requests, as Triton 2.51's BackendInputCollector builds it."""
        counts = np.array([request[self.source].size for request in requests], dtype=np.int64)
        if self.kind == "BATCH_ELEMENT_COUNT":
            values = counts
        elif self.kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
            values = np.cumsum(counts)
        elif self.kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
            values = np.concatenate([[0], np.cumsum(counts)])
        elif self.kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":
            values = np.zeros(int(counts.max()))  # only its shape carries information
        else:
            raise ValueError(f"batch input kind {self.kind} is not supported by the Python-based backends")
        return values.astype(self.dtype)


SUPPORTED_BATCH_INPUTS = frozenset(
    {
        "BATCH_ELEMENT_COUNT",
        "BATCH_ACCUMULATED_ELEMENT_COUNT",
        "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
        "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
    }
)


@dataclass(frozen=True)
class RaggedLayout:
    """The config's ragged inputs and batch inputs; `active` when there is a ragged input."""

    ragged_inputs: frozenset[str] = frozenset()
    batch_inputs: tuple[BatchInputSpec, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.ragged_inputs)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(spec.target for spec in self.batch_inputs)

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> RaggedLayout:
        """Reads `allow_ragged_batch` and `batch_input`; ValueError for what Triton would refuse or we cannot build."""
        ragged = frozenset(entry.name for entry in config.input if entry.allow_ragged_batch)
        inputs = {entry.name for entry in config.input}
        specs = []
        for entry in config.batch_input:
            kind = mc.BatchInput.Kind.Name(entry.kind)
            if kind not in SUPPORTED_BATCH_INPUTS:
                raise ValueError(f"batch input kind {kind} is not supported by the Python-based backends")
            if len(entry.target_name) != 1 or len(entry.source_input) != 1:
                raise ValueError(f"batch input {kind} needs exactly one target_name and one source_input")
            if entry.source_input[0] not in inputs:
                raise ValueError(f"batch input {entry.target_name[0]}: unknown source_input {entry.source_input[0]}")
            dtype = dtype_from_config(mc.DataType.Name(entry.data_type))
            specs.append(BatchInputSpec(kind, entry.target_name[0], dtype, entry.source_input[0]))
        if ragged and config.max_batch_size <= 0:
            raise ValueError("allow_ragged_batch needs max_batch_size > 0")
        return cls(ragged, tuple(specs))

    def combine(self, requests: Sequence[Tensors]) -> Tensors:
        """One engine input: ragged inputs flattened and concatenated, the others concatenated on dim 0 (their
        shapes must agree), plus the batch inputs."""
        combined = {}
        for name in requests[0]:
            if name in self.ragged_inputs:
                combined[name] = np.concatenate([request[name].reshape(-1) for request in requests])
            else:
                combined[name] = np.concatenate([request[name] for request in requests], axis=0)
        for spec in self.batch_inputs:
            combined[spec.target] = spec.build(requests)
        return combined

    def group_key(self, tensors: Tensors) -> tuple:
        """Requests can share an execution when their non-ragged inputs have the same shapes (ragged ones may not)."""
        return shape_key({name: array for name, array in tensors.items() if name not in self.ragged_inputs})


def request_batch_size(tensors: Tensors) -> int:
    return next(iter(tensors.values())).shape[0]


def run_batched(
    requests: Sequence[Tensors], engine: Engine, batched: bool, ragged: RaggedLayout | None = None
) -> list[RequestResult]:
    """Run `engine` once per group of shape-compatible requests; isolate failures per request.

    With `batched` (max_batch_size > 0) requests are concatenated on dim 0 and outputs are split back by each
    request's batch size. When a combined call fails, each request of that group is re-run alone so its
    batch-mates still succeed and only the bad request gets the error. With an active `ragged` layout the ragged
    inputs are packed instead (`RaggedLayout.combine`), also for a request alone.
    """
    if ragged is not None and not ragged.active:
        ragged = None
    combine = ragged.combine if ragged is not None else _concatenate
    results: list[RequestResult | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for index, tensors in enumerate(requests):
        if not batched:
            key = ("request", index)
        else:
            key = ragged.group_key(tensors) if ragged is not None else shape_key(tensors)
        groups.setdefault(key, []).append(index)

    def one(tensors: Tensors) -> RequestResult:
        return _run_one(tensors, engine) if ragged is None else _run_one_ragged(tensors, engine, ragged)

    for indices in groups.values():
        if len(indices) == 1:
            results[indices[0]] = one(requests[indices[0]])
            continue
        members = [requests[i] for i in indices]
        try:
            outputs = engine(combine(members))
            sizes = [request_batch_size(m) for m in members]
            for index, split in zip(indices, split_outputs(outputs, sizes)):
                results[index] = RequestResult(outputs=split)
        except Exception:  # noqa: BLE001 - isolate: re-run each request alone, report per request
            for index in indices:
                results[index] = one(requests[index])
    return [
        result if result is not None else RequestResult(error=RuntimeError("request not executed"))
        for result in results
    ]


def split_outputs(outputs: Tensors, sizes: Sequence[int]) -> list[Tensors]:
    """Split each output along dim 0 into pieces of the given sizes."""
    total = sum(sizes)
    for name, array in outputs.items():
        if array.shape[:1] != (total,):
            raise ValueError(f"output '{name}' has batch dimension {array.shape[:1]}, expected ({total},)")
    boundaries = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, boundaries, axis=0) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(sizes))]


def _concatenate(requests: Sequence[Tensors]) -> Tensors:
    return {name: np.concatenate([request[name] for request in requests], axis=0) for name in requests[0]}


def _run_one_ragged(tensors: Tensors, engine: Engine, ragged: RaggedLayout) -> RequestResult:
    try:
        return RequestResult(outputs=engine(ragged.combine([tensors])))
    except Exception as error:  # noqa: BLE001 - reported to the client as this request's error
        return RequestResult(error=error)


def _run_one(tensors: Tensors, engine: Engine) -> RequestResult:
    try:
        return RequestResult(outputs=engine(tensors))
    except Exception as error:  # noqa: BLE001 - reported to the client as this request's error
        return RequestResult(error=error)
