"""Python-based `onnxruntime` backend: serves `platform: "onnxruntime_onnx"` models (`model.onnx`) locally.

Mirrors the native ONNX Runtime backend's load-time contract (input/output names, dtypes, ranks, the batch-dim
rule) and its config `parameters` (intra/inter-op threads, execution mode, memory arena/pattern) so a model that
loads here also loads in the NGC image.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, RuntimeException

from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.deploy.local.backends.base import EngineInputError, PythonBasedBackend
from tritonfleet.deploy.local.backends.batching import Tensors
from tritonfleet.deploy.local.backends.contract import (
    ModelContractError,
    bool_parameter,
    dims_compatible,
    int_parameter,
    ort_config_data_type,
)

# Triton's `optimization { graph { level } }` for ONNX Runtime: -1 basic, 1 extended, 2 disable all, default all.
GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


class TritonPythonModel(PythonBasedBackend):
    default_model_filename = "model.onnx"
    backend_name = "onnxruntime (Python-based)"

    def cuda_available(self) -> bool:
        return "CUDAExecutionProvider" in ort.get_available_providers()

    def load(self, path: Path, device: str) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_LEVELS.get(
            self.config.optimization.graph.level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        spec = self.spec
        if (threads := int_parameter(spec, "intra_op_thread_count")) is not None:
            options.intra_op_num_threads = threads
        if (threads := int_parameter(spec, "inter_op_thread_count")) is not None:
            options.inter_op_num_threads = threads
        mode = int_parameter(spec, "execution_mode")
        if mode not in (None, 0, 1):
            raise ModelContractError(f"parameter 'execution_mode' must be 0 (sequential) or 1 (parallel), got {mode}")
        if mode == 1:
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.enable_cpu_mem_arena = bool_parameter(spec, "enable_mem_arena", True)
        options.enable_mem_pattern = bool_parameter(spec, "enable_mem_pattern", True)
        if device.startswith("cuda"):
            providers = [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)

    def check_contract(self) -> None:
        spec = self.spec
        graph_inputs = {node.name: node for node in self.session.get_inputs()}
        graph_outputs = {node.name: node for node in self.session.get_outputs()}
        if len(spec.inputs) != len(graph_inputs):
            raise ModelContractError(
                f"configuration expects {len(spec.inputs)} inputs, model provides {len(graph_inputs)} "
                f"({', '.join(graph_inputs)})"
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
                self._check_tensor(kind, tensor, graph[tensor.name], exact)

    def _check_tensor(self, kind: str, tensor: TensorSpec, node: ort.NodeArg, exact: bool) -> None:
        model_type = ort_config_data_type(node.type)
        if model_type != tensor.config_data_type:
            raise ModelContractError(
                f"configuration expects datatype {tensor.config_data_type} for {kind} '{tensor.name}', "
                f"model provides {model_type}"
            )
        model_dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
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
        try:
            values = self.session.run(outputs, inputs)
        except InvalidArgument as error:
            raise EngineInputError(str(error)) from error
        except RuntimeException as error:
            # Inputs whose dynamic dims disagree (e.g. ids vs mask lengths) fail inside a broadcasting kernel.
            if "broadcast" in str(error).lower():
                raise EngineInputError(str(error)) from error
            raise
        return dict(zip(outputs, values))

    def unload(self) -> None:
        self.session = None
