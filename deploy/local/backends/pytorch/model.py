"""Python-based `pytorch` backend: serves `platform: "pytorch_libtorch"` TorchScript models (`model.pt`) locally.

Follows the native LibTorch backend's naming convention (inputs `NAME__<i>` or forward-argument names, else config
order; outputs `NAME__<i>`, else config order), its device rules (KIND_GPU -> `cuda:<device_id>`) and its config
`parameters` (INFERENCE_MODE, INTRA_OP_THREAD_COUNT, INTER_OP_THREAD_COUNT, DISABLE_OPTIMIZED_EXECUTION,
ENABLE_CACHE_CLEANING).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from tritonfleet.deploy.local.backends.base import EngineInputError, PythonBasedBackend
from tritonfleet.deploy.local.backends.batching import Tensors
from tritonfleet.deploy.local.backends.contract import (
    ModelContractError,
    bool_parameter,
    int_parameter,
    order_by_index_suffix,
)

LOGGER = logging.getLogger(__name__)
# TorchScript raises plain RuntimeErrors; these messages mean the request's data was bad, not the engine.
INPUT_ERROR_MARKERS = ("index out of range", "must match the size of tensor", "shape mismatch", "invalid shape")


class TritonPythonModel(PythonBasedBackend):
    default_model_filename = "model.pt"
    backend_name = "pytorch (Python-based)"

    def cuda_available(self) -> bool:
        return torch.cuda.is_available()

    def load(self, path: Path, device: str) -> None:
        spec = self.spec
        if (threads := int_parameter(spec, "INTRA_OP_THREAD_COUNT")) is not None and threads > 0:
            torch.set_num_threads(threads)
        if (threads := int_parameter(spec, "INTER_OP_THREAD_COUNT")) is not None and threads > 0:
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # only settable once per process, before any parallel work
                LOGGER.warning("INTER_OP_THREAD_COUNT ignored: inter-op threads already initialised")
        self.inference_mode = bool_parameter(spec, "INFERENCE_MODE", True)
        self.cache_cleaning = bool_parameter(spec, "ENABLE_CACHE_CLEANING", False)
        torch._C._jit_set_profiling_executor(not bool_parameter(spec, "DISABLE_OPTIMIZED_EXECUTION", False))
        self.torch_device = torch.device(device)
        try:
            self.module = torch.jit.load(str(path), map_location=self.torch_device)
        except RuntimeError as error:
            raise ModelContractError(f"'{path}' is not a TorchScript file torch.jit.load can read: {error}") from error
        self.module.eval()

    def check_contract(self) -> None:
        arguments = [arg.name for arg in self.module.forward.schema.arguments[1:]]  # drop `self`
        config_inputs = [tensor.name for tensor in self.spec.inputs]
        if len(arguments) != len(config_inputs):
            raise ModelContractError(
                f"configuration expects {len(config_inputs)} inputs, model provides {len(arguments)} "
                f"(forward arguments: {', '.join(arguments)})"
            )
        indices = order_by_index_suffix(config_inputs)
        if indices is not None:
            if sorted(indices) != list(range(len(arguments))):
                raise ModelContractError(
                    f"input names {config_inputs} must use indices 0..{len(arguments) - 1} exactly once (NAME__<i>)"
                )
            self._argument_order = [config_inputs[indices.index(i)] for i in range(len(arguments))]
        elif sorted(config_inputs) == sorted(arguments):
            self._argument_order = arguments
        else:
            LOGGER.warning(
                "model '%s': input names %s follow neither NAME__<i> nor forward argument names %s; "
                "using configuration order",
                self.spec.name,
                config_inputs,
                arguments,
            )
            self._argument_order = config_inputs
        output_names = [tensor.name for tensor in self.spec.outputs]
        indices = order_by_index_suffix(output_names)
        self._output_positions = dict(zip(output_names, indices if indices is not None else range(len(output_names))))

    def infer(self, inputs: Tensors, outputs: list[str]) -> Tensors:
        arguments = [
            torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.torch_device) for name in self._argument_order
        ]
        context = torch.inference_mode() if self.inference_mode else torch.no_grad()
        try:
            with context:
                result = self.module(*arguments)
        except (IndexError, ValueError) as error:
            raise EngineInputError(str(error)) from error
        except RuntimeError as error:
            # A TorchScript error carries the script traceback; its last line is the message worth returning.
            message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
            if any(marker in message for marker in INPUT_ERROR_MARKERS):
                raise EngineInputError(message) from error
            raise RuntimeError(message) from error
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        results: Tensors = {}
        for name in outputs:
            position = self._output_positions[name]
            if position >= len(values):
                raise RuntimeError(f"output '{name}' refers to result {position}, the model returned {len(values)}")
            results[name] = values[position].detach().cpu().numpy()
        if self.cache_cleaning and self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
        return results

    def unload(self) -> None:
        self.module = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
