"""Retries with exponential backoff and jitter: one decision function, a sync loop and an asyncio loop."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tritonfleet.client.config import RetryPolicy
from tritonfleet.client.errors import RequestTimeoutError, ServerUnavailableError, TritonFleetError, classify_exception

T = TypeVar("T")


def is_retryable(error: TritonFleetError, policy: RetryPolicy) -> bool:
    """Whether a classified error may be retried: transient unavailability, and timeouts if the policy says so."""
    if isinstance(error, ServerUnavailableError):
        return True
    return isinstance(error, RequestTimeoutError) and policy.retry_on_timeout


class RetryState:
    """Book-keeping for one request's attempts; `after_failure` says how long to sleep, or raises to give up."""

    def __init__(self, policy: RetryPolicy, operation: str, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.operation = operation
        self.attempts = 0
        self._rng = rng
        self._started = time.monotonic()

    def after_failure(self, raw_error: BaseException) -> float:
        """Classifies a failed attempt; returns the sleep before the next one or raises the typed final error."""
        self.attempts += 1
        error = classify_exception(raw_error, self.operation)
        if error is None:
            raise raw_error
        if not is_retryable(error, self.policy):
            raise error from raw_error
        delay = self.policy.backoff_delay(self.attempts, self._rng)
        elapsed = time.monotonic() - self._started
        if self.attempts >= self.policy.max_attempts or elapsed + delay > self.policy.max_elapsed_s:
            raise _give_up(error, self.attempts, elapsed) from raw_error
        return delay


def _give_up(error: TritonFleetError, attempts: int, elapsed_s: float) -> TritonFleetError:
    if isinstance(error, ServerUnavailableError):
        message = f"{error.server_message} (gave up after {attempts} attempt(s) in {elapsed_s:.1f} s)"
        return ServerUnavailableError(error.operation, message, error.status, attempts=attempts)
    return error


def call_with_retry(call: Callable[[], T], policy: RetryPolicy, operation: str) -> T:
    """Runs `call` until it succeeds, fails permanently, or the retry policy is exhausted."""
    state = RetryState(policy, operation)
    while True:
        try:
            return call()
        except Exception as raw_error:  # noqa: BLE001 - classified (or re-raised) by after_failure
            delay = state.after_failure(raw_error)
        time.sleep(delay)


async def call_with_retry_async(call: Callable[[], Awaitable[T]], policy: RetryPolicy, operation: str) -> T:
    """The asyncio twin of `call_with_retry`."""
    state = RetryState(policy, operation)
    while True:
        try:
            return await call()
        except Exception as raw_error:  # noqa: BLE001 - classified (or re-raised) by after_failure
            delay = state.after_failure(raw_error)
        await asyncio.sleep(delay)
