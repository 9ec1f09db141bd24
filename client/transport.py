"""Thin adapters over tritonclient's four clients (HTTP/gRPC x sync/asyncio) with one interface.

Each adapter takes numpy arrays keyed by tensor name and returns numpy arrays keyed by output name; everything
protocol-specific (binary tensors on HTTP, gRPC's JSON metadata, where the timeout goes) lives here and only here.
`infer_inputs`, `requested_outputs` and `request_options` are the one place a tritonclient request is built; the load
tools use them too. Timeouts: HTTP sync applies `timeout_s` to connecting and to every socket read/write; HTTP asyncio
to the whole request; gRPC to the whole call (deadline).

Connections: `connection_options` builds each tritonclient constructor's keyword arguments from one ClientConfig, so
the four clients agree: TLS (`ssl` + the CA file: geventhttpclient's `ssl_options`, aiohttp's `ssl_context`, gRPC's
`root_certificates`), gRPC channel arguments merged over tritonclient's defaults; extra headers go with every call.

Priority and deadline: every inference carries Triton's `priority` level of the configured class and, when the
call has a deadline, Triton's request `timeout` (the time left, in microseconds): each model's queue refuses the
request once it has waited that long. gRPC calls (sync and asyncio) and asyncio HTTP calls are also cut by the
client at the deadline; sync HTTP is bounded by the server's queues and `timeout_s` only (tritonclient.http has
no per-call timeout).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.grpc.aio as grpc_aio_client
import tritonclient.http as http_client
import tritonclient.http.aio as http_aio_client
from tritonclient.utils import np_to_triton_dtype

from tritonfleet.client.config import ClientConfig, Protocol
from tritonfleet.contract.priorities import priority_level

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


def request_options(
    protocol: Protocol, priority_level: int = 0, timeout_s: float | None = None, client_timeout_s: float | None = None
) -> dict[str, Any]:
    """tritonclient `infer` keyword arguments for a request's priority level (0: the model's default level) and
    deadline (`timeout_s` left: Triton's request timeout, at least 1 us; 0 would mean none); gRPC also gets the
    client-side call deadline, the smaller of `client_timeout_s` and `timeout_s`."""
    options: dict[str, Any] = {"priority": priority_level}
    if timeout_s is not None:
        options["timeout"] = max(1, int(timeout_s * 1_000_000))
    if protocol == "grpc":
        limits = [limit for limit in (client_timeout_s, timeout_s) if limit is not None]
        if limits:
            options["client_timeout"] = max(1e-6, min(limits))
    return options


def output_arrays(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named outputs of a tritonclient `InferResult` as numpy arrays."""
    return {name: result.as_numpy(name) for name in names}


# tritonclient.grpc's own channel arguments when none are given (they are replaced, not merged, by channel_args).
_GRPC_DEFAULT_CHANNEL_ARGS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", grpc_client.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpc_client.MAX_GRPC_MESSAGE_SIZE),
)


def grpc_channel_args(config: ClientConfig) -> list[tuple[str, Any]] | None:
    """The channel arguments for tritonclient.grpc: None (its defaults) unless the config adds some; then its
    unlimited message sizes plus the config's pairs, a config pair replacing a default of the same name."""
    if not config.grpc_channel_args:
        return None
    merged = dict(_GRPC_DEFAULT_CHANNEL_ARGS)
    merged.update(dict(config.grpc_channel_args))
    return list(merged.items())


def connection_options(config: ClientConfig, asyncio_client: bool = False) -> dict[str, Any]:
    """Keyword arguments (besides the url) for the tritonclient client the config asks for."""
    if config.protocol == "grpc":
        options: dict[str, Any] = {"channel_args": grpc_channel_args(config)}
        if config.tls:
            options.update(ssl=True, root_certificates=config.ca_file)
        return options
    if asyncio_client:
        options = {"conn_limit": config.max_in_flight, "conn_timeout": config.timeout_s}
        if config.tls:
            options.update(ssl=True, ssl_context=ssl.create_default_context(cafile=config.ca_file))
        return options
    options = {"connection_timeout": config.timeout_s, "network_timeout": config.timeout_s}
    if config.tls:
        options["ssl"] = True
        if config.ca_file is not None:
            options["ssl_options"] = {"ca_certs": config.ca_file}
    return options


class _ProtocolCalls:
    """The keyword arguments that differ between tritonclient's HTTP and gRPC clients."""

    def __init__(self, config: ClientConfig) -> None:
        self.protocol = config.protocol
        self.timeout_s = config.timeout_s
        self.priority_level = priority_level(config.priority)
        grpc = config.protocol == "grpc"
        headers: dict[str, Any] = {"headers": dict(config.headers)} if config.headers else {}
        self.headers = headers
        self.deadline: dict[str, Any] = {"client_timeout": config.timeout_s, **headers} if grpc else dict(headers)
        self.answers: dict[str, Any] = {"as_json": True, **self.deadline} if grpc else dict(headers)

    def infer_arguments(
        self, version: str, arrays: Mapping[str, np.ndarray], outputs: Sequence[str], timeout_s: float | None
    ) -> dict:
        return {
            "inputs": infer_inputs(self.protocol, arrays),
            "model_version": version,
            "outputs": requested_outputs(self.protocol, outputs),
            **request_options(self.protocol, self.priority_level, timeout_s, self.timeout_s),
            **self.headers,
        }


class Transport:
    """tritonclient.http (gevent-based; one instance per thread) or tritonclient.grpc."""

    def __init__(self, config: ClientConfig) -> None:
        self._calls = _ProtocolCalls(config)
        module = http_client if config.protocol == "http" else grpc_client
        self._client = module.InferenceServerClient(config.url, **connection_options(config))

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
        self,
        model: str,
        version: str,
        arrays: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference at the configured priority; `timeout_s`: the time left before the request's deadline."""
        result = self._client.infer(model, **self._calls.infer_arguments(version, arrays, outputs, timeout_s))
        return output_arrays(result, outputs)

    def close(self) -> None:
        self._client.close()


class AsyncTransport:
    """tritonclient.http.aio (aiohttp) or tritonclient.grpc.aio; must be created inside a running event loop."""

    def __init__(self, config: ClientConfig) -> None:
        self._calls = _ProtocolCalls(config)
        module = http_aio_client if config.protocol == "http" else grpc_aio_client
        self._client = module.InferenceServerClient(config.url, **connection_options(config, asyncio_client=True))

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
        self,
        model: str,
        version: str,
        arrays: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference at the configured priority; `timeout_s`: the time left before the request's deadline."""
        call = self._client.infer(model, **self._calls.infer_arguments(version, arrays, outputs, timeout_s))
        if timeout_s is not None and self._calls.protocol == "http":
            call = asyncio.wait_for(call, timeout=max(1e-6, timeout_s))  # gRPC cuts it with client_timeout
        return output_arrays(await call, outputs)

    async def close(self) -> None:
        await self._client.close()
