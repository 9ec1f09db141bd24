"""Triton python-backend model `esm2_tokenizer`: SEQUENCE (BYTES [1]) -> INPUT_IDS, ATTENTION_MASK (INT64 [-1]).

`python -m export esm2` copies this file to `esm2_tokenizer/1/model.py` and `export/esm2/tokenizer.py` beside it
as `tokenizer.py`. The python-backend stub has numpy but not this project on its path, so the sibling is loaded
from its file path under a private module name (no sys.path games, no clash with any installed `tokenizer`).

Each request is padded to the length bucket of its longest sequence (config parameter `length_buckets`); then
consecutive requests of one execute() are padded to a shared width where one execution of the next model is
cheaper than several (config parameter `run_overhead_tokens`, see `plan_shared_widths`): Triton's dynamic batcher
closes a batch at the first request of another shape, so this is what lets random-length traffic batch.
A bad sequence fails only its own request, with INVALID_ARG (HTTP 400) and a message naming the problem.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

TOKENIZER_FILENAME = "tokenizer.py"
_TOKENIZER_MODULE = "tritonfleet_esm2_tokenizer"


def _load_tokenizer_module(directory: Path):
    if _TOKENIZER_MODULE in sys.modules:
        return sys.modules[_TOKENIZER_MODULE]
    spec = importlib.util.spec_from_file_location(_TOKENIZER_MODULE, directory / TOKENIZER_FILENAME)
    if spec is None or spec.loader is None:
        raise pb_utils.TritonModelException(f"cannot load {directory / TOKENIZER_FILENAME}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_TOKENIZER_MODULE] = module
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    """Tokenizes protein sequences for ESM-2, one response per request."""

    def initialize(self, args: dict[str, str]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        here = Path(__file__).resolve().parent if "__file__" in globals() else version_dir
        self.tokens = _load_tokenizer_module(here if (here / TOKENIZER_FILENAME).exists() else version_dir)
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        bucket_text = parameters.get("length_buckets", {}).get("string_value", "")
        self.buckets = self.tokens.parse_buckets(bucket_text) if bucket_text else self.tokens.DEFAULT_BUCKETS
        overhead_text = parameters.get("run_overhead_tokens", {}).get("string_value", "")
        self.run_overhead_tokens = int(overhead_text) if overhead_text else self.tokens.DEFAULT_RUN_OVERHEAD_TOKENS
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"esm2_tokenizer: length buckets {','.join(map(str, self.buckets))}, "
            f"run overhead {self.run_overhead_tokens} tokens"
        )

    def execute(self, requests):
        encoded = [self._encode(request) for request in requests]
        valid = [index for index, item in enumerate(encoded) if isinstance(item, tuple)]
        widths = self.tokens.plan_shared_widths(
            [encoded[i][0].shape[1] for i in valid], [encoded[i][0].shape[0] for i in valid], self.run_overhead_tokens
        )
        for index, width in zip(valid, widths):
            input_ids, attention_mask = self.tokens.pad_to_width(*encoded[index], width)
            encoded[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("INPUT_IDS", input_ids.astype(np.int64, copy=False)),
                    pb_utils.Tensor("ATTENTION_MASK", attention_mask.astype(np.int64, copy=False)),
                ]
            )
        return encoded

    def _encode(self, request) -> tuple[np.ndarray, np.ndarray] | pb_utils.InferenceResponse:
        """(input_ids, attention_mask) at the request's own bucket, or its error response."""
        try:
            sequences = pb_utils.get_input_tensor_by_name(request, "SEQUENCE").as_numpy().reshape(-1)
            return self.tokens.encode_batch(list(sequences), self.buckets)
        except self.tokens.InvalidSequenceError as error:
            return self._error(str(error), pb_utils.TritonError.INVALID_ARG)
        except Exception as error:  # noqa: BLE001 - one broken request must not fail its batch-mates
            return self._error(f"tokenizer failed: {error!r}", pb_utils.TritonError.INTERNAL)

    @staticmethod
    def _error(message: str, code) -> pb_utils.InferenceResponse:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    def finalize(self) -> None:
        pass
