"""Served python model `esm2_tokenizer`: SEQUENCE (BYTES [1]) -> INPUT_IDS, ATTENTION_MASK (INT64 [-1]).

The sequence rules come from `esm2_tokens.py`, which `python -m export esm2` copies beside this file from
`tritonfleet.contract.esm2_tokens` (the python backend puts this directory on `sys.path`; the NGC image has numpy,
not tritonfleet).

Each request is padded to the length bucket of its longest sequence (config parameter `length_buckets`; "exact":
to that sequence's own length); then consecutive requests of one execute() are padded to a shared width where one
execution of the next model is cheaper than several (config parameter `run_overhead_tokens`, see
`esm2_tokens.plan_shared_widths`): Triton's dynamic batcher closes a batch at the first request of another shape, so
this is what lets random-length traffic batch. A bad sequence fails only its own request, with INVALID_ARG (HTTP 400)
and a message naming the problem.
"""

from __future__ import annotations

import esm2_tokens
import numpy as np
import triton_python_backend_utils as pb_utils


def encode(request, buckets) -> tuple[np.ndarray, np.ndarray] | pb_utils.InferenceResponse:
    """(input_ids, attention_mask) of a request's sequences at their own bucket, or its error response."""
    tensor = pb_utils.get_input_tensor_by_name(request, "SEQUENCE")
    result = (
        esm2_tokens.encode_request(tensor.as_numpy().ravel().tolist(), buckets)
        if tensor is not None
        else esm2_tokens.EncodingFailure("the request has no SEQUENCE input", invalid=False)
    )
    if isinstance(result, esm2_tokens.EncodingFailure):
        code = pb_utils.TritonError.INVALID_ARG if result.invalid else pb_utils.TritonError.INTERNAL
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(result.message, code))
    return result


class TritonPythonModel:
    """Tokenizes protein sequences for ESM-2, one response per request."""

    def initialize(self, args: dict[str, str]) -> None:
        self.settings = esm2_tokens.TokenizerSettings.from_model_config(args["model_config"])
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.settings.describe()}")

    def execute(self, requests):
        encoded = [encode(request, self.settings.padding_buckets) for request in requests]
        valid = [index for index, item in enumerate(encoded) if isinstance(item, tuple)]
        widths = esm2_tokens.plan_shared_widths(
            [encoded[i][0].shape[1] for i in valid],
            [encoded[i][0].shape[0] for i in valid],
            self.settings.run_overhead_tokens,
        )
        for index, width in zip(valid, widths):
            input_ids, attention_mask = esm2_tokens.pad_to_width(*encoded[index], width)
            encoded[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("INPUT_IDS", input_ids),
                    pb_utils.Tensor("ATTENTION_MASK", attention_mask),
                ]
            )
        return encoded
