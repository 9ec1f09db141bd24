"""Typed client configuration: where the server is, which model to call, priority, deadlines, concurrency and
retries."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tritonfleet.contract.esm2.pipeline import ESM2
from tritonfleet.contract.pipeline import Purpose
from tritonfleet.contract.priorities import PRIORITY_CLASSES, PriorityClass

Protocol = Literal["http", "grpc"]
PROTOCOLS: tuple[str, ...] = ("http", "grpc")
DEFAULT_PORTS: dict[str, int] = {"http": 8000, "grpc": 8001}
# The model a client calls unless told otherwise: the default entry of the built-in pipeline (ESM-2's `esm2`).
DEFAULT_MODEL = ESM2.entry(Purpose.DEFAULT_ENTRY).name


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient failures (HTTP 503 / gRPC UNAVAILABLE, lost connections).

    Attempt k (k = 1, 2, ...) that fails transiently is followed by a sleep drawn uniformly from
    [0, min(max_delay_s, initial_delay_s * multiplier ** (k - 1))]. Retrying stops after `max_attempts` attempts or
    once `max_elapsed_s` has passed since the first attempt, whichever comes first.

    Attributes:
        max_attempts: total attempts per request, the first one included (1 disables retries).
        initial_delay_s: backoff ceiling after the first failure.
        multiplier: growth of the ceiling per failure.
        max_delay_s: cap on one sleep.
        max_elapsed_s: overall budget for one request, attempts and sleeps together.
        retry_on_timeout: also retry requests that hit the client timeout (off by default: a slow server is
            usually an overloaded one).
    """

    max_attempts: int = 8  # with full jitter, ~8 s of backoff on average: covers a model reload (~3 s)
    initial_delay_s: float = 0.2
    multiplier: float = 2.0
    max_delay_s: float = 5.0
    max_elapsed_s: float = 60.0
    retry_on_timeout: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0 or self.max_elapsed_s < 0:
            raise ValueError("retry delays and budget must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    def backoff_ceiling(self, failures: int) -> float:
        """The largest sleep after `failures` consecutive transient failures (failures >= 1)."""
        return min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (failures - 1))

    def backoff_delay(self, failures: int, rng: random.Random | None = None) -> float:
        """A full-jitter sleep after `failures` consecutive transient failures."""
        return (rng or random).uniform(0.0, self.backoff_ceiling(failures))


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the server and call one model.

    Attributes:
        url: "host:port" without scheme (HTTP default port 8000, gRPC 8001).
        protocol: "http" or "grpc".
        model: `esm2` (the ensemble, fed sequences) or a raw variant (`esm2_onnx`, `esm2_torchscript`) fed token ids.
        version: model version; "" lets the server choose.
        timeout_s: client-side limit for every call (connect + send + server time + receive).
        max_in_flight: the most requests one client has outstanding at a time.
        retry: the retry policy for transient failures.
        validate: check sequences locally before sending, so errors name the offending index.
        priority: "interactive" (served first; Triton level 1) or "bulk" (level 2: large jobs, e.g. embed-fasta).
        deadline_s: time one request may take, retries included; sent as Triton's request timeout (the remaining
            time, microseconds), so a request that cannot start in time is refused (`DeadlineExceededError`)
            instead of computed late. None: no deadline (the server's queue policy and `timeout_s` still apply).
        entry_routing: follow the entry models the configured model advertises, as its pipeline's routes say
            (`tritonfleet.contract.pipeline.Route`; ESM-2: config parameters `interactive_embedding_model`,
            `embedding_model` of `esm2`): `embed()` goes to the EMBEDDING-only model of its priority class (the
            interactive entry, `esm2_interactive`: a network copy bulk traffic cannot occupy; the bulk entry,
            `esm2_embedding`; both answer repeats from Triton's response cache); `embed_residues()` stays on `model`
            (the per-residue entry). False: every request goes to `model`.
        tls: connect with TLS (HTTPS, or gRPC over TLS), e.g. to a fleet behind an ingress. A url given as
            `https://host:port` sets it (and `http://host:port` is accepted as plain); the scheme is stripped.
        ca_file: PEM file of the certificate authorities that verify the server (default: the system's).
        headers: extra request headers sent with every call (e.g. `{"authorization": "Bearer ..."}`), kept as
            `(name, value)` pairs; gRPC sends them as metadata, so names must be lower case there.
        grpc_channel_args: extra gRPC channel arguments (`(name, value)` pairs, e.g.
            `("grpc.ssl_target_name_override", "fleet.example")`), added to tritonclient's defaults (unlimited
            message sizes, keepalive), which they override by name.
    """

    url: str = "127.0.0.1:8000"
    protocol: Protocol = "http"
    model: str = DEFAULT_MODEL
    version: str = ""
    timeout_s: float = 60.0
    max_in_flight: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    validate: bool = True
    priority: PriorityClass = "interactive"
    deadline_s: float | None = None
    entry_routing: bool = True
    tls: bool = False
    ca_file: str | None = None
    headers: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    grpc_channel_args: tuple[tuple[str, str | int], ...] = ()

    def __post_init__(self) -> None:
        scheme, separator, rest = self.url.partition("://")
        if separator and scheme.lower() in ("http", "https"):
            object.__setattr__(self, "url", rest.rstrip("/"))
            if scheme.lower() == "https":
                object.__setattr__(self, "tls", True)
        pairs = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        object.__setattr__(self, "headers", tuple((str(name), str(value)) for name, value in pairs))
        object.__setattr__(self, "grpc_channel_args", tuple(tuple(pair) for pair in self.grpc_channel_args))
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file needs tls (an https:// url or tls=True)")
        for pair in self.grpc_channel_args:
            if len(pair) != 2 or not isinstance(pair[0], str):
                raise ValueError(f"grpc_channel_args must be (name, value) pairs, got {pair!r}")
        if self.priority not in PRIORITY_CLASSES:
            raise ValueError(f"priority must be one of {PRIORITY_CLASSES}, got {self.priority!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 (or None), got {self.deadline_s}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if "://" in self.url:
            raise ValueError(f"url must be host:port, https://host:port or http://host:port, got {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not isinstance(self.version, str):
            raise ValueError(f"version must be a string ('' for the server's choice), got {self.version!r}")
