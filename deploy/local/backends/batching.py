"""One engine call per execute(): concatenate requests on dim 0, split outputs back (pure numpy, unit-tested)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

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


def run_batched(requests: Sequence[Tensors], engine: Engine, batched: bool) -> list[RequestResult]:
    """Run `engine` once per group of shape-compatible requests; isolate failures per request.

    With `batched` (max_batch_size > 0) requests are concatenated on dim 0 and outputs are split back by each
    request's batch size. When a combined call fails, each request of that group is re-run alone so its
    batch-mates still succeed and only the bad request gets the error.
    """
    results: list[RequestResult | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for index, tensors in enumerate(requests):
        key = shape_key(tensors) if batched else ("request", index)
        groups.setdefault(key, []).append(index)

    for indices in groups.values():
        if len(indices) == 1:
            results[indices[0]] = _run_one(requests[indices[0]], engine)
            continue
        members = [requests[i] for i in indices]
        try:
            combined = {name: np.concatenate([m[name] for m in members], axis=0) for name in members[0]}
            outputs = engine(combined)
            sizes = [next(iter(m.values())).shape[0] for m in members]
            for index, split in zip(indices, split_outputs(outputs, sizes)):
                results[index] = RequestResult(outputs=split)
        except Exception:  # noqa: BLE001 - isolate: re-run each request alone, report per request
            for index in indices:
                results[index] = _run_one(requests[index], engine)
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


def _run_one(tensors: Tensors, engine: Engine) -> RequestResult:
    try:
        return RequestResult(outputs=engine(tensors))
    except Exception as error:  # noqa: BLE001 - reported to the client as this request's error
        return RequestResult(error=error)
