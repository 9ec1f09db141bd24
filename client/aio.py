"""The asyncio twin of `EmbeddingClient`: same configuration, same methods, awaited.

One tritonclient asyncio client (aiohttp session or gRPC channel) is shared by all concurrent requests; an
`asyncio.Semaphore` bounds the requests in flight to `max_in_flight` across every call on this client.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from tritonfleet.client import core
from tritonfleet.client.config import ClientConfig
from tritonfleet.client.errors import TritonFleetError, classify_exception
from tritonfleet.client.model import ModelSpec, OutputKind, entry_model_name
from tritonfleet.client.retry import Deadline, call_with_retry_async, time_left
from tritonfleet.client.transport import AsyncTransport

T = TypeVar("T")


class AsyncEmbeddingClient:
    """ESM-2 embeddings over HTTP or gRPC from asyncio code; use `async with`.

    Example:
        async with AsyncEmbeddingClient(ClientConfig(url="127.0.0.1:8000")) as client:
            vectors = await client.embed(["MKTAYIAKQR", "GSHMLE"])
    """

    def __init__(self, config: ClientConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or ClientConfig(), **overrides)
        self._transport_instance: AsyncTransport | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._spec: ModelSpec | None = None
        self._entry_specs: dict[str, ModelSpec] = {}
        self._closed = False

    # -- health and metadata --------------------------------------------------------------------------------------
    async def is_server_live(self) -> bool:
        """True if the server answers liveness; False if it is unreachable (no retries)."""
        return await self._probe(lambda transport: transport.server_live())

    async def is_server_ready(self) -> bool:
        """True if the server answers readiness; False if it is unreachable or not ready (no retries)."""
        return await self._probe(lambda transport: transport.server_ready())

    async def is_model_ready(self) -> bool:
        """True if the configured model (and version) is ready; False otherwise (no retries)."""
        config = self.config
        return await self._probe(lambda transport: transport.model_ready(config.model, config.version))

    async def model_metadata(self) -> dict[str, Any]:
        """The model's metadata as a dict (same keys for HTTP and gRPC)."""
        config = self.config
        return await self._call(f"metadata of {config.model}", lambda t: t.model_metadata(config.model, config.version))

    async def model_config(self) -> dict[str, Any]:
        """The model's configuration as a dict."""
        config = self.config
        answer = await self._call(f"config of {config.model}", lambda t: t.model_config(config.model, config.version))
        return answer.get("config", answer)

    async def metadata_of(self, model: str, version: str = "") -> dict[str, Any]:
        """Another model's metadata (e.g. an ensemble step's, to record which versions served a job)."""
        return await self._call(f"metadata of {model}", lambda t: t.model_metadata(model, version))

    async def config_of(self, model: str, version: str = "") -> dict[str, Any]:
        """Another model's configuration as a dict."""
        answer = await self._call(f"config of {model}", lambda t: t.model_config(model, version))
        return answer.get("config", answer)

    async def model_spec(self) -> ModelSpec:
        """Tensor names, feed kind, max_batch_size and D of the configured model (read once, then cached)."""
        if self._spec is None:
            self._spec = ModelSpec.from_config(await self.model_config(), self.config.version)
        return self._spec

    async def entry_spec(self, kind: OutputKind) -> ModelSpec:
        """The model a request for `kind` goes to (see `EmbeddingClient.entry_spec`)."""
        spec = await self.model_spec()
        name = entry_model_name(spec, self.config.priority, kind) if self.config.entry_routing else spec.name
        if name == spec.name:
            return spec
        if name not in self._entry_specs:
            try:
                entry = ModelSpec.from_config(await self.config_of(name))
            except TritonFleetError:
                entry = spec
            self._entry_specs[name] = entry if entry.embedding_dim == spec.embedding_dim else spec
        return self._entry_specs[name]

    # -- inference --------------------------------------------------------------------------------------------------
    async def embed(self, sequences: Sequence[str], ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean-pooled embeddings, float32 [N, D], in input order (see `EmbeddingClient.embed`)."""
        texts = core.normalize_sequences(sequences, self.config.validate, ids)
        spec = await self.entry_spec("EMBEDDING")
        call = core.plan_call(texts, spec.max_batch_size, spec.execution_token_budget)
        return core.assemble_embeddings(spec, call, await self._run_batches(spec, call, "EMBEDDING"))

    async def embed_residues(self, sequences: Sequence[str], ids: Sequence[str] | None = None) -> list[np.ndarray]:
        """Per-residue embeddings: one float32 [L_i, D] array per sequence."""
        texts = core.normalize_sequences(sequences, self.config.validate, ids)
        spec = await self.entry_spec("RESIDUE_EMBEDDINGS")
        call = core.plan_call(texts, spec.max_batch_size, spec.execution_token_budget)
        return core.assemble_residues(call, await self._run_batches(spec, call, "RESIDUE_EMBEDDINGS"))

    async def _run_batches(self, spec: ModelSpec, call: core.PreparedCall, kind: OutputKind) -> list[np.ndarray]:
        output = spec.output_name(kind)
        semaphore = self._limiter()

        async def run(batch: core.Batch) -> np.ndarray:
            arrays = core.build_input_arrays(spec, core.batch_texts(call, batch))
            operation = f"infer {spec.name}, {batch.describe(len(call.batches))}"
            async with semaphore:
                deadline = Deadline.after(self.config.deadline_s)
                answer = await self._call(
                    operation,
                    lambda t: t.infer(spec.name, spec.version, arrays, [output], time_left(deadline)),
                    deadline,
                )
            return answer[output]

        if len(call.batches) == 1:
            return [await run(call.batches[0])]
        tasks = [asyncio.ensure_future(run(batch)) for batch in call.batches]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    # -- plumbing ---------------------------------------------------------------------------------------------------
    async def _call(
        self, operation: str, function: Callable[[AsyncTransport], Awaitable[T]], deadline: Deadline | None = None
    ) -> T:
        return await call_with_retry_async(
            lambda: function(self._transport()),
            self.config.retry,
            f"{operation} at {self.config.protocol}://{self.config.url}",
            deadline,
        )

    async def _probe(self, function: Callable[[AsyncTransport], Awaitable[bool]]) -> bool:
        try:
            return bool(await function(self._transport()))
        except Exception as error:
            if classify_exception(error, "probe") is None:
                raise
            return False

    def _transport(self) -> AsyncTransport:
        if self._transport_instance is None:
            if self._closed:
                raise TritonFleetError("the client is closed")
            self._transport_instance = AsyncTransport(self.config)
        return self._transport_instance

    def _limiter(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.max_in_flight)
        return self._semaphore

    async def close(self) -> None:
        """Closes the connection; the client cannot be used afterwards."""
        self._closed = True
        transport, self._transport_instance = self._transport_instance, None
        if transport is not None:
            await transport.close()

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
