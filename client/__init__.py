"""tritonfleet's thin client for the ESM-2 models served by Triton: HTTP or gRPC, sync or asyncio.

    from tritonfleet.client import ClientConfig, EmbeddingClient
    with EmbeddingClient(ClientConfig(url="127.0.0.1:8000", protocol="http")) as client:
        vectors = client.embed(["MKTAYIAKQRQISFVKSHFSRQ"])

The asyncio twin is `client.AsyncEmbeddingClient`; the command line is `python -m client --help`.
"""

from tritonfleet.client.aio import AsyncEmbeddingClient
from tritonfleet.client.config import ClientConfig, RetryPolicy
from tritonfleet.client.embedding_client import EmbeddingClient
from tritonfleet.client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    InvalidSequenceError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerCallError,
    ServerError,
    ServerUnavailableError,
    TritonFleetError,
    UnsupportedModelError,
)
from tritonfleet.client.model import ModelSpec
from tritonfleet.contract.priorities import PRIORITY_CLASSES, PriorityClass

__all__ = [
    "AsyncEmbeddingClient",
    "ClientConfig",
    "DeadlineExceededError",
    "EmbeddingClient",
    "InvalidRequestError",
    "InvalidSequenceError",
    "ModelNotFoundError",
    "ModelSpec",
    "PRIORITY_CLASSES",
    "PriorityClass",
    "RequestTimeoutError",
    "RetryPolicy",
    "ServerCallError",
    "ServerError",
    "ServerUnavailableError",
    "TritonFleetError",
    "UnsupportedModelError",
]
