"""Thin adapters over tritonclient's four clients (HTTP/gRPC x sync/asyncio) with one interface.

Each adapter takes numpy arrays keyed by tensor name and returns numpy arrays keyed by output name; everything
protocol-specific (binary tensors on HTTP, gRPC's JSON metadata, where the timeout goes) lives here and only here.
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

from tritonfleet.client.config import ClientConfig


def _infer_inputs(module: Any, arrays: Mapping[str, np.ndarray], binary: bool) -> list[Any]:
    inputs = []
    for name, array in arrays.items():
        infer_input = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if binary:
            infer_input.set_data_from_numpy(array, binary_data=True)
        else:
            infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def _http_outputs(names: Sequence[str]) -> list[http_client.InferRequestedOutput]:
    return [http_client.InferRequestedOutput(name, binary_data=True) for name in names]


def _grpc_outputs(names: Sequence[str]) -> list[grpc_client.InferRequestedOutput]:
    return [grpc_client.InferRequestedOutput(name) for name in names]


def _as_arrays(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in names}


class HttpTransport:
    """tritonclient.http (gevent-based; one instance per thread)."""

    def __init__(self, config: ClientConfig) -> None:
        self._client = http_client.InferenceServerClient(
            config.url, connection_timeout=config.timeout_s, network_timeout=config.timeout_s
        )

    def server_live(self) -> bool:
        return self._client.is_server_live()

    def server_ready(self) -> bool:
        return self._client.is_server_ready()

    def model_ready(self, model: str, version: str) -> bool:
        return self._client.is_model_ready(model, version)

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return self._client.get_model_metadata(model, version)

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        return self._client.get_model_config(model, version)

    def infer(
        self, model: str, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = self._client.infer(
            model,
            _infer_inputs(http_client, arrays, binary=True),
            model_version=version,
            outputs=_http_outputs(outputs),
        )
        return _as_arrays(result, outputs)

    def close(self) -> None:
        self._client.close()


class GrpcTransport:
    """tritonclient.grpc; `timeout_s` becomes each call's deadline."""

    def __init__(self, config: ClientConfig) -> None:
        self._client = grpc_client.InferenceServerClient(config.url)
        self._timeout_s = config.timeout_s

    def server_live(self) -> bool:
        return self._client.is_server_live(client_timeout=self._timeout_s)

    def server_ready(self) -> bool:
        return self._client.is_server_ready(client_timeout=self._timeout_s)

    def model_ready(self, model: str, version: str) -> bool:
        return self._client.is_model_ready(model, version, client_timeout=self._timeout_s)

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return self._client.get_model_metadata(model, version, as_json=True, client_timeout=self._timeout_s)

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        return self._client.get_model_config(model, version, as_json=True, client_timeout=self._timeout_s)

    def infer(
        self, model: str, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = self._client.infer(
            model,
            _infer_inputs(grpc_client, arrays, binary=False),
            model_version=version,
            outputs=_grpc_outputs(outputs),
            client_timeout=self._timeout_s,
        )
        return _as_arrays(result, outputs)

    def close(self) -> None:
        self._client.close()


class AsyncHttpTransport:
    """tritonclient.http.aio (aiohttp); must be created inside a running event loop."""

    def __init__(self, config: ClientConfig) -> None:
        self._client = http_aio_client.InferenceServerClient(
            config.url, conn_limit=config.max_in_flight, conn_timeout=config.timeout_s
        )

    async def server_live(self) -> bool:
        return await self._client.is_server_live()

    async def server_ready(self) -> bool:
        return await self._client.is_server_ready()

    async def model_ready(self, model: str, version: str) -> bool:
        return await self._client.is_model_ready(model, version)

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return await self._client.get_model_metadata(model, version)

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        return await self._client.get_model_config(model, version)

    async def infer(
        self, model: str, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = await self._client.infer(
            model,
            _infer_inputs(http_client, arrays, binary=True),
            model_version=version,
            outputs=_http_outputs(outputs),
        )
        return _as_arrays(result, outputs)

    async def close(self) -> None:
        await self._client.close()


class AsyncGrpcTransport:
    """tritonclient.grpc.aio; must be created inside a running event loop."""

    def __init__(self, config: ClientConfig) -> None:
        self._client = grpc_aio_client.InferenceServerClient(config.url)
        self._timeout_s = config.timeout_s

    async def server_live(self) -> bool:
        return await self._client.is_server_live(client_timeout=self._timeout_s)

    async def server_ready(self) -> bool:
        return await self._client.is_server_ready(client_timeout=self._timeout_s)

    async def model_ready(self, model: str, version: str) -> bool:
        return await self._client.is_model_ready(model, version, client_timeout=self._timeout_s)

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return await self._client.get_model_metadata(model, version, as_json=True, client_timeout=self._timeout_s)

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        return await self._client.get_model_config(model, version, as_json=True, client_timeout=self._timeout_s)

    async def infer(
        self, model: str, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = await self._client.infer(
            model,
            _infer_inputs(grpc_client, arrays, binary=False),
            model_version=version,
            outputs=_grpc_outputs(outputs),
            client_timeout=self._timeout_s,
        )
        return _as_arrays(result, outputs)

    async def close(self) -> None:
        await self._client.close()


SYNC_TRANSPORTS = {"http": HttpTransport, "grpc": GrpcTransport}
ASYNC_TRANSPORTS = {"http": AsyncHttpTransport, "grpc": AsyncGrpcTransport}
