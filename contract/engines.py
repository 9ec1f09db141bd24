"""One engine layer: an exported model file (ONNX, TorchScript) opened in-process as an `Engine`, numpy in and out.

Every place that runs an exported file in this process opens it here: export's parity and quality gates, the local
runtime's Python-based backends, the bench's raw engines and the engine study. Each format has one runner class,
registered by `register_runner` (after Model Navigator's `runners/` + registry); `open_engine(path, format, threads,
device, precision)` picks it. The engine libraries (onnxruntime, torch) are imported only when an engine is opened,
so `tritonfleet.contract` stays importable with numpy, protobuf and tritonclient alone.

    engine = open_engine("model.onnx", "onnx", threads=2)
    outputs = engine.run({"INPUT_IDS": ids, "ATTENTION_MASK": mask}, ["EMBEDDING"])   # {name: array}
    embedding, residues = engine(ids, mask)          # positional: inputs in order -> every output in order
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from tritonfleet.contract.engine_formats import FORMAT_NAMES, ONNX, TORCHSCRIPT

logger = logging.getLogger(__name__)

# What the file holds; only TorchScript acts on it (fp16 halves the module, for CUDA), ONNX files carry theirs.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
GraphOptimization = Literal["all", "extended", "basic", "disabled"]


class EngineError(ValueError):
    """A model file cannot be opened or run as asked: missing file, unknown format, device or precision, a file the
    engine cannot read, an output name the model does not have."""


class EngineInputError(ValueError):
    """The engine rejected a request's data (e.g. token id out of range, mismatched lengths): the caller's fault."""


@dataclass(frozen=True)
class EngineOptions:
    """Settings beyond threads, device and precision; every default is the engine library's own.

    Attributes:
        inter_threads: ONNX Runtime inter-op threads (0 = its default); TorchScript: torch's process-wide inter-op
            threads when > 0 (settable once per process: later tries are logged and ignored).
        graph_optimization: ONNX Runtime graph optimisation level.
        parallel_execution: ONNX Runtime ORT_PARALLEL instead of sequential execution.
        memory_arena, memory_pattern: ONNX Runtime's CPU memory arena and memory pattern.
        inference_mode: TorchScript runs under torch.inference_mode (else torch.no_grad).
        optimized_execution: TorchScript's profiling executor on/off (process-wide); None leaves it as it is.
        cache_cleaning: TorchScript on CUDA empties torch's cache after every run.
    """

    inter_threads: int = 0
    graph_optimization: GraphOptimization = "all"
    parallel_execution: bool = False
    memory_arena: bool = True
    memory_pattern: bool = True
    inference_mode: bool = True
    optimized_execution: bool | None = None
    cache_cleaning: bool = False


@dataclass(frozen=True)
class EngineTensor:
    """One input or output as the model file declares it: the engine's own type name (None where the file has
    none, as in TorchScript) and its shape (ints, or names/None for dynamic axes; None when unknown)."""

    name: str
    engine_type: str | None = None
    shape: tuple[int | str | None, ...] | None = None


class Engine(ABC):
    """An opened model file. `run` maps input names to arrays and returns the asked outputs (None = all) by name;
    calling the engine with arrays in input order returns every output in order (a parity `Runner`)."""

    format: ClassVar[str]
    library: ClassVar[str]  # the module the runner needs, named in the error when it is missing

    def __init__(self, path: Path, threads: int, device: str, precision: str, options: EngineOptions) -> None:
        self.path, self.threads, self.device, self.precision, self.options = path, threads, device, precision, options
        self.inputs: tuple[EngineTensor, ...] = ()
        self.outputs: tuple[EngineTensor, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.outputs)

    @classmethod
    def cuda_available(cls) -> bool:
        """Whether this engine finds a usable CUDA device."""
        return False

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The named outputs (None = every output) for the named inputs."""

    @abstractmethod
    def __call__(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output, in order, for the inputs in order."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine's memory."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_outputs(self, outputs: Sequence[str] | None) -> None:
        known = self.output_names
        for name in outputs or ():
            if name not in known:
                raise EngineError(f"unknown output {name!r}: {self.path.name} has outputs {', '.join(known)}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path.name}, threads={self.threads}, device={self.device}, "
            f"precision={self.precision})"
        )


RUNNERS: dict[str, type[Engine]] = {}


def register_runner(runner: type[Engine]) -> type[Engine]:
    """Registers the runner class of one engine format (a class decorator); a format has one runner."""
    if runner.format not in FORMAT_NAMES:
        raise ValueError(f"{runner.__name__}: {runner.format!r} is not an engine format ({', '.join(FORMAT_NAMES)})")
    if runner.format in RUNNERS and RUNNERS[runner.format] is not runner:
        raise ValueError(f"format {runner.format!r} already has the runner {RUNNERS[runner.format].__name__}")
    RUNNERS[runner.format] = runner
    return runner


def runner_for(format: str) -> type[Engine]:
    """The runner class of `format`; EngineError naming the known formats otherwise."""
    try:
        return RUNNERS[format]
    except KeyError:
        raise EngineError(f"unknown engine format {format!r}; known formats: {', '.join(RUNNERS)}") from None


def open_engine(
    path: str | Path,
    format: str,
    threads: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    options: EngineOptions | None = None,
) -> Engine:
    """Opens the model file at `path` with the runner of `format`.

    Args:
        path: the exported file (model.onnx, model.pt).
        format: an engine format name (contract.engine_formats.FORMAT_NAMES: "onnx", "torchscript").
        threads: intra-op threads; 0 = the engine's default (ONNX Runtime: one per core; torch: left as it is).
            TorchScript's threads are torch's process-wide setting.
        device: "cpu", "cuda" or "cuda:<id>".
        precision: what the file holds (PRECISIONS); "fp16" halves a TorchScript module.
        options: EngineOptions beyond these (defaults: the engine library's own).

    Raises:
        EngineError: unknown format/device/precision, no such file, a file the engine cannot read, a missing engine
            library, or CUDA asked where the engine finds none.
    """
    runner = runner_for(format)
    path = Path(path)
    if not DEVICE.match(device):
        raise EngineError(f"unknown device {device!r}; use cpu, cuda or cuda:<id>")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; known precisions: {', '.join(PRECISIONS)}")
    if threads < 0:
        raise EngineError(f"threads must be >= 0 (0 = the engine's default), got {threads}")
    if not path.is_file():
        raise EngineError(f"no {format} model file at '{path}'")
    try:
        __import__(runner.library)
    except ImportError as error:
        raise EngineError(f"the {format} engine needs the Python package {runner.library!r}: {error}") from error
    if device.startswith("cuda") and not runner.cuda_available():
        raise EngineError(f"{format} engine: no usable CUDA device for {device!r}")
    engine = runner(path, threads, device, precision, options or EngineOptions())
    logger.debug("opened %r", engine)
    return engine


def cuda_device_id(device: str) -> int:
    """The CUDA device index of "cuda" (0) or "cuda:<id>"."""
    return int(device.partition(":")[2] or 0)


@register_runner
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime: CPU provider, or the CUDA provider (then CPU) on "cuda:<id>"."""

    format = ONNX.name
    library = "onnxruntime"

    @classmethod
    def cuda_available(cls) -> bool:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    def __init__(self, path: Path, threads: int, device: str, precision: str, options: EngineOptions) -> None:
        super().__init__(path, threads, device, precision, options)
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, RuntimeException

        self._invalid_argument, self._runtime_exception = InvalidArgument, RuntimeException
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if options.graph_optimization not in levels:
            raise EngineError(f"unknown graph optimisation {options.graph_optimization!r}; known: {', '.join(levels)}")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = levels[options.graph_optimization]
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = options.inter_threads
        if options.parallel_execution:
            session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        session_options.enable_cpu_mem_arena = options.memory_arena
        session_options.enable_mem_pattern = options.memory_pattern
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": cuda_device_id(device)}))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for unreadable models
            raise EngineError(f"'{path}' is not an ONNX model ONNX Runtime can load: {error}") from error
        self.inputs = tuple(EngineTensor(node.name, node.type, tuple(node.shape)) for node in self.session.get_inputs())
        self.outputs = tuple(
            EngineTensor(node.name, node.type, tuple(node.shape)) for node in self.session.get_outputs()
        )

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self._check_outputs(outputs)
        names = list(outputs) if outputs is not None else list(self.output_names)
        return dict(zip(names, self._run(names, dict(inputs))))

    def __call__(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._run(None, dict(zip(self.input_names, inputs))))

    def _run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(outputs, feeds)
        except self._invalid_argument as error:
            raise EngineInputError(str(error)) from error
        except self._runtime_exception as error:
            # Inputs whose dynamic dims disagree (e.g. ids vs mask lengths) fail inside a broadcasting kernel.
            if "broadcast" in str(error).lower():
                raise EngineInputError(str(error)) from error
            raise

    def close(self) -> None:
        self.session = None


# TorchScript raises plain RuntimeErrors; these messages mean the request's data was bad, not the engine.
TORCH_INPUT_ERROR_MARKERS = ("index out of range", "must match the size of tensor", "shape mismatch", "invalid shape")


@register_runner
class TorchScriptEngine(Engine):
    """TorchScript (LibTorch) under torch.inference_mode. The file names neither tensors: inputs are the forward
    arguments' names and outputs `OUTPUT__<i>` by position, until `name_tensors` gives the served names."""

    format = TORCHSCRIPT.name
    library = "torch"

    @classmethod
    def cuda_available(cls) -> bool:
        import torch

        return torch.cuda.is_available()

    def __init__(self, path: Path, threads: int, device: str, precision: str, options: EngineOptions) -> None:
        super().__init__(path, threads, device, precision, options)
        import warnings

        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        if options.inter_threads > 0:
            try:
                torch.set_num_interop_threads(options.inter_threads)
            except RuntimeError:  # only settable once per process, before any parallel work
                logger.warning("inter-op threads (%d) ignored: torch's are already set", options.inter_threads)
        if options.optimized_execution is not None:
            torch._C._jit_set_profiling_executor(options.optimized_execution)
        self.torch, self.torch_device = torch, torch.device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, LibTorch serves it still
                self.module = torch.jit.load(str(path), map_location=self.torch_device)
        except (RuntimeError, ValueError) as error:
            raise EngineError(f"'{path}' is not a TorchScript file torch.jit.load can read: {error}") from error
        self.module.eval()
        if precision == "fp16":
            self.module = self.module.half()
        schema = self.module.forward.schema
        self.inputs = tuple(EngineTensor(argument.name) for argument in schema.arguments[1:])  # drop `self`
        returns = schema.returns[0].type if schema.returns else None
        count = len(returns.elements()) if isinstance(returns, torch._C.TupleType) else 1
        self.name_tensors(outputs=[f"OUTPUT__{index}" for index in range(count)])

    def name_tensors(
        self, inputs: Sequence[str] | None = None, outputs: Sequence[str] | Mapping[str, int] | None = None
    ) -> None:
        """Names the forward arguments (in order) and the results: a list by position, or {name: position}."""
        if inputs is not None:
            if len(inputs) != len(self.inputs):
                raise EngineError(f"{len(inputs)} input names for {len(self.inputs)} forward arguments")
            self.inputs = tuple(EngineTensor(name) for name in inputs)
        if outputs is not None:
            positions = dict(outputs) if isinstance(outputs, Mapping) else {n: i for i, n in enumerate(outputs)}
            self._output_positions = positions
            self.outputs = tuple(EngineTensor(name) for name in sorted(positions, key=positions.__getitem__))

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self._check_outputs(outputs)
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise EngineInputError(f"missing input(s) {', '.join(missing)}")
        values = self._forward([inputs[name] for name in self.input_names])
        results = {}
        for name in outputs if outputs is not None else self.output_names:
            position = self._output_positions[name]
            if position >= len(values):
                raise RuntimeError(f"output '{name}' refers to result {position}, the model returned {len(values)}")
            results[name] = self._to_numpy(values[position])
        self._clean_cache()
        return results

    def __call__(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        results = tuple(self._to_numpy(value) for value in self._forward(list(inputs)))
        self._clean_cache()
        return results

    def _forward(self, arrays: list[np.ndarray]) -> list[Any]:
        torch = self.torch
        arguments = [torch.from_numpy(np.ascontiguousarray(array)).to(self.torch_device) for array in arrays]
        context = torch.inference_mode() if self.options.inference_mode else torch.no_grad()
        try:
            with context:
                result = self.module(*arguments)
        except (IndexError, ValueError) as error:
            raise EngineInputError(str(error)) from error
        except RuntimeError as error:
            # A TorchScript error carries the script traceback; its last line is the message worth returning.
            message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
            if any(marker in message for marker in TORCH_INPUT_ERROR_MARKERS):
                raise EngineInputError(message) from error
            raise RuntimeError(message) from error
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def _to_numpy(self, value: Any) -> np.ndarray:
        value = value.detach()
        if value.dtype == self.torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.cpu().numpy()

    def _clean_cache(self) -> None:
        if self.options.cache_cleaning and self.torch_device.type == "cuda":
            self.torch.cuda.empty_cache()

    def close(self) -> None:
        self.module = None
        if self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()
