"""Retries with exponential backoff and jitter, bounded by an optional deadline: one decision function, a sync loop
and an asyncio loop.

With a deadline, every attempt is sent with the time that is left (the caller reads `Deadline.remaining()` when it
builds the request), no attempt starts once it has passed, and no backoff sleeps past it: the last attempt's
timeout is whatever remained, and a failure the deadline explains becomes `DeadlineExceededError`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tritonfleet.client.config import RetryPolicy
from tritonfleet.client.errors import (
    DeadlineExceededError,
    RequestTimeoutError,
    ServerUnavailableError,
    TritonFleetError,
    classify_exception,
)

T = TypeVar("T")
Clock = Callable[[], float]
# Less time than this left before the deadline is no time: an attempt that short could not be answered.
MIN_ATTEMPT_S = 0.001


class Deadline:
    """The moment one request must be answered by, retries included (`clock` seconds, monotonic by default)."""

    def __init__(self, seconds: float, clock: Clock = time.monotonic) -> None:
        if not seconds > 0:
            raise ValueError(f"a deadline must be > 0 s, got {seconds}")
        self.seconds = seconds
        self.clock = clock
        self.expires_at = clock() + seconds

    @classmethod
    def after(cls, seconds: float | None, clock: Clock = time.monotonic) -> Deadline | None:
        """A deadline `seconds` from now, or None for no deadline."""
        return None if seconds is None else cls(seconds, clock)

    def remaining(self) -> float:
        """Seconds left (<= 0 once passed)."""
        return self.expires_at - self.clock()


def time_left(deadline: Deadline | None) -> float | None:
    """Seconds left before `deadline` (the next attempt's timeout), or None without one."""
    return None if deadline is None else deadline.remaining()


def is_retryable(error: TritonFleetError, policy: RetryPolicy) -> bool:
    """Whether a classified error may be retried: transient unavailability, and timeouts if the policy says so."""
    if isinstance(error, DeadlineExceededError):
        return False
    if isinstance(error, ServerUnavailableError):
        return True
    return isinstance(error, RequestTimeoutError) and policy.retry_on_timeout


class RetryState:
    """Book-keeping for one request's attempts; `after_failure` says how long to sleep, or raises to give up."""

    def __init__(
        self,
        policy: RetryPolicy,
        operation: str,
        rng: random.Random | None = None,
        deadline: Deadline | None = None,
    ) -> None:
        self.policy = policy
        self.operation = operation
        self.deadline = deadline
        self.attempts = 0
        self._rng = rng
        self._clock = deadline.clock if deadline is not None else time.monotonic
        self._started = self._clock()

    def before_attempt(self) -> None:
        """Raises `DeadlineExceededError` when the deadline leaves no time for another attempt."""
        if self._deadline_passed():
            raise self._deadline_exceeded("it passed before the request could be sent")

    def _deadline_passed(self) -> bool:
        return self.deadline is not None and self.deadline.remaining() < MIN_ATTEMPT_S

    def after_failure(self, raw_error: BaseException) -> float:
        """Classifies a failed attempt; returns the sleep before the next one or raises the typed final error."""
        self.attempts += 1
        error = classify_exception(raw_error, self.operation)
        if error is None:
            raise raw_error
        if isinstance(error, ServerUnavailableError | RequestTimeoutError) and self._deadline_passed():
            raise self._deadline_exceeded(error.server_message, error.status) from raw_error
        if not is_retryable(error, self.policy):
            raise error from raw_error
        delay = self.policy.backoff_delay(self.attempts, self._rng)
        elapsed = self._clock() - self._started
        if self.attempts >= self.policy.max_attempts or elapsed + delay > self.policy.max_elapsed_s:
            raise _give_up(error, self.attempts, elapsed) from raw_error
        if self.deadline is not None and delay + MIN_ATTEMPT_S > self.deadline.remaining():
            detail = f"no time left to retry after {error.server_message}"
            raise self._deadline_exceeded(detail, error.status) from raw_error
        return delay

    def _deadline_exceeded(self, detail: str, status: str | None = None) -> DeadlineExceededError:
        assert self.deadline is not None
        attempts = f" ({self.attempts} attempt(s))" if self.attempts else ""
        return DeadlineExceededError(
            self.operation, self.deadline.seconds, detail + attempts, status, attempts=self.attempts
        )


def _give_up(error: TritonFleetError, attempts: int, elapsed_s: float) -> TritonFleetError:
    if isinstance(error, ServerUnavailableError):
        message = f"{error.server_message} (gave up after {attempts} attempt(s) in {elapsed_s:.1f} s)"
        return ServerUnavailableError(error.operation, message, error.status, attempts=attempts)
    return error


def call_with_retry(call: Callable[[], T], policy: RetryPolicy, operation: str, deadline: Deadline | None = None) -> T:
    """Runs `call` until it succeeds, fails permanently, the retry policy is exhausted or the deadline passes."""
    state = RetryState(policy, operation, deadline=deadline)
    while True:
        state.before_attempt()
        try:
            return call()
        except Exception as raw_error:  # noqa: BLE001 - classified (or re-raised) by after_failure
            delay = state.after_failure(raw_error)
        time.sleep(delay)


async def call_with_retry_async(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, operation: str, deadline: Deadline | None = None
) -> T:
    """The asyncio twin of `call_with_retry`."""
    state = RetryState(policy, operation, deadline=deadline)
    while True:
        state.before_attempt()
        try:
            return await call()
        except Exception as raw_error:  # noqa: BLE001 - classified (or re-raised) by after_failure
            delay = state.after_failure(raw_error)
        await asyncio.sleep(delay)
