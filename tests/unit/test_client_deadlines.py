"""Priority and deadline arithmetic of the client (no server): request options, retries bounded by the deadline,
the typed refusal, configuration and command line."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.utils import InferenceServerException

from tritonfleet.client import ClientConfig, DeadlineExceededError, RetryPolicy
from tritonfleet.client import retry as retry_module
from tritonfleet.client.cli import build_parser, bulk_options_from_args, config_from_args
from tritonfleet.client.errors import InvalidRequestError, ServerUnavailableError, classify_exception
from tritonfleet.client.retry import Deadline, RetryState, call_with_retry, call_with_retry_async
from tritonfleet.client.transport import _ProtocolCalls, request_options

QUEUE_FULL = InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size", status="503")
QUEUE_TIMEOUT = InferenceServerException("Request timeout expired", status="StatusCode.UNAVAILABLE")
NO_JITTER = RetryPolicy(max_attempts=10, initial_delay_s=0.1, multiplier=2.0, max_delay_s=10.0, max_elapsed_s=100.0)


class FakeClock:
    """A monotonic clock the test moves (and `sleep` advances)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class NoJitter:
    """`random.Random` stand-in: full jitter draws its ceiling, so sleeps are the policy's ceilings."""

    @staticmethod
    def uniform(_low: float, high: float) -> float:
        return high


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(retry_module.time, "sleep", clock.sleep)
    monkeypatch.setattr(retry_module.random, "uniform", NoJitter.uniform)
    return clock


def test_request_options_carry_the_level_and_the_time_left():
    assert request_options("http", 1, 0.25) == {"priority": 1, "timeout": 250_000}
    assert request_options("grpc", 2, 0.25, client_timeout_s=60.0) == {
        "priority": 2,
        "timeout": 250_000,
        "client_timeout": 0.25,  # the call is cut at the deadline, not only refused by the queue
    }
    assert request_options("grpc", 1, None, client_timeout_s=60.0) == {"priority": 1, "client_timeout": 60.0}
    assert request_options("http", 0) == {"priority": 0}  # 0: the model's default level
    # Triton reads a timeout of 0 as "none": a deadline that is just passing still sends the smallest real one.
    assert request_options("http", 1, -0.5)["timeout"] == 1


def test_transport_sends_the_configured_class_as_its_triton_level():
    interactive = _ProtocolCalls(ClientConfig(protocol="grpc", timeout_s=30.0))
    arguments = interactive.infer_arguments("", {}, [], timeout_s=2.0)
    assert (arguments["priority"], arguments["timeout"], arguments["client_timeout"]) == (1, 2_000_000, 2.0)
    bulk = _ProtocolCalls(ClientConfig(protocol="http", priority="bulk"))
    arguments = bulk.infer_arguments("", {}, [], timeout_s=None)
    assert arguments["priority"] == 2 and "timeout" not in arguments


def test_config_checks_priority_and_deadline():
    assert ClientConfig().priority == "interactive" and ClientConfig().deadline_s is None
    with pytest.raises(ValueError, match="priority"):
        ClientConfig(priority="urgent")
    with pytest.raises(ValueError, match="deadline_s"):
        ClientConfig(deadline_s=0)


def test_each_retry_gets_the_time_left_and_none_starts_after_the_deadline(clock):
    deadline = Deadline(1.0, clock)
    timeouts = []

    def attempt() -> None:
        timeouts.append(round(deadline.remaining(), 6))
        clock.now += 0.15  # the server answers "queue full" after 150 ms
        raise QUEUE_FULL

    with pytest.raises(DeadlineExceededError) as caught:
        call_with_retry(attempt, NO_JITTER, "infer esm2", deadline)
    # Sleeps of 0.1 and 0.2 s between attempts; the next (0.4 s) would pass the deadline: no fourth attempt.
    assert timeouts == [1.0, 0.75, 0.4]
    assert clock.now < deadline.expires_at
    error = caught.value
    assert (error.deadline_s, error.attempts) == (1.0, 3)
    assert str(error).startswith("infer esm2 failed [503]: deadline of 1 s exceeded: no time left to retry")


def test_the_last_attempt_gets_whatever_remained(clock):
    deadline = Deadline(1.0, clock)
    timeouts = []

    def attempt() -> str:
        timeouts.append(round(deadline.remaining(), 6))
        if len(timeouts) == 1:
            clock.now += 0.5
            raise QUEUE_FULL
        return "ok"

    assert call_with_retry(attempt, NO_JITTER, "infer", deadline) == "ok"
    assert timeouts == [1.0, 0.4]  # 1.0 - 0.5 (first attempt) - 0.1 (backoff)


def test_a_queue_refusal_after_the_deadline_is_a_deadline_error(clock):
    deadline = Deadline(0.3, clock)

    def attempt() -> None:
        clock.now += 0.3  # Triton refused it once it had waited the whole timeout in the queue
        raise QUEUE_TIMEOUT

    with pytest.raises(DeadlineExceededError, match="deadline of 0.3 s exceeded: Request timeout expired") as caught:
        call_with_retry(attempt, NO_JITTER, "infer", deadline)
    assert caught.value.status == "StatusCode.UNAVAILABLE" and caught.value.attempts == 1


def test_a_queue_budget_refusal_with_time_left_is_retried(clock):
    deadline = Deadline(5.0, clock)
    answers = iter([QUEUE_TIMEOUT, "ok"])

    def attempt() -> str:
        clock.now += 1.0  # the interactive level's 1 s budget, shorter than the deadline
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call_with_retry(attempt, NO_JITTER, "infer", deadline) == "ok"


def test_a_deadline_already_passed_sends_nothing(clock):
    deadline = Deadline(0.5, clock)
    clock.now += 0.5
    calls = []
    with pytest.raises(DeadlineExceededError, match="passed before the request could be sent") as caught:
        call_with_retry(lambda: calls.append(1), NO_JITTER, "infer", deadline)
    assert not calls and caught.value.attempts == 0


def test_permanent_errors_stay_what_they_are_after_the_deadline(clock):
    deadline = Deadline(0.2, clock)

    def attempt() -> None:
        clock.now += 1.0
        raise InferenceServerException("invalid residue 'J'", status="400")

    with pytest.raises(InvalidRequestError):
        call_with_retry(attempt, NO_JITTER, "infer", deadline)


def test_deadline_errors_are_never_retried():
    error = DeadlineExceededError("infer", 1.0, "late")
    assert not retry_module.is_retryable(error, RetryPolicy(retry_on_timeout=True))
    state = RetryState(RetryPolicy(retry_on_timeout=True), "infer")
    with pytest.raises(DeadlineExceededError):
        state.after_failure(error)


def test_the_asyncio_loop_respects_the_deadline_too(monkeypatch):
    clock = FakeClock()

    async def fake_sleep(seconds: float) -> None:
        clock.sleep(seconds)

    monkeypatch.setattr(retry_module.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(retry_module.random, "uniform", NoJitter.uniform)
    deadline = Deadline(0.5, clock)
    timeouts = []

    async def attempt() -> None:
        timeouts.append(round(deadline.remaining(), 6))
        clock.now += 0.1
        raise QUEUE_FULL

    with pytest.raises(DeadlineExceededError):
        asyncio.run(call_with_retry_async(attempt, NO_JITTER, "infer", deadline))
    assert timeouts == [0.5, 0.3]  # a 0.2 s sleep after the second failure would reach the deadline


def test_a_relayed_queue_timeout_is_transient_whatever_its_status():
    # A python BLS model in Triton 24.10 relays the network's refusal as INTERNAL (500).
    relayed = classify_exception(InferenceServerException("Request timeout expired", status="500"), "infer")
    assert isinstance(relayed, ServerUnavailableError)


def test_the_command_line_picks_the_priority_per_command():
    embed = config_from_args(build_parser().parse_args(["embed", "M"]))
    assert (embed.priority, embed.deadline_s) == ("interactive", None)
    args = build_parser().parse_args(["embed-fasta", "in.fa", "--output", "o.npz"])
    assert bulk_options_from_args(args).priority == "bulk" and config_from_args(args).priority == "bulk"
    args = build_parser().parse_args(["embed", "--priority", "bulk", "--deadline-s", "2.5", "M"])
    assert (config_from_args(args).priority, config_from_args(args).deadline_s) == ("bulk", 2.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "--deadline-s", "0", "M"])
