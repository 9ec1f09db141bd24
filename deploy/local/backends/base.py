"""Base class of the Python-based backends: the Triton-facing half (loading, execute, errors).

Subclasses provide `load(path, device)` (opening the file with `tritonfleet.contract.engines.open_engine`),
`check_contract()` and `infer(inputs) -> outputs` for one engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonfleet.contract.engines import EngineInputError  # the engine rejected a request's data: INVALID_ARG
from tritonfleet.contract.model_config import config_from_json
from tritonfleet.deploy.local.backends.batching import RaggedLayout, RequestResult, Tensors, run_batched
from tritonfleet.deploy.local.backends.contract import ModelContractError, apply_cpu_nice, served_model

__all__ = ["EngineInputError", "PythonBasedBackend"]


class PythonBasedBackend:
    """Triton python-model protocol around one inference engine, honouring the native backends' contract."""

    default_model_filename = "model"
    backend_name = "python-based"

    def initialize(self, args: dict[str, str]) -> None:
        self.config = config_from_json(args["model_config"])
        self.spec = served_model(self.config)
        try:
            self.ragged = RaggedLayout.from_config(self.config)  # allow_ragged_batch inputs and batch_input tensors
        except ValueError as error:
            raise pb_utils.TritonModelException(f"unable to load model '{self.spec.name}': {error}") from error
        try:
            apply_cpu_nice(self.spec)  # before the engine starts its threads (they inherit it)
        except ModelContractError as error:
            raise pb_utils.TritonModelException(f"unable to load model '{self.spec.name}': {error}") from error
        self.instance_name = args.get("model_instance_name", self.spec.name)
        self.device = self._device(args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0)))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        filename = self.spec.default_model_filename or self.default_model_filename
        model_path = version_dir / filename
        if not model_path.exists():
            raise pb_utils.TritonModelException(
                f"unable to find '{model_path}' for model instance '{self.instance_name}' "
                f"({self.backend_name} expects '{filename}' in the version directory)"
            )
        try:
            self.load(model_path, self.device)
            self.check_contract()
        except ModelContractError as error:
            raise pb_utils.TritonModelException(f"unable to load model '{self.spec.name}': {error}") from error
        self._output_dtypes = {spec.name: spec.numpy_dtype for spec in self.spec.outputs}

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs: list[Tensors] = [
            {spec.name: pb_utils.get_input_tensor_by_name(request, spec.name).as_numpy() for spec in self.spec.inputs}
            for request in requests
        ]
        # Like the native backends, compute and return only the outputs a request asked for (none named = all).
        requested = [self._requested_outputs(request) for request in requests]
        wanted = [spec.name for spec in self.spec.outputs if any(spec.name in names for names in requested)]
        results = run_batched(
            inputs, lambda tensors: self._checked_infer(tensors, wanted), batched=self.spec.batched, ragged=self.ragged
        )
        return [self._response(result, names) for result, names in zip(results, requested)]

    def finalize(self) -> None:
        self.unload()

    # -- engine hooks ---------------------------------------------------------------------------------------------
    def load(self, path: Path, device: str) -> None:
        raise NotImplementedError

    def check_contract(self) -> None:
        raise NotImplementedError

    def infer(self, inputs: Tensors, outputs: list[str]) -> Tensors:
        """Run the engine; return at least the named outputs."""
        raise NotImplementedError

    def unload(self) -> None:
        """Release the engine (optional)."""

    # -- helpers ----------------------------------------------------------------------------------------------
    def _device(self, kind: str, device_id: int) -> str:
        if kind == "GPU":
            if not self.cuda_available():
                raise pb_utils.TritonModelException(
                    f"model '{self.spec.name}' asks for KIND_GPU (device {device_id}) but {self.backend_name} "
                    "finds no usable CUDA device; use KIND_CPU, or KIND_AUTO to fall back to CPU when no GPU exists"
                )
            return f"cuda:{device_id}"
        return "cpu"

    def cuda_available(self) -> bool:
        return False

    def _requested_outputs(self, request: Any) -> frozenset[str]:
        names = request.requested_output_names()
        return frozenset(names) if names else frozenset(self._output_dtypes)

    def _checked_infer(self, inputs: Tensors, wanted: list[str]) -> Tensors:
        outputs = self.infer(inputs, wanted)
        for name in wanted:
            dtype = self._output_dtypes[name]
            if name not in outputs:
                raise RuntimeError(f"engine produced no output '{name}'")
            if outputs[name].dtype != dtype:
                raise RuntimeError(
                    f"output '{name}' has dtype {outputs[name].dtype}, configuration expects {np.dtype(dtype)}"
                )
        return outputs

    def _response(self, result: RequestResult, requested: frozenset[str]) -> Any:
        if result.error is None:
            assert result.outputs is not None
            tensors = [
                pb_utils.Tensor(spec.name, result.outputs[spec.name])
                for spec in self.spec.outputs
                if spec.name in requested
            ]
            return pb_utils.InferenceResponse(output_tensors=tensors)
        code_name = "INVALID_ARG" if isinstance(result.error, EngineInputError) else "INTERNAL"
        message = f"{self.backend_name} inference failed for model '{self.spec.name}': {result.error}"
        code = getattr(pb_utils.TritonError, code_name, None)
        error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
