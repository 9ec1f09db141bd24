"""Served python model `esm2_bls`: SEQUENCE (BYTES [1]) -> EMBEDDING [D], RESIDUE_EMBEDDINGS [-1, D].

The same contract as the `esm2` ensemble, with the batching moved to where the queue forms. In the ensemble each
request reaches the network's dynamic batcher on its own, padded to its own length bucket, and Triton's batcher
closes a batch at the first request of another shape, so random-length traffic runs at batch ~1. Here the requests
queue in front of this model (one shape: BYTES [1], so Triton batches them fully); each execute() tokenizes them,
sorts them by width, cuts the sorted list into width groups (`plan_shared_widths`: one more execution vs padding)
and sends each group to the network as one batched BLS request, then splits the outputs back per request.

execute() is synchronous: Triton 24.10's stub runs an `async def execute` of a non-decoupled model on its event-loop
thread and blocks on the result, and `async_exec` hands the call to a thread pool, so each request paid two thread
hand-offs each way for no concurrency. One group (always the case at max_batch_size 1, the CPU plans) is sent with a
blocking `exec()` on the stub's own thread; several groups are still sent at once, on a private event loop.

An execution of one request (every one at max_batch_size 1) skips the planning: its own width, one call, and the
network's output tensors handed on as the response's (they already sit in the shared memory the response is read
from), not sliced and copied. At concurrency 1 each Python step costs ~10-40 us after the stub has waited out the
network's run (cold caches), so the fewer steps the better: the BLS round trip itself costs ~0.8 ms on the 2-core CPU
machine, the Python around it ~0.2 ms (0.36 before this path; `loadtest/served_overhead.py` measures the total).

Tokenization is the `esm2_tokenizer` model's own code: `python -m export esm2` copies its `model.py` beside this
file as `esm2_tokenizer_model.py`, with `esm2_tokens.py` (the python backend puts this directory on `sys.path`).

Priorities and deadlines (docs/design.md): Triton orders this model's own queue by the clients' priority levels,
but in Triton 24.10 a python model can neither read a request's priority nor give one to a BLS request, so the
network calls made here take the network's default level. A client deadline does travel: each network call carries
its group's timeout (`request.timeout()`, microseconds: the longest, none if a request has none), so the network's
queue refuses work whose clients have given up instead of computing it.
"""

from __future__ import annotations

import asyncio
import json

import esm2_tokenizer_model
import esm2_tokens
import numpy as np
import triton_python_backend_utils as pb_utils

OUTPUTS = ("EMBEDDING", "RESIDUE_EMBEDDINGS")
# Triton's messages for a request refused by a full queue or a queue-wait timeout (both UNAVAILABLE).
BACKPRESSURE_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")


def _name_map(text: str) -> dict[str, str]:
    """ "A=B,C=D" -> {"A": "B", "C": "D"}."""
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def _backpressure_status(error):
    """The network's error with its back-pressure status restored: Triton 24.10 hands a BLS caller every failed
    response as INTERNAL (`python_backend:src/request_executor.cc` builds a PbError from the message alone), so a
    full queue or an expired timeout would reach clients as a 500 instead of a 503 / UNAVAILABLE to back off on."""
    message = error.message()
    if any(marker in message for marker in BACKPRESSURE_MESSAGES):
        return pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE)
    return error


def _group_timeout(requests) -> int:
    """The timeout (microseconds) of a network call serving `requests`: the longest of theirs, 0 (none) if any has
    none, so the call is refused only when every request in it would be, never for a neighbour's deadline."""
    timeouts = [request.timeout() for request in requests]
    return 0 if 0 in timeouts else max(timeouts, default=0)


def _exec(call):
    """A blocking BLS call on the stub's own thread; the exception in place of its response where it raised."""
    try:
        return call.exec()
    except Exception as error:  # noqa: BLE001 - reported to the group's requests
        return error


async def _gather(calls) -> list:
    """Every BLS call at once; an exception in place of a call's response where it raised."""
    return await asyncio.gather(*(call.async_exec() for call in calls), return_exceptions=True)


class TritonPythonModel:
    """Tokenize, group by width, one batched network call per group."""

    def initialize(self, args: dict[str, str]) -> None:
        self.settings = esm2_tokens.TokenizerSettings.from_model_config(args["model_config"])
        parameters = {
            key: value["string_value"] for key, value in json.loads(args["model_config"])["parameters"].items()
        }
        self.target = parameters["target_model"]
        self.target_max_batch_size = int(parameters["target_max_batch_size"])
        self.target_inputs = _name_map(parameters["target_inputs"])  # e.g. {"INPUT_IDS": "INPUT_IDS__0", ...}
        self.target_outputs = _name_map(parameters["target_outputs"])
        self.renamed_outputs = {target: name for name, target in self.target_outputs.items() if target != name}
        self._loop = asyncio.new_event_loop()  # for executions that send several groups at once

    def execute(self, requests):
        if len(requests) == 1:
            return [self._execute_one(requests[0])]
        encoded = [esm2_tokenizer_model.encode(request, self.settings.padding_buckets) for request in requests]
        valid = sorted(
            (index for index, item in enumerate(encoded) if isinstance(item, tuple)),
            key=lambda index: encoded[index][0].shape[1],
        )
        widths = esm2_tokens.plan_shared_widths(
            [encoded[i][0].shape[1] for i in valid],
            [encoded[i][0].shape[0] for i in valid],
            self.settings.run_overhead_tokens,
        )
        groups = self._groups(valid, widths, [encoded[i][0].shape[0] for i in valid])
        wanted = self._wanted_outputs(requests)
        calls = [self._group_request(requests, group, width, encoded, wanted) for group, width in groups]
        if len(calls) == 1:
            answers = [_exec(calls[0])]
        elif calls:
            answers = self._loop.run_until_complete(_gather(calls))
        else:
            answers = []
        responses = list(encoded)
        for (group, _), answer in zip(groups, answers):
            for index, response in zip(group, self._split(answer, group, encoded, wanted)):
                responses[index] = response
        return responses

    def _execute_one(self, request):
        """`execute` of one request (every execution at max_batch_size 1): its own width, one network call."""
        encoded = esm2_tokenizer_model.encode(request, self.settings.padding_buckets)
        if not isinstance(encoded, tuple):
            return encoded
        wanted = self._wanted_outputs((request,))
        answer = _exec(self._group_request((request,), [0], encoded[0].shape[1], [encoded], wanted))
        return self._split(answer, [0], [encoded], wanted)[0]

    def _groups(self, order: list[int], widths: list[int], rows: list[int]) -> list[tuple[list[int], int]]:
        """Consecutive requests of one planned width, cut so no group exceeds the network's max batch size."""
        groups: list[tuple[list[int], int]] = []
        group_rows = 0
        for index, width, count in zip(order, widths, rows):
            if groups and groups[-1][1] == width and group_rows + count <= self.target_max_batch_size:
                groups[-1][0].append(index)
                group_rows += count
            else:
                groups.append(([index], width))
                group_rows = count
        return groups

    @staticmethod
    def _wanted_outputs(requests) -> tuple[str, ...]:
        names: set[str] = set()
        for request in requests:
            requested = request.requested_output_names()
            names.update(requested if requested else OUTPUTS)
        return tuple(name for name in OUTPUTS if name in names)

    def _group_request(self, requests, group: list[int], width: int, encoded, wanted: tuple[str, ...]):
        if len(group) == 1:
            input_ids, attention_mask = esm2_tokens.pad_to_width(*encoded[group[0]], width)
        else:
            padded = [esm2_tokens.pad_to_width(*encoded[index], width) for index in group]
            input_ids = np.concatenate([ids for ids, _ in padded])
            attention_mask = np.concatenate([mask for _, mask in padded])
        request = pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=[
                pb_utils.Tensor(self.target_inputs["INPUT_IDS"], input_ids),
                pb_utils.Tensor(self.target_inputs["ATTENTION_MASK"], attention_mask),
            ],
            requested_output_names=[self.target_outputs[name] for name in wanted],
            timeout=_group_timeout([requests[index] for index in group]),
        )
        return request

    def _split(self, answer, group: list[int], encoded, wanted: tuple[str, ...]) -> list:
        if isinstance(answer, BaseException):
            error = pb_utils.TritonError(f"{self.target} call failed: {answer}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in group]
        if answer.has_error():
            error = _backpressure_status(answer.error())
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in group]
        if len(group) == 1:
            # The request owns the whole output: hand the network's tensors on as they are (no copy, no slicing).
            return [pb_utils.InferenceResponse(output_tensors=self._served(answer.output_tensors()))]
        outputs = {
            name: pb_utils.get_output_tensor_by_name(answer, self.target_outputs[name]).as_numpy() for name in wanted
        }
        responses, start = [], 0
        for index in group:
            rows = encoded[index][0].shape[0]
            tensors = [pb_utils.Tensor(name, outputs[name][start : start + rows]) for name in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += rows
        return responses

    def _served(self, tensors) -> list:
        """The network's output tensors under this model's names (TorchScript networks name theirs `NAME__<i>`)."""
        if not self.renamed_outputs:
            return tensors
        return [pb_utils.Tensor.from_dlpack(self.renamed_outputs.get(t.name(), t.name()), t) for t in tensors]

    def finalize(self) -> None:
        self._loop.close()
