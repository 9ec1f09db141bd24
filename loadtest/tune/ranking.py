"""Model Analyzer's results CSV ranked, a config's tuned knobs, and the export flags that reproduce it."""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tritonfleet.contract.model_config import ModelConfig
from tritonfleet.contract.serving_plan import NotReproducibleError, ServingPlan
from tritonfleet.loadtest.tune.analyzer import thread_parameter


@dataclass(frozen=True)
class ResultRow:
    """One row of Model Analyzer's metrics-model-inference.csv."""

    variant: str
    concurrency: int
    throughput: float
    p99_ms: float
    satisfies_constraints: bool


def parse_results_csv(text: str) -> list[ResultRow]:
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
        if not row.get("Model Config Path"):
            continue
        rows.append(
            ResultRow(
                variant=row["Model Config Path"],
                concurrency=int(float(row["Concurrency"])),
                throughput=float(row["Throughput (infer/sec)"]),
                p99_ms=float(row["p99 Latency (ms)"]),
                satisfies_constraints=row["Satisfies Constraints"].lower() == "yes",
            )
        )
    return rows


@dataclass(frozen=True)
class RankedConfig:
    """A config's measurements; `best` is its highest-throughput row within the p99 budget (None: none was)."""

    variant: str
    rows: tuple[ResultRow, ...]
    best: ResultRow | None


def rank_configs(rows: Sequence[ResultRow]) -> list[RankedConfig]:
    """Configs best first: those with a row within the budget by that row's throughput, then the others by their
    lowest p99."""
    by_variant: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_variant.setdefault(row.variant, []).append(row)
    ranked = []
    for variant, measured in by_variant.items():
        feasible = [row for row in measured if row.satisfies_constraints]
        best = max(feasible, key=lambda row: row.throughput) if feasible else None
        ranked.append(RankedConfig(variant, tuple(sorted(measured, key=lambda row: row.concurrency)), best))

    def order(config: RankedConfig) -> tuple[int, float]:
        if config.best is not None:
            return (0, -config.best.throughput)
        return (1, min(row.p99_ms for row in config.rows))

    return sorted(ranked, key=order)


@dataclass(frozen=True)
class VariantSettings:
    """The tuned knobs of one config, as its serving plan has them."""

    instances: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    threads: str  # "" = the backend's default

    @classmethod
    def of(cls, config: ModelConfig) -> VariantSettings:
        plan = ServingPlan.from_config(config)
        return cls(
            instances=plan.instance_count,
            max_queue_delay_us=plan.batching.max_queue_delay_us,
            preferred_batch_sizes=tuple(plan.batching.preferred_batch_sizes),
            threads=str(plan.threads.intra_op) if plan.threads.intra_op else "",
        )

    @classmethod
    def read(cls, config: ModelConfig) -> VariantSettings | None:
        """`of`, or None for a config no serving plan describes (its row then shows "?")."""
        try:
            return cls.of(config)
        except ValueError:
            return None


def _flag_values(flags: Sequence[str]) -> dict[str, str]:
    return dict(zip(flags[::2], flags[1::2]))


def export_flags(shipped: ModelConfig, chosen: ModelConfig) -> tuple[list[str], list[str]]:
    """(`tritonfleet export` flags that turn the shipped config into the chosen one, changes no export flag covers).

    Both configs' serving plans give the flags that reproduce them (`ServingPlan.export_flags`); those the chosen
    plan sets differently are the answer. They apply to every network model of the export.
    """
    before, after = ServingPlan.from_config(shipped), ServingPlan.from_config(chosen)
    manual: list[str] = []
    if not after.threads.intra_op and before.threads.intra_op:
        manual.append(f"no {thread_parameter(shipped)} parameter (the backend's default thread count)")
        after = replace(after, threads=before.threads)
    try:
        wanted = _flag_values(after.export_flags())
    except NotReproducibleError as error:
        return [], [*manual, str(error)]
    try:
        shipped_flags = _flag_values(before.export_flags())
    except NotReproducibleError:
        shipped_flags = {}
    flags = [part for flag, value in wanted.items() if shipped_flags.get(flag) != value for part in (flag, value)]
    return flags, manual


_CANONICAL_COMMAND = re.compile(
    r"^#.*Canonical command[^:]*:\s*((?:tritonfleet export|python -m export) .+)$", re.MULTILINE
)


def export_command(config_text: str, flags: Sequence[str]) -> str | None:
    """The export command in the shipped config's header with `flags` added; None when the header names none."""
    match = _CANONICAL_COMMAND.search(config_text)
    return " ".join([match.group(1).strip(), *map(shlex.quote, flags)]) if match else None
