"""Bounded executions: how much one network execution may hold, so that an interactive request that finds every
instance busy still starts within its queue-wait budget (docs/design.md, "Bounded executions")."""

from __future__ import annotations

from dataclasses import dataclass

from tritonfleet.export.devices import DevicePlan, usable_cores

# One execution may take at most this share of the interactive queue-wait budget: an interactive request that finds
# every instance busy then still starts within half its budget, leaving the rest for Triton's scheduling rounds.
EXECUTION_BUDGET_SHARE = 0.5
# Speed of one GPU instance relative to one CPU engine thread, for the cap only (an assumption, not measured here:
# a data-centre GPU runs ESM-2 in fp16 two to three orders of magnitude faster than one CPU core).
GPU_SPEEDUP_OVER_CPU_THREAD = 200.0
# Multi-threaded CPU engines do not scale linearly (reports/engines.md: 2 threads ran 1022 tokens 1.8x one thread).
THREAD_SCALING_EXPONENT = 0.85


@dataclass(frozen=True)
class ExecutionCap:
    """How much one network execution may hold.

    Attributes:
        max_batch_size: sequences per execution (Triton enforces it on every request and every formed batch).
        token_budget: sequences x padded length per execution (config parameter `execution_token_budget`; clients
            split their calls to respect it; one sequence alone may exceed it).
        tokens_per_s: the engine speed the cap was derived from (one instance, slowest tokens).
        execution_s: the longest execution the cap allows at that speed.
    """

    max_batch_size: int
    token_budget: int
    tokens_per_s: float
    execution_s: float

    def describe(self) -> str:
        return (
            f"at most {self.max_batch_size} sequence(s) and {self.token_budget} padded tokens per execution "
            f"(~{self.execution_s * 1000:.0f} ms at an estimated {self.tokens_per_s:,.0f} tokens/s per instance)"
        )


def instance_tokens_per_s(plan: DevicePlan, cpu_thread_tokens_per_s: float) -> float:
    """Estimated speed of one network instance of `plan` from the speed of one single-threaded CPU engine."""
    if plan.kind == "KIND_GPU":
        return cpu_thread_tokens_per_s * GPU_SPEEDUP_OVER_CPU_THREAD
    threads = plan.cpu_threads or usable_cores()
    return cpu_thread_tokens_per_s * threads**THREAD_SCALING_EXPONENT


def plan_execution_cap(
    plan: DevicePlan,
    cpu_thread_tokens_per_s: float,
    interactive_budget_s: float,
    max_tokens: int,
    ceiling: int = 64,
) -> ExecutionCap:
    """The per-execution cap of a network: the work one instance does in EXECUTION_BUDGET_SHARE of the interactive
    budget, never less than one sequence of `max_tokens` (no cap splits a sequence).

    CPU plans cap the *count*: max_batch_size = budget // max_tokens (at least 1), so no execution Triton forms
    exceeds the budget whatever the lengths (the dynamic batcher merges queued requests of one shape up to
    max_batch_size and knows nothing of tokens); CPU engines are compute-bound, a batch runs no faster per sequence
    than batch 1 (reports/engines.md), so nothing is lost. GPU plans keep max_batch_size at `ceiling`: GPUs need
    batches for throughput and their executions are short; the token budget (<= ceiling x max_tokens) still bounds
    each client request.
    """
    if cpu_thread_tokens_per_s <= 0 or interactive_budget_s <= 0 or max_tokens < 1 or ceiling < 1:
        raise ValueError("engine speed, interactive budget, max_tokens and ceiling must be positive")
    speed = instance_tokens_per_s(plan, cpu_thread_tokens_per_s)
    budget = max(max_tokens, int(speed * interactive_budget_s * EXECUTION_BUDGET_SHARE))
    if plan.kind == "KIND_CPU":
        max_batch_size = max(1, min(ceiling, budget // max_tokens))
        budget = min(budget, max_batch_size * max_tokens)
    else:
        max_batch_size = ceiling
        budget = min(budget, ceiling * max_tokens)
    return ExecutionCap(max_batch_size, budget, speed, budget / speed)
