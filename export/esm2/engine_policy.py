"""What the ESM-2 networks' engines allow: the per-execution cap of a plan (engine speed x interactive budget), whether
the response cache may answer (batch invariance), and what a network's config says of its engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS
from tritonfleet.contract.serving_plan import PriorityPlan
from tritonfleet.export.esm2.packed import attention_for_kind
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.sizes import cpu_thread_tokens_per_s, size_with_hidden
from tritonfleet.export.execution_cap import ExecutionCap, plan_execution_cap

if TYPE_CHECKING:
    from tritonfleet.export.esm2.repository import RepositoryOptions

# Never served from the response cache: reduced-precision variants whose outputs depend on their batch-mates.
NEVER_CACHED_PRECISIONS = frozenset({"bf16"})


def interactive_budget_s(options: RepositoryOptions) -> float:
    """The interactive queue-wait budget the repository's queues grant (the default one without priorities)."""
    priorities = options.batching.priorities or PriorityPlan()
    return priorities.interactive_budget_us / 1e6


def execution_cap(recipe: Esm2Recipe, options: RepositoryOptions) -> ExecutionCap | None:
    """The plan's per-execution cap for this network (None when `options.execution_cap` is off): the engine speed of
    this size and precision (`export.esm2.sizes.cpu_thread_tokens_per_s`), the interactive budget and the longest
    padded length (`export.execution_cap.plan_execution_cap`)."""
    if not options.execution_cap:
        return None
    try:
        size = recipe.random_init if recipe.is_random else size_with_hidden(recipe.hidden_size)
    except ValueError:
        size = "650M"  # an unpublished width: assume a large model (a tighter cap)
    speed = cpu_thread_tokens_per_s(size, recipe.precision)
    return plan_execution_cap(
        options.devices,
        speed,
        interactive_budget_s(options),
        max(options.length_buckets or DEFAULT_BUCKETS),
        options.batching.max_batch_size,
    )


def cache_is_exact(recipe: Esm2Recipe, network_max_batch_size: int, network_format: str) -> bool:
    """Whether an answer from the response cache equals the one the network would compute now: never for bf16; with
    executions of one sequence (CPU plans) every answer depends on its own sequence alone (bit-exact); with larger
    batches only batch-invariant engines qualify (`Esm2Recipe.batch_invariant`: fp32 and per-row int8 ONNX pass the
    export's invariance gate, 1e-5; fp16/bf16 never)."""
    if recipe.precision_for(network_format) in NEVER_CACHED_PRECISIONS:
        return False
    return network_max_batch_size == 1 or recipe.batch_invariant(network_format)


def engine_parameters(recipe: Esm2Recipe, fmt: str, kind: str) -> dict[str, str]:
    """What a network's config says of its engine: the ONNX graph's form (on `kind` instances), its own precision
    (int8 repositories ship TorchScript in fp32) and whether its outputs are batch invariant (export/parity.py's
    gate)."""
    fused = f"fused attention, {attention_for_kind(kind).replace('_', '-')} layout"
    graph = {"onnx_graph": fused if recipe.fused_onnx else "torch.onnx"} if fmt == "onnx" else {}
    return {
        **graph,
        "precision": recipe.precision_for(fmt),
        "batch_invariant": "true" if recipe.batch_invariant(fmt) else "false",
    }


def tokenizer_buckets(options: RepositoryOptions, network_max_batch_size: int) -> tuple[int, ...]:
    """The tokenizer's length buckets: as given, else exact lengths (`()`, config value "exact") where every execution
    of the network holds one sequence (the CPU plans' cap: buckets would batch nothing and only add padded tokens),
    DEFAULT_BUCKETS otherwise."""
    if options.length_buckets is not None:
        return options.length_buckets
    return () if network_max_batch_size <= 1 else DEFAULT_BUCKETS
