"""Python-based `onnxruntime` backend: serves `platform: "onnxruntime_onnx"` models (`model.onnx`) locally.

Mirrors the native ONNX Runtime backend's load-time contract (input/output names, dtypes, ranks, the batch-dim
rule) and its config `parameters` (intra/inter-op threads, execution mode, memory arena/pattern) so a model that
loads here also loads in the NGC image.
"""

from __future__ import annotations

from pathlib import Path

from tritonfleet.contract.engine_formats import ONNX
from tritonfleet.contract.engines import EngineError, EngineOptions, EngineTensor, open_engine, runner_for
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.deploy.local.backends.base import PythonBasedBackend
from tritonfleet.deploy.local.backends.batching import Tensors
from tritonfleet.deploy.local.backends.contract import (
    ModelContractError,
    bool_parameter,
    dims_compatible,
    int_parameter,
    ort_config_data_type,
)

FORMAT = ONNX.name
# Triton's `optimization { graph { level } }` for ONNX Runtime: -1 basic, 1 extended, 2 disable all, default all.
GRAPH_LEVELS = {-1: "basic", 1: "extended", 2: "disabled"}


class TritonPythonModel(PythonBasedBackend):
    default_model_filename = ONNX.model_filename
    backend_name = "onnxruntime (Python-based)"

    def cuda_available(self) -> bool:
        return runner_for(FORMAT).cuda_available()

    def load(self, path: Path, device: str) -> None:
        spec = self.spec
        mode = int_parameter(spec, "execution_mode")
        if mode not in (None, 0, 1):
            raise ModelContractError(f"parameter 'execution_mode' must be 0 (sequential) or 1 (parallel), got {mode}")
        options = EngineOptions(
            inter_threads=int_parameter(spec, ONNX.inter_op_threads) or 0,
            graph_optimization=GRAPH_LEVELS.get(self.config.optimization.graph.level, "all"),
            parallel_execution=mode == 1,
            memory_arena=bool_parameter(spec, "enable_mem_arena", True),
            memory_pattern=bool_parameter(spec, "enable_mem_pattern", True),
        )
        threads = int_parameter(spec, ONNX.intra_op_threads) or 0
        try:
            self.engine = open_engine(path, FORMAT, threads=threads, device=device, options=options)
        except EngineError as error:
            raise ModelContractError(str(error)) from error

    def check_contract(self) -> None:
        spec = self.spec
        graph_inputs = {tensor.name: tensor for tensor in self.engine.inputs}
        graph_outputs = {tensor.name: tensor for tensor in self.engine.outputs}
        batch_inputs = self.ragged.targets  # config `batch_input` tensors are model inputs too
        if len(spec.inputs) + len(batch_inputs) != len(graph_inputs):
            raise ModelContractError(
                f"configuration expects {len(spec.inputs) + len(batch_inputs)} inputs, model provides "
                f"{len(graph_inputs)} ({', '.join(graph_inputs)})"
            )
        for target in batch_inputs:
            if target not in graph_inputs:
                raise ModelContractError(
                    f"batch input '{target}' is not an input of the model ({', '.join(graph_inputs)})"
                )
        for kind, configured, graph, exact in (
            ("input", spec.inputs, graph_inputs, False),
            ("output", spec.outputs, graph_outputs, True),
        ):
            for tensor in configured:
                if tensor.name not in graph:
                    raise ModelContractError(
                        f"unexpected inference {kind} '{tensor.name}', allowed {kind}s are: {', '.join(graph)}"
                    )
                if kind == "input" and tensor.name in self.ragged.ragged_inputs:
                    self._check_ragged(tensor, graph[tensor.name])
                    continue
                self._check_tensor(kind, tensor, graph[tensor.name], exact)

    def _check_ragged(self, tensor: TensorSpec, node: EngineTensor) -> None:
        """The native backend's rule: a ragged input is fed flattened, so the model takes it as [-1]."""
        model_dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape or ())
        if model_dims != (-1,):
            raise ModelContractError(
                f"model '{self.spec.name}': to support ragged batching the model must have shape [-1] for input "
                f"'{tensor.name}', it has {list(model_dims)}"
            )

    def _check_tensor(self, kind: str, tensor: TensorSpec, node: EngineTensor, exact: bool) -> None:
        model_type = ort_config_data_type(node.engine_type or "")
        if model_type != tensor.config_data_type:
            raise ModelContractError(
                f"configuration expects datatype {tensor.config_data_type} for {kind} '{tensor.name}', "
                f"model provides {model_type}"
            )
        model_dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape or ())
        batching = self.spec.batched
        if batching and (not model_dims or model_dims[0] != -1):
            raise ModelContractError(
                f"model '{self.spec.name}', tensor '{tensor.name}': for the model to support batching the shape "
                f"should have at least 1 dimension and the first dimension must be -1; but shape expected by the "
                f"model is {list(model_dims)} (export with a dynamic batch axis, or set max_batch_size: 0)"
            )
        full = tensor.full_shape(batching)
        if len(full) != len(model_dims):
            batch_note = " (an initial batch dimension because max_batch_size > 0 followed by dims)" if batching else ""
            raise ModelContractError(
                f"{kind} '{tensor.name}': the model expects {len(model_dims)} dimensions (shape {list(model_dims)}) "
                f"but the model configuration specifies {len(full)} dimensions{batch_note}, making complete shape "
                f"{list(full)}; remember that dims exclude the batch dimension when max_batch_size > 0"
            )
        if not dims_compatible(model_dims, full, exact):
            raise ModelContractError(
                f"model '{self.spec.name}', tensor '{tensor.name}': the model expects shape {list(model_dims)} but "
                f"the model configuration specifies shape {list(full)}"
            )

    def infer(self, inputs: Tensors, outputs: list[str]) -> Tensors:
        return self.engine.run(inputs, outputs)  # EngineInputError for bad request data (INVALID_ARG)

    def unload(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()
        self.engine = None
