"""Which failures retry, how backoff grows, and when the client gives up (client.errors, client.retry)."""

from __future__ import annotations

import asyncio
import random

import pytest
from tritonclient.utils import InferenceServerException

from tritonfleet.client.config import RetryPolicy
from tritonfleet.client.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    classify_exception,
)
from tritonfleet.client.retry import call_with_retry, call_with_retry_async, is_retryable

FAST = RetryPolicy(max_attempts=4, initial_delay_s=0.001, max_delay_s=0.002, max_elapsed_s=5.0)


@pytest.mark.parametrize(
    ("error", "expected_type", "retryable"),
    [
        (InferenceServerException("Exceeds maximum queue size", status="503"), ServerUnavailableError, True),
        (InferenceServerException("queue full", status="StatusCode.UNAVAILABLE"), ServerUnavailableError, True),
        (InferenceServerException("busy", status="StatusCode.RESOURCE_EXHAUSTED"), ServerUnavailableError, True),
        (InferenceServerException("bad gateway", status="502"), ServerUnavailableError, True),
        (InferenceServerException("invalid residue 'J'", status="400"), InvalidRequestError, False),
        (InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"), InvalidRequestError, False),
        (InferenceServerException("Request for unknown model: 'x'", status="400"), ModelNotFoundError, False),
        (InferenceServerException("no such model", status="StatusCode.NOT_FOUND"), ModelNotFoundError, False),
        (
            InferenceServerException("Stub process 'esm2_onnx_0_0' is not healthy.", status="500"),
            ServerUnavailableError,
            True,
        ),
        (
            InferenceServerException("Request for model 'esm2_onnx' has no available versions", status="404"),
            ServerUnavailableError,
            True,
        ),
        (
            InferenceServerException("model 'esm2' is not ready", status="StatusCode.UNAVAILABLE"),
            ServerUnavailableError,
            True,
        ),
        (
            InferenceServerException(
                "Stream removed (Data frame with END_STREAM flag received)", status="StatusCode.UNKNOWN"
            ),
            ServerUnavailableError,
            True,
        ),
        (InferenceServerException("Socket closed", status="StatusCode.UNAVAILABLE"), ServerUnavailableError, True),
        (InferenceServerException("internal failure", status="500"), ServerError, False),
        (InferenceServerException("late", status="StatusCode.DEADLINE_EXCEEDED"), RequestTimeoutError, False),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError, True),
        (ConnectionResetError(104, "reset"), ServerUnavailableError, True),
        (TimeoutError("timed out"), RequestTimeoutError, False),
    ],
)
def test_classification(error: Exception, expected_type: type, retryable: bool) -> None:
    classified = classify_exception(error, "infer esm2")
    assert type(classified) is expected_type
    assert is_retryable(classified, RetryPolicy()) is retryable
    assert classified.operation == "infer esm2"


def test_timeouts_retry_only_when_the_policy_says_so() -> None:
    timeout = classify_exception(TimeoutError(), "op")
    assert not is_retryable(timeout, RetryPolicy())
    assert is_retryable(timeout, RetryPolicy(retry_on_timeout=True))


def test_unknown_exceptions_are_not_classified() -> None:
    assert classify_exception(KeyError("x"), "op") is None


def test_typed_errors_carry_the_server_message_and_status() -> None:
    error = classify_exception(InferenceServerException("invalid residue 'J' at position 3", status="400"), "infer")
    assert str(error) == "infer failed [400]: invalid residue 'J' at position 3"
    assert error.server_message == "invalid residue 'J' at position 3"


class _FailingThenSucceeding:
    """A callable that raises the given errors in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_failures_are_retried_until_success() -> None:
    call = _FailingThenSucceeding(
        InferenceServerException("full", status="503"), ConnectionRefusedError(111, "refused")
    )
    assert call_with_retry(call, FAST, "op") == "ok"
    assert call.calls == 3


def test_invalid_requests_are_never_retried() -> None:
    call = _FailingThenSucceeding(InferenceServerException("invalid residue", status="400"))
    with pytest.raises(InvalidRequestError, match="invalid residue"):
        call_with_retry(call, FAST, "op")
    assert call.calls == 1


def test_giving_up_after_max_attempts_says_how_many_attempts_were_made() -> None:
    call = _FailingThenSucceeding(*[InferenceServerException("down", status="StatusCode.UNAVAILABLE")] * 10)
    with pytest.raises(ServerUnavailableError, match=r"gave up after 4 attempt\(s\)") as caught:
        call_with_retry(call, FAST, "op")
    assert caught.value.attempts == 4 and call.calls == 4


def test_the_elapsed_budget_stops_retries_before_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=100, initial_delay_s=0.05, multiplier=1.0, max_elapsed_s=0.0)
    call = _FailingThenSucceeding(*[ConnectionRefusedError()] * 100)
    with pytest.raises(ServerUnavailableError):
        call_with_retry(call, policy, "op")
    assert call.calls == 1


def test_unclassified_exceptions_propagate_unchanged() -> None:
    call = _FailingThenSucceeding(KeyError("bug"))
    with pytest.raises(KeyError):
        call_with_retry(call, FAST, "op")
    assert call.calls == 1


def test_async_twin_retries_the_same_way() -> None:
    call = _FailingThenSucceeding(InferenceServerException("full", status="503"))

    async def attempt() -> str:
        return call()

    assert asyncio.run(call_with_retry_async(attempt, FAST, "op")) == "ok"
    assert call.calls == 2


def test_backoff_ceiling_grows_exponentially_up_to_the_cap_and_jitter_stays_below_it() -> None:
    policy = RetryPolicy(initial_delay_s=0.1, multiplier=2.0, max_delay_s=1.0)
    assert [policy.backoff_ceiling(k) for k in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    rng = random.Random(7)
    delays = [policy.backoff_delay(3, rng) for _ in range(200)]
    assert all(0.0 <= delay <= 0.4 for delay in delays)
    assert len(set(delays)) > 100  # jittered, not a constant


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
