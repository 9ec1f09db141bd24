"""Thin adapters over tritonclient's four clients (HTTP/gRPC x sync/asyncio) with one interface.

Each adapter takes numpy arrays keyed by tensor name and returns numpy arrays keyed by output name; everything
protocol-specific (binary tensors on HTTP, gRPC's JSON metadata, where the timeout goes) lives here and only here.
`infer_inputs` and `requested_outputs` are the one place a tritonclient request is built; the load tools use them too.
Timeouts: HTTP sync applies `timeout_s` to connecting and to every socket read/write; HTTP asyncio to the whole
request; gRPC to the whole call (deadline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.grpc.aio as grpc_aio_client
import tritonclient.http as http_client
import tritonclient.http.aio as http_aio_client
from tritonclient.utils import np_to_triton_dtype

from tritonfleet.client.config import ClientConfig, Protocol

# The asyncio clients take the same InferInput / InferRequestedOutput classes as their sync twins.
_REQUEST_MODULES: dict[str, Any] = {"http": http_client, "grpc": grpc_client}


def infer_inputs(protocol: Protocol, arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """tritonclient `InferInput`s carrying numpy arrays keyed by input name (binary tensors on HTTP).

    The Triton data type comes from the array's dtype (object arrays of bytes are BYTES).
    """
    module = _REQUEST_MODULES[protocol]
    inputs = []
    for name, array in arrays.items():
        infer_input = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        infer_input.set_data_from_numpy(array)  # HTTP defaults to binary data
        inputs.append(infer_input)
    return inputs


def requested_outputs(protocol: Protocol, names: Sequence[str]) -> list[Any]:
    """tritonclient `InferRequestedOutput`s for the named outputs (binary tensors on HTTP)."""
    module = _REQUEST_MODULES[protocol]
    return [module.InferRequestedOutput(name) for name in names]  # HTTP defaults to binary data


def output_arrays(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named outputs of a tritonclient `InferResult` as numpy arrays."""
    return {name: result.as_numpy(name) for name in names}


class _ProtocolCalls:
    """The keyword arguments that differ between tritonclient's HTTP and gRPC clients."""

    def __init__(self, config: ClientConfig) -> None:
        self.protocol = config.protocol
        grpc = config.protocol == "grpc"
        self.deadline: dict[str, Any] = {"client_timeout": config.timeout_s} if grpc else {}
        self.answers: dict[str, Any] = {"as_json": True, **self.deadline} if grpc else {}

    def infer_arguments(self, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        return {
            "inputs": infer_inputs(self.protocol, arrays),
            "model_version": version,
            "outputs": requested_outputs(self.protocol, outputs),
            **self.deadline,
        }


class Transport:
    """tritonclient.http (gevent-based; one instance per thread) or tritonclient.grpc."""

    def __init__(self, config: ClientConfig) -> None:
        self._calls = _ProtocolCalls(config)
        if config.protocol == "http":
            self._client = http_client.InferenceServerClient(
                config.url, connection_timeout=config.timeout_s, network_timeout=config.timeout_s
            )
        else:
            self._client = grpc_client.InferenceServerClient(config.url)

    def server_live(self) -> bool:
        return self._client.is_server_live(**self._calls.deadline)

    def server_ready(self) -> bool:
        return self._client.is_server_ready(**self._calls.deadline)

    def model_ready(self, model: str, version: str) -> bool:
        return self._client.is_model_ready(model, version, **self._calls.deadline)

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return self._client.get_model_metadata(model, version, **self._calls.answers)

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        return self._client.get_model_config(model, version, **self._calls.answers)

    def infer(
        self, model: str, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = self._client.infer(model, **self._calls.infer_arguments(version, arrays, outputs))
        return output_arrays(result, outputs)

    def close(self) -> None:
        self._client.close()


class AsyncTransport:
    """tritonclient.http.aio (aiohttp) or tritonclient.grpc.aio; must be created inside a running event loop."""

    def __init__(self, config: ClientConfig) -> None:
        self._calls = _ProtocolCalls(config)
        if config.protocol == "http":
            self._client = http_aio_client.InferenceServerClient(
                config.url, conn_limit=config.max_in_flight, conn_timeout=config.timeout_s
            )
        else:
            self._client = grpc_aio_client.InferenceServerClient(config.url)

    async def server_live(self) -> bool:
        return await self._client.is_server_live(**self._calls.deadline)

    async def server_ready(self) -> bool:
        return await self._client.is_server_ready(**self._calls.deadline)

    async def model_ready(self, model: str, version: str) -> bool:
        return await self._client.is_model_ready(model, version, **self._calls.deadline)

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return await self._client.get_model_metadata(model, version, **self._calls.answers)

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        return await self._client.get_model_config(model, version, **self._calls.answers)

    async def infer(
        self, model: str, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = await self._client.infer(model, **self._calls.infer_arguments(version, arrays, outputs))
        return output_arrays(result, outputs)

    async def close(self) -> None:
        await self._client.close()
