"""Typed client errors, and the one place where tritonclient / transport exceptions are classified.

Classification (what retries): HTTP 429/502/503/504, gRPC UNAVAILABLE/RESOURCE_EXHAUSTED and lost or refused
connections are transient (`ServerUnavailableError`); so are the answers of a model that is being reloaded or
repaired (Triton 24.10 says "has no available versions" with 404/NOT_FOUND while a version is swapped, and
"Stub process ... is not healthy" with 500/INTERNAL after its python stub died, until the supervisor reloads it).
INVALID_ARG / HTTP 400 never is (`InvalidRequestError`). A request refused because its queue wait passed its timeout
("Request timeout expired", UNAVAILABLE) is transient too; once the client's own deadline has passed, the retry
loop turns it (and client timeouts) into `DeadlineExceededError`.
"""

from __future__ import annotations

import asyncio
import socket

# aiohttp and geventhttpclient carry tritonclient's HTTP clients (asyncio and sync); both come with tritonclient[http].
from aiohttp import ClientConnectionError, ClientPayloadError
from geventhttpclient.response import HTTPParseError
from tritonclient.utils import InferenceServerException

_TRANSIENT_HTTP_STATUSES = frozenset({"429", "502", "503", "504"})
_TRANSIENT_GRPC_STATUSES = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"})
_INVALID_STATUSES = frozenset({"400", "StatusCode.INVALID_ARGUMENT"})
_NOT_FOUND_STATUSES = frozenset({"404", "StatusCode.NOT_FOUND"})
_TIMEOUT_STATUSES = frozenset({"StatusCode.DEADLINE_EXCEEDED"})
# Messages of a model in repair or reload: inference is idempotent, so these are retried like a 503.
_MODEL_REPAIR_MARKERS = ("has no available versions", "is not healthy", "is not ready")
# Triton's answer (UNAVAILABLE) to a request that waited in a model's queue longer than its timeout; a python BLS
# model relaying it may turn the status into INTERNAL, so the message decides.
QUEUE_TIMEOUT_MESSAGE = "Request timeout expired"
# gRPC stream cut by a replica that died (or was cut by the balancer) after its answer began: the balancer cannot
# replay it (HAProxy replays only requests with no response yet), so the client does. Inference is idempotent.
_BROKEN_STREAM_MARKERS = ("Stream removed", "Socket closed", "Connection reset")
_TRANSIENT_MARKERS = (*_MODEL_REPAIR_MARKERS, QUEUE_TIMEOUT_MESSAGE, *_BROKEN_STREAM_MARKERS)


class TritonFleetError(Exception):
    """Base of every error this client raises."""


class InvalidSequenceError(TritonFleetError, ValueError):
    """A sequence the client refuses to send (checked locally with the served tokenizer's rules).

    Attributes:
        index: position of the sequence in the caller's input.
        record_id: FASTA id (or None when the caller passed bare strings).
        reason: what is wrong, e.g. "invalid residue 'J' at position 5".
    """

    def __init__(self, index: int, reason: str, record_id: str | None = None) -> None:
        self.index = index
        self.record_id = record_id
        self.reason = reason
        where = f"sequence {index}" + (f" (id {record_id!r})" if record_id is not None else "")
        super().__init__(f"{where}: {reason}")


class ServerCallError(TritonFleetError):
    """A call the server (or the connection to it) failed.

    Attributes:
        operation: what was attempted, e.g. "infer esm2 (sequences 64..127)".
        server_message: the server's own message, or the transport error text.
        status: HTTP status or gRPC status code as text, when there is one.
    """

    def __init__(self, operation: str, server_message: str, status: str | None = None) -> None:
        self.operation = operation
        self.server_message = server_message
        self.status = status
        status_text = f" [{status}]" if status else ""
        super().__init__(f"{operation} failed{status_text}: {server_message}")


class InvalidRequestError(ServerCallError):
    """The server rejected the request as invalid (INVALID_ARG / HTTP 400); retrying cannot help."""


class ModelNotFoundError(ServerCallError):
    """The server does not know the model (or that version of it)."""


class UnsupportedModelError(TritonFleetError):
    """The model's inputs/outputs do not follow the ESM-2 tensor contract in docs/design.md."""


class ServerUnavailableError(ServerCallError):
    """The server is down, restarting, or shedding load (HTTP 503 / gRPC UNAVAILABLE / connection refused).

    Attributes:
        attempts: how many attempts were made before giving up (1 when raised by a single attempt).
    """

    def __init__(self, operation: str, server_message: str, status: str | None = None, attempts: int = 1) -> None:
        self.attempts = attempts
        super().__init__(operation, server_message, status)


class RequestTimeoutError(ServerCallError):
    """No answer within the client timeout."""


class DeadlineExceededError(RequestTimeoutError):
    """The request's deadline (`ClientConfig.deadline_s`) passed: refused by the server's queue, cut by the client,
    or left no time for another attempt. Never retried.

    Attributes:
        deadline_s: the deadline that was missed, in seconds.
        attempts: attempts made (0 when the deadline passed before the first could be sent).
    """

    def __init__(
        self, operation: str, deadline_s: float, detail: str, status: str | None = None, attempts: int = 0
    ) -> None:
        self.deadline_s = deadline_s
        self.attempts = attempts
        super().__init__(operation, f"deadline of {deadline_s:g} s exceeded: {detail}", status)


class ServerError(ServerCallError):
    """Any other server-side failure (HTTP 500, gRPC INTERNAL, ...)."""


def classify_exception(error: BaseException, operation: str) -> TritonFleetError | None:
    """Maps a tritonclient / transport exception to a typed client error; None for anything unrecognised."""
    if isinstance(error, TritonFleetError):
        return error
    if isinstance(error, InferenceServerException):
        return _classify_server_exception(error, operation)
    if isinstance(error, TimeoutError | socket.timeout | asyncio.TimeoutError):
        return RequestTimeoutError(operation, _describe(error) or "timed out")
    if isinstance(error, ConnectionError | OSError | HTTPParseError | ClientConnectionError | ClientPayloadError):
        return ServerUnavailableError(operation, f"connection failed: {_describe(error)}")
    return None


def _classify_server_exception(error: InferenceServerException, operation: str) -> TritonFleetError:
    status = error.status()
    message = error.message() or str(error)
    if status not in _INVALID_STATUSES and any(marker in message for marker in _TRANSIENT_MARKERS):
        return ServerUnavailableError(operation, message, status)
    if "unknown model" in message.lower() or status in _NOT_FOUND_STATUSES:
        return ModelNotFoundError(operation, message, status)
    if status in _TRANSIENT_HTTP_STATUSES or status in _TRANSIENT_GRPC_STATUSES:
        return ServerUnavailableError(operation, message, status)
    if status in _INVALID_STATUSES:
        return InvalidRequestError(operation, message, status)
    if status in _TIMEOUT_STATUSES:
        return RequestTimeoutError(operation, message, status)
    return ServerError(operation, message, status)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_connection_failure(error: BaseException) -> bool:
    """A broken or refused connection (the transport's pooled connections should be discarded)."""
    if isinstance(error, TimeoutError | socket.timeout | asyncio.TimeoutError):
        return False
    return isinstance(error, ConnectionError | OSError | HTTPParseError | ClientConnectionError | ClientPayloadError)
