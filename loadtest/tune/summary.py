"""summary.md and tune.json of a tuning run."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from tritonfleet.loadtest.tune.analyzer import default_variant
from tritonfleet.loadtest.tune.ranking import VariantSettings
from tritonfleet.loadtest.tune.run import TuneResult
from tritonfleet.loadtest.tune.settings import RESULTS_CSV, RunPaths


def _describe(settings: VariantSettings | None) -> list[str]:
    if settings is None:
        return ["?"] * 4
    return [
        str(settings.instances),
        settings.threads or "backend default",
        str(settings.max_queue_delay_us),
        ",".join(map(str, settings.preferred_batch_sizes)) or "-",
    ]


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (as a user typed it), else absolute."""
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def summary_markdown(result: TuneResult, command: str) -> str:
    settings, space = result.settings, result.settings.space
    default = default_variant(settings.model)
    by_variant = {c.variant: c for c in result.comparisons}
    shipped = by_variant[default]
    winner = result.winner
    lines = [
        f"# Model Analyzer tuning: `{settings.model}` on this machine",
        "",
        f"Run {result.started}: `{command}` ({_minutes(result.total_s)} in all, Model Analyzer's search "
        f"{_minutes(result.search_s)}{', interrupted at its time limit' if result.interrupted else ''}). "
        f"Host: {os.cpu_count()} CPUs, load average {result.load_before[0]:.2f} before and "
        f"{result.load_after[0]:.2f} after. Workload: perf_analyzer over gRPC, batch 1, {settings.sequences} "
        f"sequences of the `{settings.length_mix}` length mix. Objective: highest throughput with p99 <= "
        f"{settings.p99_ms} ms.",
        "",
        "## Chosen config vs the shipped default (same run, interleaved)",
        "",
        f"Model Analyzer's best {len(result.comparisons) - 1} and the shipped config, re-measured on one server in "
        f"{settings.ab_rounds} interleaved round(s) at concurrency {settings.comparison_concurrency} "
        f"({settings.ab_windows.trials} x {settings.ab_windows.interval_ms / 1000:g} s windows each); medians:",
        "",
        "| config | instances | threads | max_queue_delay µs | preferred batch sizes | infer/s | p99 ms "
        "| infer/s per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for comparison in result.comparisons:
        name = "shipped default" if comparison.variant == default else comparison.variant
        if comparison.variant == winner.variant:
            name = f"**{name}** (chosen)"
        cells = [
            name,
            *_describe(result.variant_settings.get(comparison.variant)),
            f"{comparison.throughput:.2f}",
            f"{comparison.p99_ms:.0f}",
            ", ".join(f"{throughput:.2f}" for throughput in comparison.throughputs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if winner.variant == default:
        lines.append(f"**Chosen: the shipped config** ({result.reason}).")
    else:
        ratio = f" ({winner.throughput / shipped.throughput:.2f}x)" if shipped.throughput > 0 else ""
        lines.append(
            f"**Chosen: {winner.variant}** ({result.reason}): {winner.throughput:.2f} vs {shipped.throughput:.2f} "
            f"infer/s{ratio}, p99 {winner.p99_ms:.0f} vs {shipped.p99_ms:.0f} ms."
        )
    lines.append("")
    if result.export_command:
        lines.append(f"Reproduce: `{result.export_command}`")
    elif result.export_flags:
        lines.append(f"Export flags: `{' '.join(result.export_flags)}`")
    if result.manual_changes:
        lines.append(f"No export flag for: {'; '.join(result.manual_changes)} (edit config.pbtxt).")
    lines += [
        f"Ready repository: `{_shown(settings.output)}/best_repository/` (the input repository with the chosen "
        "config.pbtxt; for reports/tune/ the configs are committed, the weights are not).",
        "",
        "## Model Analyzer's ranking (best row per config within the p99 budget)",
        "",
        f"Brute search: {space.variants} variants + the default, concurrency {list(space.concurrency)}, "
        f"{settings.search_windows.trials} x {settings.search_windows.interval_ms / 1000:g} s windows per point. "
        "Configs were measured one after another, so on a loaded machine the ranking also reflects load drift.",
        "",
        "| rank | config | instances | threads | max_queue_delay µs | preferred batch sizes | concurrency | infer/s "
        "| p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, config in enumerate(result.ranking, start=1):
        row = config.best or min(config.rows, key=lambda r: r.p99_ms)
        name = "shipped default" if config.variant == default else config.variant
        budget = "" if config.best else " (over budget)"
        cells = [
            str(rank),
            name,
            *_describe(result.variant_settings.get(config.variant)),
            str(row.concurrency),
            f"{row.throughput:.2f}",
            f"{row.p99_ms:.0f}{budget}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    report = result.summary_report.relative_to(settings.output.resolve()) if result.summary_report else None
    lines += [
        "",
        "## Files (under the output folder; for reports/tune/ the CSVs and configs are committed)",
        "",
        f"- `{RESULTS_CSV}`: every measurement; `{report or 'reports/summaries/'}`: Model Analyzer's summary; "
        "`reports/detailed/`: its detailed reports",
        "- `comparison.csv`: the interleaved re-measurement; `model-analyzer.yaml`, `model-analyzer.log`, "
        "`tritonserver.log`; `tune.json`: this summary as data",
        "",
    ]
    return "\n".join(lines)


def write_outputs(result: TuneResult, command: str) -> Path:
    paths = RunPaths(Path(result.settings.output).resolve())
    data = {
        "model": result.settings.model,
        "ports": list(result.ports),
        "ports_free_after": result.ports_free_after,
        "interrupted": result.interrupted,
        "search_s": round(result.search_s, 1),
        "total_s": round(result.total_s, 1),
        "ranking": [asdict(config) for config in result.ranking],
        "variants": {name: asdict(settings) for name, settings in result.variant_settings.items()},
        "comparison": [asdict(comparison) for comparison in result.comparisons],
        "winner": result.winner.variant,
        "reason": result.reason,
        "export_flags": result.export_flags,
        "export_command": result.export_command,
        "manual_changes": result.manual_changes,
    }
    paths.run_json.write_text(json.dumps(data, indent=2, default=str))
    paths.summary.write_text(summary_markdown(result, command), encoding="utf-8")
    return paths.summary
