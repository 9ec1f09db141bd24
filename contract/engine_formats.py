"""The engine formats an export writes and Triton serves: format name <-> platform / backend <-> model file <-> the
config parameters that size the engine's threads. The one table of thread parameters in the project.

Keys are the native backends' (onnxruntime_backend / pytorch_backend READMEs); this project's Python-based local
backends honour the same keys, under the same platform and backend names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

FormatName = Literal["onnx", "torchscript"]


@dataclass(frozen=True)
class EngineFormat:
    """One exported network format and how a Triton config names it.

    Attributes:
        name: the format's name on the command line and in code ("onnx", "torchscript").
        platform: Triton `platform` of its configs ("onnxruntime_onnx", "pytorch_libtorch").
        backend: Triton `backend` that serves it ("onnxruntime", "pytorch").
        model_filename: the file Triton loads from <model>/<version>/.
        intra_op_threads: config parameter with the engine's intra-op thread count.
        inter_op_threads: config parameter with the engine's inter-op thread count.
    """

    name: FormatName
    platform: str
    backend: str
    model_filename: str
    intra_op_threads: str
    inter_op_threads: str

    @property
    def thread_parameters(self) -> tuple[str, str]:
        """(intra-op key, inter-op key)."""
        return self.intra_op_threads, self.inter_op_threads


ONNX = EngineFormat(
    "onnx", "onnxruntime_onnx", "onnxruntime", "model.onnx", "intra_op_thread_count", "inter_op_thread_count"
)
TORCHSCRIPT = EngineFormat(
    "torchscript", "pytorch_libtorch", "pytorch", "model.pt", "INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"
)
ENGINE_FORMATS: dict[str, EngineFormat] = {engine.name: engine for engine in (ONNX, TORCHSCRIPT)}
FORMAT_NAMES: tuple[FormatName, ...] = tuple(ENGINE_FORMATS)  # type: ignore[assignment]


def engine_format(name: str) -> EngineFormat:
    """The format called `name` ("onnx" / "torchscript"); ValueError for any other."""
    try:
        return ENGINE_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown engine format {name!r} (known: {', '.join(FORMAT_NAMES)})") from None


def format_of(platform: str = "", backend: str = "") -> EngineFormat | None:
    """The format a config's `platform` or `backend` names (either may be empty); None for others (python,
    ensemble)."""
    for engine in ENGINE_FORMATS.values():
        if (platform and platform in (engine.platform, engine.backend)) or (
            backend and backend in (engine.platform, engine.backend)
        ):
            return engine
    return None


def format_of_config(config: Any) -> EngineFormat | None:
    """The format of a `ModelConfig` (or anything with `platform` and `backend`), None when it is not a network."""
    return format_of(getattr(config, "platform", ""), getattr(config, "backend", ""))
