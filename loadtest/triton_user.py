"""Locust users for Triton on `tritonclient`, in the style of locust's contrib modules: a client wrapper + its User.

`TritonLocustClient` wraps `tritonclient.http` or `tritonclient.grpc`, times each call with `time.perf_counter`
(true latency, not Locust's bucketed one) and fires Locust's `request` event. Tensors are sent as binary data.
Rejections (HTTP 503 / gRPC UNAVAILABLE, e.g. "Exceeds maximum queue size") are fired under the request name
`<model> REJECTED` so they are counted apart from errors.

Import locust before this module (locustfiles do) so gevent monkey-patches first; for gRPC call
`enable_grpc_gevent()` before the first channel is created (TritonGrpcUser does it on import of the class).
"""

from __future__ import annotations

from locust import User

import itertools
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from tritonfleet.client.transport import infer_inputs, requested_outputs
from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS
from tritonfleet.contract.model_config import config_from_json
from tritonfleet.loadtest.workload import ModelTarget, PreparedRequest, is_rejection, prepare_request

REJECTED_SUFFIX = " REJECTED"
_grpc_gevent_enabled = False


def enable_grpc_gevent() -> None:
    """Make grpcio cooperate with gevent (without it gRPC users hang); idempotent."""
    global _grpc_gevent_enabled
    if not _grpc_gevent_enabled:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _grpc_gevent_enabled = True


class TritonLocustClient:
    """tritonclient (HTTP or gRPC) wrapper that reports every inference to Locust."""

    def __init__(self, url: str, protocol: str, request_event: Any, timeout_s: float = 60.0) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
        self.protocol = protocol
        self.request_event = request_event
        self.url = url.removeprefix("http://").removeprefix("https://").removeprefix("grpc://").rstrip("/")
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as triton_http

            self.client = triton_http.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            import tritonclient.grpc as triton_grpc

            self.client = triton_grpc.InferenceServerClient(self.url)

    def model_target(self, model: str) -> ModelTarget:
        """The model's inputs/outputs from the server (its configuration)."""
        answer = self.client.get_model_config(model, **({"as_json": True} if self.protocol == "grpc" else {}))
        return ModelTarget.from_config(config_from_json(answer))

    def infer(
        self, target: ModelTarget, request: PreparedRequest, output_names: Sequence[str], name: str | None = None
    ) -> Any:
        """One inference; fires a Locust request event (rejections under `<name> REJECTED`). Returns the result."""
        request_name = name or target.name
        inputs = infer_inputs(self.protocol, request.inputs)
        outputs = requested_outputs(self.protocol, output_names)
        start = time.perf_counter()
        result, exception, response_length = None, None, 0
        try:
            if self.protocol == "http":
                result = self.client.infer(target.name, inputs, outputs=outputs, timeout=int(self.timeout_s * 1e6))
            else:
                result = self.client.infer(target.name, inputs, outputs=outputs, client_timeout=self.timeout_s)
            response_length = sum(result.as_numpy(out).nbytes for out in output_names)
        except Exception as error:  # noqa: BLE001 - every failure is reported to Locust, none is swallowed silently
            exception = error
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        if exception is not None and is_rejection(exception):
            request_name += REJECTED_SUFFIX
        self.request_event.fire(
            request_type=self.protocol.upper() if self.protocol == "http" else "gRPC",
            name=request_name,
            response_time=elapsed_ms,
            response_length=response_length,
            exception=exception,
            context={"sequences": request.sequences, "residues": request.residues},
        )
        return result

    def close(self) -> None:
        self.client.close()


class TritonUser(User):
    """Abstract Triton user: set `protocol`; each task sends one sequence from the shared pool to `model`.

    The options (model, outputs, sequence pool) come from the locustfile's environment; see loadtest/locustfile.py.
    """

    abstract = True
    protocol: ClassVar[str] = "http"
    model: ClassVar[str] = "esm2"
    outputs: ClassVar[str] = "embedding"
    sequences: ClassVar[Sequence[str]] = ()
    buckets: ClassVar[Sequence[int]] = DEFAULT_BUCKETS

    def __init__(self, environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        url = self.host if self.protocol == "http" else getattr(options, "triton_grpc_url", None) or self.host
        self.triton = TritonLocustClient(url, self.protocol, environment.events.request)
        self.target = self.triton.model_target(self.model)
        self.output_names = self.target.output_names(self.outputs)
        offset = hash((id(self), self.protocol)) % max(1, len(self.sequences))
        self._sequence_cycle = itertools.islice(itertools.cycle(self.sequences), offset, None)

    def embed_next_sequence(self) -> None:
        sequence = next(self._sequence_cycle)
        request = prepare_request(self.target, [sequence], self.buckets)
        self.triton.infer(self.target, request, self.output_names)

    def on_stop(self) -> None:
        self.triton.close()


class TritonGrpcUser(TritonUser):
    """Triton user on gRPC; gevent support for grpcio is enabled when the class is defined."""

    abstract = True
    protocol = "grpc"


enable_grpc_gevent()
