"""The batching part of a serving plan: max_batch_size, dynamic batching and the two priority queues, written into
and read from a Triton `ModelConfig` (`tritonfleet.contract.serving_plan` holds the whole plan)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.priorities import PRIORITY_LEVEL_COUNT, PRIORITY_LEVELS


@dataclass(frozen=True)
class PriorityPlan:
    """Two priority levels: interactive (level 1) is served before bulk (level 2).

    Triton 24.10 lets a request's own timeout only *shorten* a level's non-zero default timeout
    (`core:src/scheduler_utils.cc` `PolicyQueue::Enqueue`), so "no timeout" for bulk is a long ceiling: with 0
    there, client deadlines on bulk requests would be ignored.

    Attributes:
        interactive_queue_size: interactive requests beyond this many queued are rejected at once (UNAVAILABLE).
        interactive_budget_us: longest an interactive request may wait in one model's queue before Triton refuses
            it (UNAVAILABLE "Request timeout expired") instead of computing it late; a client deadline can shorten it.
        bulk_timeout_us: the bulk level's queue-wait ceiling (0: none, and then client deadlines cannot apply there).
        default_level: the class of requests that name no priority ("bulk": only traffic that opts in may use the
            short, budgeted interactive queue).
    """

    interactive_queue_size: int = 32
    interactive_budget_us: int = 1_000_000
    bulk_timeout_us: int = 3_600_000_000
    default_level: str = "bulk"

    def __post_init__(self) -> None:
        if self.interactive_queue_size < 1:
            raise ValueError("the interactive queue size must be >= 1")
        if self.interactive_budget_us < 1 or self.bulk_timeout_us < 0:
            raise ValueError("the interactive budget must be > 0 and the bulk timeout >= 0")
        if self.default_level not in PRIORITY_LEVELS:
            raise ValueError(f"default priority must be one of {tuple(PRIORITY_LEVELS)}, got {self.default_level!r}")


@dataclass(frozen=True)
class BatchingPlan:
    """max_batch_size, and dynamic batching with admission control (`dynamic`; False: no dynamic_batching, as in
    ensembles, and then the other fields are empty).

    Attributes:
        max_batch_size: largest batch Triton forms (and the largest client batch accepted); 0: no batch axis.
        preferred_batch_sizes: sizes the batcher tries to form before the queue delay expires.
        max_queue_delay_us: how long a request may wait for batch-mates.
        max_queue_size: requests beyond this many queued are rejected at once (UNAVAILABLE / HTTP 503); with
            priorities, the bulk level's bound.
        priorities: the interactive / bulk levels and their queue policies; None keeps one first-come queue.
        dynamic: whether the config has dynamic_batching at all.
    """

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    max_queue_delay_us: int = 2000
    max_queue_size: int = 256
    priorities: PriorityPlan | None = PriorityPlan()
    dynamic: bool = True

    def __post_init__(self) -> None:
        if not self.dynamic:
            if self.preferred_batch_sizes or self.max_queue_delay_us or self.max_queue_size or self.priorities:
                raise ValueError("without dynamic batching there are no preferred sizes, queues or priorities")
            if self.max_batch_size < 0:
                raise ValueError("max_batch_size must be >= 0")
            return
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if any(size < 1 or size > self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError(f"preferred batch sizes must lie in [1, {self.max_batch_size}]")
        if self.max_queue_delay_us < 0 or self.max_queue_size < 0:
            raise ValueError("queue delay and size must be >= 0")

    @classmethod
    def fixed(cls, max_batch_size: int) -> BatchingPlan:
        """max_batch_size alone, no dynamic batching (ensembles; a network measured one request per execution)."""
        return cls(max_batch_size, (), 0, 0, None, dynamic=False)

    def without_dynamic(self) -> BatchingPlan:
        return BatchingPlan.fixed(self.max_batch_size)

    def with_limits(self, max_batch_size: int, max_queue_size: int) -> BatchingPlan:
        """The same policy for another max batch size (preferred sizes clipped to it) and queue bound."""
        return dataclasses.replace(self.limited_to(max_batch_size), max_queue_size=max_queue_size)

    def limited_to(self, max_batch_size: int) -> BatchingPlan:
        """The same options with preferred sizes clipped to a smaller max batch size."""
        preferred = tuple(size for size in self.preferred_batch_sizes if size <= max_batch_size)
        return dataclasses.replace(self, max_batch_size=max_batch_size, preferred_batch_sizes=preferred)

    def for_interactive_only(self) -> BatchingPlan:
        """The queues of a model only interactive traffic reaches: level 1 by default, the interactive budget and
        short queue, so traffic that arrives unlabelled cannot pile up there."""
        if self.priorities is None:
            return self
        priorities = dataclasses.replace(self.priorities, default_level="interactive")
        return dataclasses.replace(self, priorities=priorities, max_queue_size=priorities.interactive_queue_size)

    @property
    def has_queue_policy(self) -> bool:
        """Whether Triton's batcher runs without prefetching here: priority levels or a queue bound (see
        `for_unordered_model`)."""
        return self.dynamic and (self.priorities is not None or self.max_queue_size > 0)

    def for_unordered_model(self, kind: str, instances: int) -> BatchingPlan:
        """These queues on a model whose traffic needs no priority order (the tokenizer: executions well under a
        millisecond; the interactive-only network copy: interactive traffic alone), with `instances` instances of
        `kind`: one CPU instance gets dynamic batching without priority levels or queue policy (no bound, no wait
        limit), because there Triton 24.10's batcher stalls.

        Why (`core:src/scheduler_utils.cc`, `dynamic_batch_scheduler.cc`, `payload.cc`): a queue policy (a bound or
        a timeout) or priority levels turn off payload prefetching, and then the batcher hands a batch out only to
        an instance it sees waiting (`RateLimiter::PayloadSlotAvailable`), between 500 ms timed waits
        (`WaitForPayloadSlotAvailable`). Two things wake it: a new request, and the end of an execution
        (`Payload::Execute` runs the callback). The second fires before the instance's thread is back in
        `RateLimiter::DequeuePayload` as a waiting consumer, so a batcher that wakes quickly finds no one waiting and
        sleeps again, until the next arrival, another instance's execution end, or 500 ms. One instance and nothing
        arriving (two requests sent together, the tail of a job): the queued request starts ~500 ms late. Measured on
        this project's one-instance interactive network (two simultaneous requests, 15 pairs each): the second
        answered ~530 ms late in 4-8 of 15 pairs with the shipped queues, a bound alone, a timeout alone or priority
        levels alone; in none with `dynamic_batching {}` or without dynamic batching; in none on the two-instance
        network. Two instances wait at most for each other's execution (hence two network instances per GPU,
        `export.devices.DEFAULT_INSTANCES_PER_GPU`); a saturated closed loop loses about one client round trip per
        execution (the two-instance CPU network at concurrency 16: 4-8 % fewer sequences/s with the shipped queues
        than with `dynamic_batching {}`, which a third instance or Triton's rate limiter with four did not win
        back). Shared networks and `esm2_bls` keep their queues: there the priority order, the bounds and client
        deadlines are the point."""
        if kind != "KIND_CPU" or instances != 1 or not self.has_queue_policy:
            return self
        return dataclasses.replace(self, max_queue_size=0, priorities=None)


def apply_batching(config: mc.ModelConfig, batching: BatchingPlan) -> None:
    config.max_batch_size = batching.max_batch_size
    config.ClearField("dynamic_batching")
    if not batching.dynamic:
        return
    dynamic = config.dynamic_batching
    dynamic.preferred_batch_size.extend(batching.preferred_batch_sizes)
    dynamic.max_queue_delay_microseconds = batching.max_queue_delay_us
    _set_queue_policy(dynamic.default_queue_policy, batching.max_queue_size, 0, override=False)
    priorities = batching.priorities
    if priorities is None:
        return
    dynamic.priority_levels = PRIORITY_LEVEL_COUNT
    dynamic.default_priority_level = PRIORITY_LEVELS[priorities.default_level]
    interactive, bulk = PRIORITY_LEVELS["interactive"], PRIORITY_LEVELS["bulk"]
    _set_queue_policy(
        dynamic.priority_queue_policy[interactive], priorities.interactive_queue_size, priorities.interactive_budget_us
    )
    _set_queue_policy(dynamic.priority_queue_policy[bulk], batching.max_queue_size, priorities.bulk_timeout_us)
    # Levels without an entry of their own get the default policy: keep it the bulk one.
    dynamic.default_queue_policy.CopyFrom(dynamic.priority_queue_policy[bulk])


def _set_queue_policy(policy: mc.ModelQueuePolicy, max_queue_size: int, timeout_us: int, override: bool = True) -> None:
    """Reject (not delay) requests beyond `max_queue_size` or older than `timeout_us` (0: no timeout); with
    `override`, a request's own (smaller) timeout applies instead."""
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.max_queue_size = max_queue_size
    policy.default_timeout_microseconds = timeout_us
    policy.allow_timeout_override = override


def read_batching(config: mc.ModelConfig) -> BatchingPlan:
    if not config.HasField("dynamic_batching"):
        return BatchingPlan.fixed(config.max_batch_size)
    dynamic = config.dynamic_batching
    common = {
        "max_batch_size": config.max_batch_size,
        "preferred_batch_sizes": tuple(dynamic.preferred_batch_size),
        "max_queue_delay_us": dynamic.max_queue_delay_microseconds,
    }
    if dynamic.priority_levels == 0:
        return BatchingPlan(**common, max_queue_size=dynamic.default_queue_policy.max_queue_size, priorities=None)
    interactive, bulk = PRIORITY_LEVELS["interactive"], PRIORITY_LEVELS["bulk"]
    policies = dynamic.priority_queue_policy
    if dynamic.priority_levels != PRIORITY_LEVEL_COUNT or interactive not in policies or bulk not in policies:
        raise ValueError(
            f"model {config.name!r}: {dynamic.priority_levels} priority levels with policies for "
            f"{sorted(policies)}; a serving plan holds levels {interactive} (interactive) and {bulk} (bulk)"
        )
    levels = {level: name for name, level in PRIORITY_LEVELS.items()}
    default_level = levels.get(dynamic.default_priority_level)
    if default_level is None:
        raise ValueError(f"model {config.name!r}: default priority level {dynamic.default_priority_level} is unknown")
    priorities = PriorityPlan(
        interactive_queue_size=policies[interactive].max_queue_size,
        interactive_budget_us=policies[interactive].default_timeout_microseconds,
        bulk_timeout_us=policies[bulk].default_timeout_microseconds,
        default_level=default_level,
    )
    return BatchingPlan(**common, max_queue_size=policies[bulk].max_queue_size, priorities=priorities)


def priority_flags(priorities: PriorityPlan | None) -> list[str]:
    if priorities is None:
        return ["--no-priorities"]
    defaults, flags = PriorityPlan(), []
    if priorities.interactive_budget_us != defaults.interactive_budget_us:
        flags += ["--interactive-budget-ms", _decimal(priorities.interactive_budget_us, 1000)]
    if priorities.interactive_queue_size != defaults.interactive_queue_size:
        flags += ["--interactive-queue-size", str(priorities.interactive_queue_size)]
    if priorities.bulk_timeout_us != defaults.bulk_timeout_us:
        flags += ["--bulk-queue-timeout-s", _decimal(priorities.bulk_timeout_us, 1_000_000)]
    if priorities.default_level != defaults.default_level:
        flags += ["--default-priority", priorities.default_level]
    return flags


def _decimal(microseconds: int, per_unit: int) -> str:
    """`microseconds / per_unit` as the shortest text that rounds back to the same microseconds."""
    whole, rest = divmod(microseconds, per_unit)
    return str(whole) if not rest else repr(microseconds / per_unit)
