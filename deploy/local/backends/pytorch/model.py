"""Python-based `pytorch` backend: serves `platform: "pytorch_libtorch"` TorchScript models (`model.pt`) locally.

Follows the native LibTorch backend's naming convention (inputs `NAME__<i>` or forward-argument names, else config
order; outputs `NAME__<i>`, else config order), its device rules (KIND_GPU -> `cuda:<device_id>`) and its config
`parameters` (INFERENCE_MODE, INTRA_OP_THREAD_COUNT, INTER_OP_THREAD_COUNT, DISABLE_OPTIMIZED_EXECUTION,
ENABLE_CACHE_CLEANING).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonfleet.contract.engine_formats import TORCHSCRIPT
from tritonfleet.contract.engines import EngineError, EngineOptions, open_engine, runner_for
from tritonfleet.deploy.local.backends.base import PythonBasedBackend
from tritonfleet.deploy.local.backends.batching import Tensors
from tritonfleet.deploy.local.backends.contract import (
    ModelContractError,
    bool_parameter,
    int_parameter,
    order_by_index_suffix,
)

LOGGER = logging.getLogger(__name__)
FORMAT = TORCHSCRIPT.name


class TritonPythonModel(PythonBasedBackend):
    default_model_filename = TORCHSCRIPT.model_filename
    backend_name = "pytorch (Python-based)"

    def cuda_available(self) -> bool:
        return runner_for(FORMAT).cuda_available()

    def load(self, path: Path, device: str) -> None:
        spec = self.spec
        options = EngineOptions(
            inter_threads=max(int_parameter(spec, TORCHSCRIPT.inter_op_threads) or 0, 0),
            inference_mode=bool_parameter(spec, "INFERENCE_MODE", True),
            optimized_execution=not bool_parameter(spec, "DISABLE_OPTIMIZED_EXECUTION", False),
            cache_cleaning=bool_parameter(spec, "ENABLE_CACHE_CLEANING", False),
        )
        threads = max(int_parameter(spec, TORCHSCRIPT.intra_op_threads) or 0, 0)
        try:
            self.engine = open_engine(path, FORMAT, threads=threads, device=device, options=options)
        except EngineError as error:
            raise ModelContractError(str(error)) from error

    def check_contract(self) -> None:
        arguments = list(self.engine.input_names)  # the forward arguments' names until named below
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
        positions = dict(zip(output_names, indices if indices is not None else range(len(output_names))))
        self.engine.name_tensors(inputs=self._argument_order, outputs=positions)

    def infer(self, inputs: Tensors, outputs: list[str]) -> Tensors:
        # EngineInputError for bad request data (INVALID_ARG); other errors carry the script's last line only
        return self.engine.run(inputs, outputs)

    def unload(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()
        self.engine = None
