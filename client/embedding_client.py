"""The synchronous client: `EmbeddingClient(ClientConfig(url=..., protocol="http" | "grpc"))`.

Batches beyond the model's `max_batch_size` are sent concurrently from a thread pool (at most `max_in_flight` at a
time); each worker thread owns its tritonclient instance, because tritonclient clients are not thread-safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from tritonfleet.client import core
from tritonfleet.client.config import ClientConfig
from tritonfleet.client.errors import TritonFleetError, classify_exception, is_connection_failure
from tritonfleet.client.model import ModelSpec, OutputKind, entry_model_name
from tritonfleet.client.retry import Deadline, call_with_retry, time_left
from tritonfleet.client.transport import Transport

T = TypeVar("T")


class EmbeddingClient:
    """ESM-2 embeddings from a Triton server over HTTP or gRPC; usable as a context manager.

    Example:
        with EmbeddingClient(ClientConfig(url="127.0.0.1:8001", protocol="grpc")) as client:
            vectors = client.embed(["MKTAYIAKQR", "GSHMLE"])  # [2, D] float32
    """

    def __init__(self, config: ClientConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or ClientConfig(), **overrides)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._transports: list[Transport] = []
        self._executor: ThreadPoolExecutor | None = None
        self._spec: ModelSpec | None = None
        self._entry_specs: dict[str, ModelSpec] = {}
        self._closed = False

    # -- health and metadata --------------------------------------------------------------------------------------
    def is_server_live(self) -> bool:
        """True if the server answers liveness; False if it is unreachable (no retries)."""
        return self._probe(lambda transport: transport.server_live())

    def is_server_ready(self) -> bool:
        """True if the server answers readiness; False if it is unreachable or not ready (no retries)."""
        return self._probe(lambda transport: transport.server_ready())

    def is_model_ready(self) -> bool:
        """True if the configured model (and version) is ready; False otherwise (no retries)."""
        config = self.config
        return self._probe(lambda transport: transport.model_ready(config.model, config.version))

    def model_metadata(self) -> dict[str, Any]:
        """The model's metadata as a dict (same keys for HTTP and gRPC)."""
        config = self.config
        return self._call(f"metadata of {config.model}", lambda t: t.model_metadata(config.model, config.version))

    def model_config(self) -> dict[str, Any]:
        """The model's configuration as a dict (gRPC's answer is unwrapped from its `config` field)."""
        config = self.config
        answer = self._call(f"config of {config.model}", lambda t: t.model_config(config.model, config.version))
        return answer.get("config", answer)

    def model_spec(self) -> ModelSpec:
        """Tensor names, feed kind, max_batch_size and D of the configured model (read once, then cached)."""
        if self._spec is None:
            self._spec = ModelSpec.from_config(self.model_config(), self.config.version)
        return self._spec

    def entry_spec(self, kind: OutputKind) -> ModelSpec:
        """The model a request for `kind` goes to (`ClientConfig.entry_routing`): the entry model the configured
        model advertises for this priority class and output, else the configured model itself; an advertised model
        the server does not serve (e.g. not loaded) falls back to the configured one."""
        spec = self.model_spec()
        name = entry_model_name(spec, self.config.priority, kind) if self.config.entry_routing else spec.name
        if name == spec.name:
            return spec
        if name not in self._entry_specs:
            try:
                entry = ModelSpec.from_config(self._config_of(name))
            except TritonFleetError:
                entry = spec
            self._entry_specs[name] = entry if entry.embedding_dim == spec.embedding_dim else spec
        return self._entry_specs[name]

    def _config_of(self, model: str) -> dict[str, Any]:
        answer = self._call(f"config of {model}", lambda t: t.model_config(model, ""))
        return answer.get("config", answer)

    # -- inference --------------------------------------------------------------------------------------------------
    def embed(self, sequences: Sequence[str], ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean-pooled embeddings, float32 [N, D], in input order.

        Every request carries the configured priority (`interactive` unless configured otherwise) and, with
        `deadline_s`, its deadline.

        Args:
            sequences: protein sequences (one-letter codes; lower case is accepted).
            ids: optional names used in error messages (e.g. FASTA ids).

        Raises:
            InvalidSequenceError: a sequence the tokenizer would reject (names its index and id).
            InvalidRequestError: the server rejected a request (HTTP 400 / INVALID_ARG).
            ServerUnavailableError: the server stayed unavailable through every retry.
            DeadlineExceededError: a request could not be answered within `deadline_s`.
        """
        texts = core.normalize_sequences(sequences, self.config.validate, ids)
        spec = self.entry_spec("EMBEDDING")
        call = core.plan_call(texts, spec.max_batch_size, spec.execution_token_budget)
        return core.assemble_embeddings(spec, call, self._run_batches(spec, call, "EMBEDDING"))

    def embed_residues(self, sequences: Sequence[str], ids: Sequence[str] | None = None) -> list[np.ndarray]:
        """Per-residue embeddings: one float32 [L_i, D] array per sequence (rows 1..L of RESIDUE_EMBEDDINGS)."""
        texts = core.normalize_sequences(sequences, self.config.validate, ids)
        spec = self.entry_spec("RESIDUE_EMBEDDINGS")
        call = core.plan_call(texts, spec.max_batch_size, spec.execution_token_budget)
        return core.assemble_residues(call, self._run_batches(spec, call, "RESIDUE_EMBEDDINGS"))

    def _run_batches(self, spec: ModelSpec, call: core.PreparedCall, kind: OutputKind) -> list[np.ndarray]:
        output = spec.output_name(kind)

        def run(batch: core.Batch) -> np.ndarray:
            arrays = core.build_input_arrays(spec, core.batch_texts(call, batch))
            operation = f"infer {spec.name}, {batch.describe(len(call.batches))}"
            deadline = Deadline.after(self.config.deadline_s)
            answer = self._call(
                operation,
                lambda t: t.infer(spec.name, spec.version, arrays, [output], time_left(deadline)),
                deadline,
            )
            return answer[output]

        if len(call.batches) <= 1 or self.config.max_in_flight == 1:
            return [run(batch) for batch in call.batches]
        futures = [self._pool().submit(run, batch) for batch in call.batches]
        try:
            return [future.result() for future in futures]
        finally:
            _cancel_pending(futures)

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _call(self, operation: str, function: Callable[[Transport], T], deadline: Deadline | None = None) -> T:
        def attempt() -> T:
            transport = self._transport()
            try:
                return function(transport)
            except Exception as error:
                if is_connection_failure(error):
                    self._discard(transport)  # pooled sockets to a restarted server are dead
                raise

        where = f"{operation} at {self.config.protocol}://{self.config.url}"
        return call_with_retry(attempt, self.config.retry, where, deadline)

    def _probe(self, function: Callable[[Transport], bool]) -> bool:
        transport = self._transport()
        try:
            return bool(function(transport))
        except Exception as error:
            if classify_exception(error, "probe") is None:
                raise
            if is_connection_failure(error):
                self._discard(transport)
            return False

    def _transport(self) -> Transport:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            if self._closed:
                raise TritonFleetError("the client is closed")
            transport = Transport(self.config)
            with self._lock:
                self._transports.append(transport)
            self._local.transport = transport
        return transport

    def _discard(self, transport: Transport) -> None:
        if getattr(self._local, "transport", None) is transport:
            self._local.transport = None
        with self._lock:
            if transport in self._transports:
                self._transports.remove(transport)
        _close_quietly(transport)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.config.max_in_flight, thread_name_prefix="tritonfleet")
            return self._executor

    def close(self) -> None:
        """Closes every connection; the client cannot be used afterwards."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            _close_quietly(transport)

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _cancel_pending(futures: list[Future[Any]]) -> None:
    for future in futures:
        future.cancel()


def _close_quietly(transport: Transport) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail; nothing to recover
        transport.close()
