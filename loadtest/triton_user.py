"""Locust users for Triton on `tritonclient`, in the style of locust's contrib modules: a client wrapper + its User.

`TritonLocustClient` wraps `tritonclient.http` or `tritonclient.grpc`, times each call with `time.perf_counter`
(true latency, not Locust's bucketed one) and fires Locust's `request` event. Tensors are sent as binary data.
Rejections (HTTP 503 / gRPC UNAVAILABLE, e.g. "Exceeds maximum queue size") are fired under the request name
`<name> REJECTED`, and requests that ran out of time (Triton's "Request timeout expired": a queue budget or the
request's deadline; or the client's call deadline) under `<name> EXPIRED`, so both are counted apart from errors.
A user with a `priority` sends Triton's priority level of that class and names its requests `<model> <class>`.

Import locust before this module (locustfiles do) so gevent monkey-patches first; for gRPC call
`enable_grpc_gevent()` before the first channel is created (TritonGrpcUser does it on import of the class).
"""

from __future__ import annotations

from locust import User

import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from tritonfleet.client.transport import infer_inputs, request_options, requested_outputs
from tritonfleet.contract.command_line import split_url, warn_deprecated
from tritonfleet.contract.esm2.pipeline import ESM2
from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS
from tritonfleet.contract.model_config import config_from_json
from tritonfleet.contract.pipeline import Purpose
from tritonfleet.contract.priorities import priority_level
from tritonfleet.loadtest.workload import ModelTarget, PreparedRequest, prepare_request, refusal_kind

_DEPRECATION_SHOWN: list[bool] = []


def grpc_url(options: Any) -> str | None:
    """HOST:PORT of the gRPC users: `--url grpc://HOST:PORT` (or the deprecated `--triton-grpc-url HOST:PORT`)."""
    old = getattr(options, "triton_grpc_url", "")
    if old:
        if not _DEPRECATION_SHOWN:
            _DEPRECATION_SHOWN.append(True)
            warn_deprecated("--triton-grpc-url", "--url grpc://HOST:PORT")
        return old.split("://", 1)[-1]
    url = getattr(options, "url", None)
    return split_url(url)[1] if url else None


REJECTED_SUFFIX = " REJECTED"
EXPIRED_SUFFIX = " EXPIRED"
REFUSAL_SUFFIXES = {"rejected": REJECTED_SUFFIX, "expired": EXPIRED_SUFFIX}
# Requests sent and not yet answered, by traffic class ("" without one): anything left here when a run ends never got
# an answer (the locustfile reports it; Locust's greenlets share one thread, so a Counter is safe).
IN_FLIGHT: Counter[str] = Counter()
_grpc_gevent_enabled = False


def enable_grpc_gevent() -> None:
    """Make grpcio cooperate with gevent (without it gRPC users hang); idempotent."""
    global _grpc_gevent_enabled
    if not _grpc_gevent_enabled:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _grpc_gevent_enabled = True


_USER_NUMBERS: defaultdict[str, Iterator[int]] = defaultdict(itertools.count)
_GOLDEN_FRACTION = (5**0.5 - 1) / 2


def pool_offset(user_number: int, pool_size: int, batch: int = 1) -> int:
    """Where user `user_number` of a class starts in the shared pool: spread by golden-ratio steps (any number of
    users lands far apart) on a multiple of `batch`. Deterministic, so two runs of a scenario send the same requests
    (a length-sorted bulk pool makes the start decide each user's sequence lengths)."""
    slots = max(1, pool_size // max(1, batch))
    return int(slots * ((user_number * _GOLDEN_FRACTION) % 1.0)) * max(1, batch) % max(1, pool_size)


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
        """The model's inputs/outputs from the server (its configuration); their roles from its pipeline."""
        answer = self.client.get_model_config(model, **({"as_json": True} if self.protocol == "grpc" else {}))
        return ModelTarget.from_config(config_from_json(answer))

    def infer(
        self,
        target: ModelTarget,
        request: PreparedRequest,
        output_names: Sequence[str],
        name: str | None = None,
        priority: str | None = None,
        deadline_s: float | None = None,
    ) -> Any:
        """One inference; fires a Locust request event (refusals under `<name> REJECTED` / `<name> EXPIRED`).

        `priority`: the traffic class (None sends no level: the model's default applies); `deadline_s`: sent as
        Triton's request timeout (and, on gRPC, as the call deadline). Returns the result, or None on failure.
        """
        request_name = name or target.name
        inputs = infer_inputs(self.protocol, request.inputs)
        outputs = requested_outputs(self.protocol, output_names)
        level = priority_level(priority) if priority else 0
        options = request_options(self.protocol, level, deadline_s, self.timeout_s)
        start = time.perf_counter()
        result, exception, response_length = None, None, 0
        IN_FLIGHT[priority or ""] += 1
        try:
            result = self.client.infer(target.name, inputs, outputs=outputs, **options)
            response_length = sum(result.as_numpy(out).nbytes for out in output_names)
        except Exception as error:  # noqa: BLE001 - every failure is reported to Locust, none is swallowed silently
            exception = error
        IN_FLIGHT[priority or ""] -= 1  # not when Locust kills the user mid-request: that one stays unanswered
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        kind = refusal_kind(exception) if exception is not None else None
        if kind is not None:
            request_name += REFUSAL_SUFFIXES[kind]
        self.request_event.fire(
            request_type=self.protocol.upper() if self.protocol == "http" else "gRPC",
            name=request_name,
            response_time=elapsed_ms,
            response_length=response_length,
            exception=exception,
            context={
                "sequences": request.sequences,
                "residues": request.residues,
                "class": priority,
                "refusal": kind,
            },
        )
        return result

    def close(self) -> None:
        self.client.close()


class TritonUser(User):
    """Abstract Triton user: set `protocol`; each task sends `batch` sequences from the shared pool to `model`.

    The options (model, outputs, sequence pool, timeout) come from the locustfile's environment; see
    loadtest/locustfile.py. With a `priority` ("interactive" or "bulk") requests carry that class's level and are
    named `<model> <priority>`, and `deadline_s` (if set) travels as Triton's request timeout.
    """

    abstract = True
    protocol: ClassVar[str] = "http"
    model: ClassVar[str] = ESM2.entry(Purpose.DEFAULT_ENTRY).name  # the locustfile sets its pipeline's
    outputs: ClassVar[str] = "embedding"
    sequences: ClassVar[Sequence[str]] = ()
    buckets: ClassVar[Sequence[int]] = DEFAULT_BUCKETS
    batch: ClassVar[int] = 1
    priority: ClassVar[str | None] = None
    deadline_s: ClassVar[float | None] = None
    timeout_s: ClassVar[float] = 60.0

    def __init__(self, environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        url = self.host if self.protocol == "http" else grpc_url(options) or self.host
        self.triton = TritonLocustClient(url, self.protocol, environment.events.request, self.timeout_s)
        self.target = self.triton.model_target(self.model)
        self.output_names = self.target.output_names(self.outputs)
        self.request_name = f"{self.target.name} {self.priority}" if self.priority else self.target.name
        offset = pool_offset(next(_USER_NUMBERS[type(self).__name__]), len(self.sequences), self.batch)
        self._sequence_cycle = itertools.islice(itertools.cycle(self.sequences), offset, None)

    def embed_next_sequence(self) -> None:
        """Sends the next `batch` sequences of the pool: one request, or several of the model's `max_batch_size`
        when the serving plan caps executions below `batch` (as the project's client splits its calls)."""
        sequences = list(itertools.islice(self._sequence_cycle, self.batch))
        step = min(len(sequences), self.target.max_batch_size) if self.target.max_batch_size > 0 else len(sequences)
        for start in range(0, len(sequences), max(1, step)):
            request = prepare_request(self.target, sequences[start : start + step], self.buckets)
            name, priority = self.request_name, self.priority
            self.triton.infer(self.target, request, self.output_names, name, priority, self.deadline_s)

    def on_stop(self) -> None:
        self.triton.close()


class TritonGrpcUser(TritonUser):
    """Triton user on gRPC; gevent support for grpcio is enabled when the class is defined."""

    abstract = True
    protocol = "grpc"


enable_grpc_gevent()
